"""token_tagger: a BERT token classifier + CRF, Viterbi decoding inside the artifact.

Original: transformers `AutoModelForTokenClassification` run eagerly, then the plain-numpy Viterbi
(exportable.crf_reference) on its logits. Artifact: ids in, best tag path + its score out. The
Viterbi is a scripted loop (exportable.blocks.crf), a real ONNX `Loop`: every length decodes
exactly, not only the length that was captured.

Default: the bundled all-MiniLM-L6-v2 encoder with a seeded Linear(384, 9) head and a seeded CRF
over 9 BIO tags (random continuous weights: no real tagger ships offline). Exact path parity
across two fp32 BERT implementations needs no near-ties: with these weights the smallest margin of
a decision on a validation path is 5e-4, the largest emission difference ONNX vs eager 2e-5.
`--model DIR` takes a trained one, in this folder format:

    DIR/config.json, model.safetensors   AutoModelForTokenClassification.save_pretrained(DIR)
                                         (tag names: config.id2label)
    DIR/tokenizer files                  tokenizer.save_pretrained(DIR)
    DIR/crf.safetensors                  transitions [T, T], start_transitions [T], end_transitions [T]
                                         (exportable.blocks.crf.CRF.save; transitions[i, j] = i -> j)

Text in by default (TextInputs: the model's tokenizer as graph nodes in front, so the single .onnx
takes strings); `--inputs ids` keeps the ids-in graph. TorchScript takes ids (no string ops).
"""

from __future__ import annotations

import random
from functools import cached_property
from pathlib import Path

import numpy as np

from exportable import samples
from exportable.errors import InputError
from exportable.hashing import sha256_files, sha256_state_dict, weight_files
from exportable.recipe import EXACT, Case, Option, Recipe, Source, TensorSpec, Tolerance
from exportable.registry import register
from exportable.textinput import TextInputs, bundled_model_dir, load_bert_family, load_hf_tokenizer

TAGS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")
SEED = 0
HEAD_STD = 0.25  # MiniLM hidden states have norm ~9: emissions of std ~2, comparable to transitions
BERT_FAMILY = {"bert", "distilbert", "roberta", "xlm-roberta", "electra", "camembert"}
SWEEP = range(1, 129)  # every sequence length the validation proves (plus one truncated at max)



