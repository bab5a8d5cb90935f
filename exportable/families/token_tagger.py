"""TokenTaggerFamily: a Hugging Face token classifier + CRF, Viterbi decoding inside the artifact.

Original: transformers `AutoModelForTokenClassification` run eagerly, then the plain-numpy Viterbi
(exportable.crf_reference) on its logits. Artifact: strings (or ids) in, the best tag path and its
score out. The Viterbi is a scripted loop (exportable.blocks.crf), a real ONNX `Loop`: every
length decodes exactly, not only the length that was captured. `--model DIR` takes a trained
tagger in this folder format:

    DIR/config.json, model.safetensors   AutoModelForTokenClassification.save_pretrained(DIR)
                                         (tag names: config.id2label)
    DIR/tokenizer files                  tokenizer.save_pretrained(DIR)
    DIR/crf.safetensors                  transitions [T, T], start_transitions [T], end_transitions [T]
                                         (exportable.blocks.crf.CRF.save; transitions[i, j] = i -> j)

A subclass declares its name and options (tagger_options()), and for the model used without
`--model`: `default_tags()`, `make_default_head(model)` and `default_crf()`; and `example_case()`.
"""

from __future__ import annotations

import random
import warnings
from functools import cached_property

import numpy as np
import torch
from transformers import AutoModelForTokenClassification

from exportable import samples
from exportable.blocks.crf import CRF, CRF_FILE, PAD_TAG, CRFTagger
from exportable.crf_reference import decode_batch
from exportable.errors import InputError
from exportable.graph import guard_empty_batch
from exportable.recipe import EXACT, Case, Option, TensorSpec, Tolerance

from .text import INPUTS, TextFamily, model_option

SWEEP = range(1, 129)  # every sequence length the validation proves (plus one truncated at max)
SEED = 0  # the validation texts' words


def tagger_options(default: str) -> tuple[Option, ...]:
    return (model_option("a tagger folder: save_pretrained() of an AutoModelForTokenClassification and its "
                         "tokenizer, plus crf.safetensors", default), INPUTS)


