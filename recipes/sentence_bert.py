"""sentence_bert: a sentence-transformers BERT-family model as one artifact.

Original: `SentenceTransformer.encode`. Artifact: strings in (the model's tokenizer as graph
nodes, exportable.text), BERT + masked pooling (+ L2 normalise when the model has a Normalize
module), `sentence_embedding` out. `--inputs ids` keeps the ids-in graph for users who tokenize.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np

from exportable import samples
from exportable.errors import InputError
from exportable.hashing import sha256_files, weight_files
from exportable.recipe import Case, Option, Recipe, Source, TensorSpec, Tolerance
from exportable.registry import register
from exportable.textinput import TextInputs, bundled_model_dir, corpus_cases

BERT_FAMILY = {"bert", "distilbert", "roberta", "xlm-roberta", "mpnet", "electra", "albert", "camembert"}



@register
class SentenceBert(TextInputs, Recipe):
    name = "sentence_bert"
    formats = ("onnx", "torchscript")
    summary = "sentence-transformers encoder (default all-MiniLM-L6-v2) -> sentence_embedding"
    original_pipeline = "SentenceTransformer.encode"
    options = (
        Option("model", "a local sentence-transformers model folder (default: bundled all-MiniLM-L6-v2)"),
        Option("inputs", "ONNX graph inputs: raw strings (tokenizer in the graph) or token ids",
               default="text", choices=("text", "ids")),
    )

    def validate_settings(self) -> None:
        path = self.option_path("model")
        if path is not None:
            if not path.is_dir():
                raise InputError(f"--model {path}: no such folder; pass a local sentence-transformers model folder")
            if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
                raise InputError(f"--model {path}: not a sentence-transformers model folder (no modules.json or "
                                 "config.json); save one with SentenceTransformer.save(PATH)")

    @property
    def model_dir(self) -> Path:
        return self.option_path("model") or bundled_model_dir()

    # --- the original pipeline ------------------------------------------------------------
    @cached_property
    def st(self):
        import logging

        from sentence_transformers import SentenceTransformer

        logging.getLogger("sentence_transformers").setLevel(logging.ERROR)
        try:
            model = SentenceTransformer(str(self.model_dir), device="cpu", local_files_only=True)
        except Exception as exc:
            raise InputError(f"--model {self.model_dir}: sentence-transformers could not load it "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from None
        model.eval()
        self._check_architecture(model)
        return model

    def _check_architecture(self, model) -> None:
        kinds = [type(m).__name__ for m in model]
        if not kinds or kinds[0] != "Transformer" or "Pooling" not in kinds:
            raise InputError(f"--model {self.model_dir}: expected Transformer + Pooling modules, found {kinds}")
        model_type = model[0].model.config.model_type
        if model_type not in BERT_FAMILY:
            raise InputError(f"--model {self.model_dir}: model type {model_type!r} is not BERT-family; "
                             f"supported: {', '.join(sorted(BERT_FAMILY))}")
        mode = self._pooling_mode(model)
        if mode not in ("mean", "cls", "max"):
            raise InputError(f"--model {self.model_dir}: pooling mode {mode!r} is not supported (mean, cls, max)")

    @staticmethod
    def _pooling_mode(model) -> str:
        pooling = next(m for m in model if type(m).__name__ == "Pooling")
        return pooling.get_config_dict().get("pooling_mode", "mean")

    def build_original(self):
        return self._encode_with(self.st)  # loads now, so a bad --model fails in the build stage

    def original_on(self, device: str):
        """The same pipeline on another torch device: `bench --device cuda` times the artifact
        against eager PyTorch on the GPU. A copy moves, so the CPU original stays where it is."""
        import copy

        return self._encode_with(copy.deepcopy(self.st).to(device))

    def _encode_with(self, model):
        dim = self.embedding_dim

        def encode(case: Case) -> dict[str, np.ndarray]:
            if not len(case.data):  # encode([]) returns a shapeless empty list
                return {"sentence_embedding": np.zeros((0, dim), np.float32)}
            emb = model.encode(list(case.data), batch_size=32, convert_to_numpy=True, show_progress_bar=False)
            return {"sentence_embedding": np.asarray(emb, dtype=np.float32).reshape(len(case.data), dim)}

        return encode

    # --- the wrapper ------------------------------------------------------------------------
    def build_wrapper(self, fmt: str = "onnx"):
        from exportable.blocks.text_encoder import SentenceEncoder

        normalize = any(type(m).__name__ == "Normalize" for m in self.st)
        return SentenceEncoder(self.st[0].model, self._pooling_mode(self.st), normalize).eval()

    # --- specs (TextInputs provides input_specs / model_input_specs / feed) --------------------
    @property
    def id_input_names(self) -> list[str]:
        return self.ordered_id_names(self.st[0].tokenizer.model_input_names)  # SentenceEncoder.forward's order

    @property
    def max_length(self) -> int:
        return self.st.max_seq_length

    @property
    def embedding_dim(self) -> int:
        return self.st.get_embedding_dimension() if hasattr(self.st, "get_embedding_dimension") \
            else self.st.get_sentence_embedding_dimension()

    def tokenize(self, texts: list[str]) -> dict[str, np.ndarray]:
        # The original's own preprocessing (SentenceTransformer.preprocess), so ids match exactly.
        if not texts:  # the HF tokenizer rejects an empty batch; the graphs take [0, S]
            return {n: np.zeros((0, 2), np.int64) for n in self.id_input_names}
        features = self.st.preprocess(texts)
        return {n: features[n].numpy().astype(np.int64) for n in self.id_input_names}

    def output_specs(self):
        return (TensorSpec("sentence_embedding", "float32", ("batch", self.embedding_dim),
                           "sentence embedding, L2-normalised when the model normalises"),)

    def tolerances(self):
        # The fp32 bar: max abs diff <= 1e-5 and cosine >= 0.99999 per row.
        return {"sentence_embedding": Tolerance(atol=1e-5, rtol=0.0, min_cosine=0.99999)}

    def source(self) -> Source:
        return Source(self.model_dir.name if self.option_path("model") else "sentence-transformers/all-MiniLM-L6-v2",
                      sha256_files(weight_files(self.model_dir)), str(self.model_dir))

    def preprocessing(self) -> dict:
        return {**self.text_preprocessing(), "padding": "longest", "truncation": True}

    # --- data --------------------------------------------------------------------------------
    def example_case(self) -> Case:
        return Case("example", ["Exportable turns a model into one file.", "Short one."])

    def validation_cases(self) -> list[Case]:
        """>= 50 sentences of varied length at batch sizes 1, 3 and 17 (never the example's 2),
        with the edge cases: empty string, whitespace, and a text far over max length."""
        texts = samples.sentences(53, seed=11)
        texts[4] = ""
        texts[9] = "   "
        texts[20] = samples.long_text(400)
        cases, i = [], 0
        for size in [1, 1, 1, 1, 1, 3, 3, 3, 3, 17, 17]:
            cases.append(Case(f"batch{size}_{i:02d}", texts[i:i + size]))
            i += size
        if self.text_mode:  # the tokenizer is in the graph: prove it on the whole Unicode corpus
            cases += corpus_cases()
        return cases