@register
class TokenTagger(TextInputs, Recipe):
    name = "token_tagger"
    formats = ("onnx", "torchscript")
    summary = "BERT token classifier + CRF Viterbi (default MiniLM, seeded 9-tag BIO head) -> tags, score"
    original_pipeline = "transformers AutoModelForTokenClassification + numpy Viterbi"
    options = (
        Option("model", "a local tagger folder: save_pretrained() of an AutoModelForTokenClassification and "
                        "its tokenizer, plus crf.safetensors (default: bundled MiniLM, seeded head and CRF)"),
        Option("inputs", "ONNX graph inputs: raw strings (tokenizer in the graph) or token ids",
               default="text", choices=("text", "ids")),
    )

    def validate_settings(self) -> None:
        path = self.option_path("model")
        if path is None:
            return
        if not path.is_dir():
            raise InputError(f"--model {path}: no such folder; pass a folder saved with save_pretrained() "
                             "plus crf.safetensors")
        for needed, how in (("config.json", "model.save_pretrained(DIR)"),
                            ("crf.safetensors", "exportable.blocks.crf.CRF.save(DIR / 'crf.safetensors')")):
            if not (path / needed).is_file():
                raise InputError(f"--model {path}: no {needed}; write it with {how}")

    @property
    def model_dir(self) -> Path:
        return self.option_path("model") or bundled_model_dir()

    # --- the original pipeline ------------------------------------------------------------
    @cached_property
    def classifier(self):
        """The transformers token classifier (eval mode)."""
        import torch
        from transformers import AutoModelForTokenClassification

        custom = self.option_path("model") is not None
        extra = {} if custom else {"num_labels": len(TAGS), "id2label": dict(enumerate(TAGS)),
                                   "label2id": {t: i for i, t in enumerate(TAGS)}}
        model = load_bert_family(AutoModelForTokenClassification, self.model_dir, "token classifier", BERT_FAMILY,
                                 **extra)
        if not custom:  # the bundled encoder has no head: a seeded one, the same on every run
            head = model.classifier
            gen = torch.Generator().manual_seed(SEED)
            with torch.no_grad():
                head.weight.copy_(torch.randn(head.weight.shape, generator=gen) * HEAD_STD)
                head.bias.copy_(torch.randn(head.bias.shape, generator=gen) * 0.5)
        return model.eval()

    @cached_property
    def crf(self):
        from exportable.blocks.crf import CRF, CRF_FILE

        if self.option_path("model") is None:
            return CRF.seeded(len(TAGS), seed=SEED + 1).eval()
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

    @cached_property
    def tokenizer(self):
        return load_hf_tokenizer(self.model_dir)

    def build_original(self):
        import torch

        from exportable.crf_reference import decode_batch

        model, params = self.classifier, self.crf.numpy_params()

        def tag(case: Case) -> dict[str, np.ndarray]:
            ids = self._ids(case)
            with torch.no_grad():
                logits = model(**{k: torch.from_numpy(v) for k, v in ids.items()}).logits
            tags, score = decode_batch(logits.float().numpy(), ids["attention_mask"], *params)
            return {"tags": tags, "score": score}

        return tag

    # --- the wrapper ------------------------------------------------------------------------
    def build_wrapper(self, fmt: str = "onnx"):
        """Traced encoder + scripted CRF, as one ScriptModule: the Viterbi loop stays a loop, and the
        ONNX exporter takes its TorchScript path (a true `Loop`) without trying torch.export first."""
        import warnings

        import torch

        from exportable.blocks.crf import CRFTagger

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

    # --- specs (TextInputs provides input_specs / model_input_specs / feed for texts) ----------
    @property
    def id_input_names(self) -> list[str]:
        return self.ordered_id_names(self.tokenizer.model_input_names)  # CRFTagger.forward's order

    @property
    def max_length(self) -> int:
        return int(min(self.tokenizer.model_max_length, self.classifier.config.max_position_embeddings))

    def tokenize(self, texts: list[str]) -> dict[str, np.ndarray]:
        return self.hf_tokenize(self.tokenizer, texts)

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

    def source(self) -> Source:
        if self.option_path("model") is not None:
            return Source(self.model_dir.name, sha256_files(weight_files(self.model_dir)), str(self.model_dir))
        state = {**self.classifier.state_dict(), **{f"crf.{k}": v for k, v in self.crf.state_dict().items()}}
        return Source(f"sentence-transformers/all-MiniLM-L6-v2 + seeded {len(TAGS)}-tag head and CRF (seed {SEED})",
                      sha256_state_dict(state), str(self.model_dir))

    def preprocessing(self) -> dict:
        from exportable.blocks.crf import PAD_TAG

        return {**self.text_preprocessing(), "padding": "longest", "truncation": True,
                "tags": self.tags, "padding_tag": PAD_TAG,
                "decoding": "CRF Viterbi over positions where attention_mask is 1; "
                            "transitions[i, j] scores tag i followed by tag j"}

    # --- data --------------------------------------------------------------------------------
    def example_case(self) -> Case:
        return Case("example", ["Ada Lovelace worked with Charles Babbage in London.", "Short one."])

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
            cases += self._id_cases(special)
        return cases

    def _one_token_words(self) -> list[str]:
        pool = sorted(set(samples.long_text(400, seed=3).rstrip(".").split()))
        words = [w for w in pool if len(self.tokenizer(w, add_special_tokens=False)["input_ids"]) == 1]
        if not words:
            raise InputError(f"--model {self.model_dir}: its tokenizer splits every sample word; "
                             "the length sweep needs single-token words")
        return words

    def _id_cases(self, special: int) -> list[Case]:
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