class TokenTaggerFamily(TextFamily):
    original_pipeline = "transformers AutoModelForTokenClassification + numpy Viterbi"
    model_files = (("config.json", "model.save_pretrained(DIR)"),
                   ("crf.safetensors", "exportable.blocks.crf.CRF.save(DIR / 'crf.safetensors')"))

    def default_tags(self) -> list[str]:
        raise InputError(f"recipe {self.name!r} has no default model; pass --model DIR")

    def make_default_head(self, model) -> None:
        """Set the default model's model.classifier (the bundled encoder has no head)."""
        raise NotImplementedError

    def default_crf(self):
        raise NotImplementedError

    # --- the original pipeline ------------------------------------------------------------
    @cached_property
    def classifier(self):
        """The transformers token classifier (eval mode)."""
        tags = [] if self.custom else self.default_tags()
        extra = {} if self.custom else {"num_labels": len(tags), "id2label": dict(enumerate(tags)),
                                        "label2id": {t: i for i, t in enumerate(tags)}}
        model = self.load_model(AutoModelForTokenClassification, "token classifier", **extra)
        if not self.custom:
            self.make_default_head(model)
        return model

    @cached_property
    def crf(self):
        if not self.custom:
            return self.default_crf().eval()
        try:
            crf = CRF.load(self.model_dir / CRF_FILE)
        except Exception as exc:
            raise InputError(f"--model {self.model_dir}: {CRF_FILE} is not a CRF ({exc}); "
                             "write it with exportable.blocks.crf.CRF.save") from None
        if crf.num_tags != len(self.tags):
            raise InputError(f"--model {self.model_dir}: {CRF_FILE} has {crf.num_tags} tags but config.json's "
                             f"id2label has {len(self.tags)}; they must describe the same tag set")
        return crf.eval()

    @property
    def tags(self) -> list[str]:
        id2label = self.classifier.config.id2label
        return [str(id2label[i]) for i in range(len(id2label))]

    def build_original(self):
        model, params = self.classifier, self.crf.numpy_params()

        def tag(case: Case) -> dict[str, np.ndarray]:
            ids = self._ids(case)
            logits = self.run_model(model, ids).logits
            tags, score = decode_batch(logits.float().numpy(), ids["attention_mask"], *params)
            return {"tags": tags, "score": score}

        return tag

    # --- the wrapper ------------------------------------------------------------------------
    def build_wrapper(self, fmt: str = "onnx"):
        """Traced encoder + scripted CRF, as one ScriptModule: the Viterbi loop stays a loop, and the
        ONNX exporter takes its TorchScript path (a true `Loop`) without trying torch.export first."""
        feed = self.capture_feed(fmt)
        args = tuple(torch.from_numpy(feed[s.name]) for s in self.model_input_specs(fmt))
        with warnings.catch_warnings(), torch.no_grad():
            # torch.jit's "deprecated" notices, and transformers' two TracerWarnings: its mask code
            # branches on `padding_length > 0` and `attention_mask is None`, constant for this
            # module (the mask always comes in, as long as the ids). The sweep proves it.
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=r".*(deprecated|TorchScript|torch\.jit).*")
            module = CRFTagger(self.classifier, torch.jit.script(self.crf)).eval()
            return torch.jit.trace(module, args, check_trace=False, strict=False)

    def onnx_around(self, model, opset: int):
        """The captured tagger with an empty-batch guard: its Reshapes fail on 0 rows (found by
        fuzzing, issue 27), so a batch of 0 runs as one padding row and answers [0, S] tags."""
        guard_empty_batch(model)
        return model

    # --- specs ---------------------------------------------------------------------------------
    def _ids(self, case: Case) -> dict[str, np.ndarray]:
        """A case holds texts, or ids already (lengths and masks no text produces: 1 token, padding rows)."""
        return dict(case.data) if isinstance(case.data, dict) else self.tokenize(list(case.data))

    def feed(self, case: Case, fmt: str = "onnx") -> dict[str, np.ndarray]:
        return self._ids(case) if isinstance(case.data, dict) else super().feed(case, fmt)

    def output_specs(self):
        return (TensorSpec("tags", "int64", ("batch", "sequence"),
                           "best tag path (ids into `tags` metadata); -1 where attention_mask is 0"),
                TensorSpec("score", "float32", ("batch",), "score of that path (0 for a row with no tokens)"))

    def tolerances(self):
        # Paths must be identical. The score sums up to max_length emissions, each within ~1e-5 of
        # the original's (fp32 BERT, different kernels), in float32: so an fp32 bar scaled by length.
        return {"tags": EXACT, "score": Tolerance(atol=1e-3, rtol=1e-5)}

    def default_state(self):
        return {**self.classifier.state_dict(), **{f"crf.{k}": v for k, v in self.crf.state_dict().items()}}

    def preprocessing(self) -> dict:
        return {**super().preprocessing(), "tags": self.tags, "padding_tag": PAD_TAG,
                "decoding": "CRF Viterbi over positions where attention_mask is 1; "
                            "transitions[i, j] scores tag i followed by tag j"}

    # --- data --------------------------------------------------------------------------------
    def validation_cases(self) -> list[Case]:
        """Every sequence length in SWEEP (alone, or every 8th in a batch of 3 that mixes lengths),
        one text truncated at max_length, and in ids mode the inputs no text produces: a 1-token
        row, an all-padding row, a left-padded row."""
        words = self._one_token_words()
        rng = random.Random(SEED)
        special = len(self.tokenize([""])["input_ids"][0])  # [CLS] [SEP]

        def text(tokens: int) -> str:
            return " ".join(rng.choice(words) for _ in range(tokens - special))

        cases = []
        for length in SWEEP:
            if length < special:
                continue
            # Every 8th length in a batch mixing it with shorter rows (padding), the rest alone:
            # BERT time is the cost of this sweep, on a small machine.
            mixed = length % 8 == 0
            lengths = [rng.randint(special, length), length, rng.randint(special, length)] if mixed else [length]
            cases.append(Case(f"len{length:03d}_batch{len(lengths)}", [text(n) for n in lengths]))
        cases.append(Case("truncated_batch2", [samples.long_text(self.max_length + 100), text(40)]))
        if not self.text_mode:
            cases += self._id_cases()
        return cases

    def _one_token_words(self) -> list[str]:
        """Words that are one token both first and after a space: byte-level BPE gives " w" its own
        pieces (Ġw), so a word that is one token alone may be two inside a sentence."""
        pool = sorted(set(samples.long_text(400, seed=3).rstrip(".").split()))

        def one_token(text: str) -> bool:
            return len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) == 1

        words = [w for w in pool if one_token(w) and one_token(" " + w)]
        if not words:
            raise InputError(f"--model {self.model_dir}: its tokenizer splits every sample word; "
                             "the length sweep needs single-token words")
        return words

    def _id_cases(self) -> list[Case]:
        tok = self.tokenizer
        cls = tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id
        sep = tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id
        pad = tok.pad_token_id or 0
        rng = np.random.default_rng(SEED)

        def ids(rows: list[list[int]], masks: list[list[int]]) -> dict[str, np.ndarray]:
            out = {"input_ids": np.array(rows, np.int64), "attention_mask": np.array(masks, np.int64),
                   "token_type_ids": np.zeros((len(rows), len(rows[0])), np.int64)}
            return {n: out[n] for n in self.id_input_names}

        body = [int(i) for i in rng.integers(1000, 2000, 7)]
        return [
            Case("ids_len001_batch1", ids([[cls]], [[1]])),
            Case("ids_padding_rows_batch3", ids(
                [[cls, *body, sep], [pad] * 9, [pad, pad, cls, *body[:5], sep]],
                [[1] * 9, [0] * 9, [0, 0] + [1] * 7])),
        ]
