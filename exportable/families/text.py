"""Text families: what Hugging Face text recipes share, so that a recipe declares only what differs.

    TextFamily                a Hugging Face checkpoint and its tokenizer: `--model` (a local folder or
                              a hub id already in the local cache; default the bundled
                              all-MiniLM-L6-v2), the one encoder check (exportable.text.support),
                              strings in with the tokenizer as graph nodes or `--inputs ids`, the
                              max length, the weights hash, validation batches
    SentenceEncoderFamily     a sentence-transformers model: Transformer + Pooling (+ Normalize)
                              -> `sentence_embedding`, against SentenceTransformer.encode

The classifier and tagger families build on TextFamily: exportable.families.text_classifier and
exportable.families.token_tagger. See docs/writing-a-recipe.md, Families.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from sentence_transformers import SentenceTransformer

from exportable.blocks.text_encoder import SentenceEncoder
from exportable.checkpoints import resolve_checkpoint
from exportable.errors import InputError
from exportable.hashing import sha256_files, sha256_state_dict, weight_files
from exportable.recipe import Case, Option, Recipe, Source, TensorSpec
from exportable.text.support import encoder_problem, max_tokens
from exportable.textinput import (
    TextInputs,
    bundled_model_dir,
    corpus_cases,
    load_hf_tokenizer,
    tokenizer_problem,
)

BUNDLED_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
INPUTS = Option("inputs", "ONNX graph inputs: raw strings (tokenizer in the graph) or token ids",
                default="text", choices=("text", "ids"))
EXAMPLE_BATCH = 2  # the export example's batch size in every text recipe: validation never uses it


def model_option(what: str, default: str = f"the bundled {BUNDLED_MODEL}") -> Option:
    return Option("model", f"{what}: a local folder, or a Hugging Face model id already in the local cache "
                           f"(default: {default})")


def batch_cases(texts: Sequence[str], sizes: Sequence[int]) -> list[Case]:
    """`texts` in consecutive batches whose sizes cycle through `sizes`; a batch that would have
    the export example's size runs as one text (validation proves other shapes)."""
    cases, i, k = [], 0, 0
    while i < len(texts):
        chunk = list(texts[i:i + sizes[k % len(sizes)]])
        if len(chunk) == EXAMPLE_BATCH:
            chunk = chunk[:1]
        cases.append(Case(f"batch{len(chunk)}_{i:03d}", chunk))
        i, k = i + len(chunk), k + 1
    return cases


class TextFamily(TextInputs, Recipe):
    """A Hugging Face text model. A subclass declares its options (model_option(...), INPUTS, its
    own), build_original/build_wrapper, output specs and cases; it calls `load_model` for the
    checkpoint, and overrides `default_state` when the default model is changed at export (a head
    trained or seeded), so the source hash covers what was exported."""

    formats = ("onnx", "torchscript")
    # Files a `--model` folder must hold, and how a user writes each (checked before any weights load).
    model_files: ClassVar[tuple[tuple[str, str], ...]] = (("config.json", "model.save_pretrained(DIR)"),)
    default_model_name: ClassVar[str] = BUNDLED_MODEL

    def validate_settings(self) -> None:
        self._checkpoint: Path | None = None
        if self.settings.get("model"):
            self._checkpoint = resolve_checkpoint(self.settings["model"], flag="--model")
            self.check_model_folder(self._checkpoint)
            model_type = self.config.get("model_type")
            if model_type:  # an early answer; load_model checks the loaded model too
                self.check_encoder(model_type)
            if self.text_mode:
                self.check_tokenizer()

    def check_model_folder(self, path: Path) -> None:
        for needed, how in self.model_files:
            if not (path / needed).is_file():
                raise InputError(f"--model {path}: no {needed}; write it with {how}")

    def check_encoder(self, model_type: str) -> None:
        problem = encoder_problem(model_type)
        if problem:
            raise InputError(f"--model {self.model_dir}: {problem}")

    def check_tokenizer(self) -> None:
        """Text inputs need a tokenizer the graph reproduces exactly; else say how to take ids."""
        problem = tokenizer_problem(load_hf_tokenizer(self.model_dir))
        if problem:
            raise InputError(f"--model {self.model_dir}: tokenizer.json {problem}; pass --inputs ids to export "
                             "the ids-in graph")

    # --- the checkpoint ------------------------------------------------------------------------
    @property
    def custom(self) -> bool:
        """True when `--model` was given (else the bundled model, possibly with a head made at export)."""
        return self._checkpoint is not None

    @property
    def model_dir(self) -> Path:
        return self._checkpoint or bundled_model_dir()

    @property
    def model_name(self) -> str:
        """What the user named: the folder's name, or the hub id; the bundled model's id by default."""
        if not self.custom:
            return self.default_model_name
        value = str(self.settings["model"])
        return self._checkpoint.name if Path(value).expanduser() == self._checkpoint else value

    @cached_property
    def config(self) -> dict[str, Any]:
        path = self.model_dir / "config.json"
        if not path.is_file():
            return {}
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise InputError(f"--model {self.model_dir}: transformers could not load it: config.json is not valid "
                             f"JSON ({str(exc).splitlines()[0][:120]}); save the model with save_pretrained(DIR)") from None
        if not isinstance(config, dict):
            raise InputError(f"--model {self.model_dir}: transformers could not load it: config.json is not a JSON "
                             "object; save the model with save_pretrained(DIR)")
        return config

    def load_model(self, auto_class, kind: str, **extra):
        """`auto_class.from_pretrained(model_dir)` (local files only, eval mode), its encoder
        checked; one-line InputErrors naming the folder."""
        try:
            model = auto_class.from_pretrained(str(self.model_dir), local_files_only=True, **extra)
        except Exception as exc:
            raise InputError(f"--model {self.model_dir}: transformers could not load it as a {kind} "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from None
        self.check_encoder(model.config.model_type)
        return model.eval()

    @staticmethod
    def run_model(model, ids: Mapping[str, np.ndarray]):
        with torch.no_grad():
            return model(**{k: torch.from_numpy(v) for k, v in ids.items()})

    # --- the tokenizer (TextInputs builds the graph from model_dir's files) -----------------------
    @cached_property
    def tokenizer(self):
        return load_hf_tokenizer(self.model_dir)

    @property
    def id_input_names(self) -> list[str]:
        return self.ordered_id_names(self.tokenizer.model_input_names)  # the text wrappers' forward() order

    @property
    def max_length(self) -> int:
        return int(min(self.tokenizer.model_max_length, max_tokens(self.config)))

    def tokenize(self, texts: list[str]) -> dict[str, np.ndarray]:
        return self.hf_tokenize(self.tokenizer, texts)

    # --- what the artifact records ---------------------------------------------------------------
    def default_state(self) -> Mapping | None:
        """The default model's state_dict when export changes it (a head trained or seeded), else None."""
        return None

    def default_source_name(self) -> str:
        return self.default_model_name

    def source(self) -> Source:
        state = None if self.custom else self.default_state()
        if state is None:
            return Source(self.model_name if self.custom else self.default_source_name(),
                          sha256_files(weight_files(self.model_dir)), str(self.model_dir))
        return Source(self.default_source_name(), sha256_state_dict(state), str(self.model_dir))

    def preprocessing(self) -> dict:
        return {**self.text_preprocessing(), "padding": "longest", "truncation": True}

    def text_cases(self, texts: Sequence[str], sizes: Sequence[int], corpus_every: int = 1) -> list[Case]:
        """`texts` in batches (batch_cases) and, when the tokenizer is in the graph, every
        `corpus_every`-th case of the tokenizer corpus (the empty batch first)."""
        cases = batch_cases(texts, sizes)
        if self.text_mode:
            cases += corpus_cases()[::corpus_every]
        return cases


class SentenceEncoderFamily(TextFamily):
    """A sentence-transformers model (Transformer + Pooling mean/cls/max, Normalize if present)
    against SentenceTransformer.encode. A subclass declares its name, options, tolerances, cases."""

    original_pipeline = "SentenceTransformer.encode"
    model_files = ()  # a sentence-transformers folder: modules.json, or a plain transformers config.json
    POOLINGS: ClassVar[tuple[str, ...]] = ("mean", "cls", "max")

    def check_model_folder(self, path: Path) -> None:
        if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
            raise InputError(f"--model {path}: not a sentence-transformers model folder (no modules.json or "
                             "config.json); save one with SentenceTransformer.save(PATH)")

    @cached_property
    def st(self):
        logging.getLogger("sentence_transformers").setLevel(logging.ERROR)
        try:
            model = SentenceTransformer(str(self.model_dir), device="cpu", local_files_only=True)
        except Exception as exc:
            raise InputError(f"--model {self.model_dir}: sentence-transformers could not load it "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from None
        kinds = [type(m).__name__ for m in model]
        if not kinds or kinds[0] != "Transformer" or "Pooling" not in kinds:
            raise InputError(f"--model {self.model_dir}: expected Transformer + Pooling modules, found {kinds}")
        self.check_encoder(model[0].model.config.model_type)
        mode = self.pooling_mode(model)
        if mode not in self.POOLINGS:
            raise InputError(f"--model {self.model_dir}: pooling mode {mode!r} is not supported "
                             f"({', '.join(self.POOLINGS)})")
        return model.eval()

    @staticmethod
    def pooling_mode(model) -> str:
        pooling = next(m for m in model if type(m).__name__ == "Pooling")
        return pooling.get_config_dict().get("pooling_mode", "mean")

    @property
    def tokenizer(self):
        return self.st[0].tokenizer

    @property
    def max_length(self) -> int:
        return self.st.max_seq_length

    @property
    def embedding_dim(self) -> int:
        st = self.st
        return st.get_embedding_dimension() if hasattr(st, "get_embedding_dimension") \
            else st.get_sentence_embedding_dimension()

    def tokenize(self, texts: list[str]) -> dict[str, np.ndarray]:
        # The original's own preprocessing (SentenceTransformer.preprocess), so ids match exactly.
        if not texts:  # the HF tokenizer rejects an empty batch; the graphs take [0, S]
            return {n: np.zeros((0, 2), np.int64) for n in self.id_input_names}
        features = self.st.preprocess(texts)
        return {n: features[n].numpy().astype(np.int64) for n in self.id_input_names}

    def build_original(self):
        return self._encode_with(self.st)  # loads now, so a bad --model fails in the build stage

    def original_on(self, device: str):
        """The same pipeline on another torch device: `bench --device cuda` times the artifact
        against eager PyTorch on the GPU. A copy moves, so the CPU original stays where it is."""
        return self._encode_with(copy.deepcopy(self.st).to(device))

    def _encode_with(self, model):
        dim = self.embedding_dim

        def encode(case: Case) -> dict[str, np.ndarray]:
            if not len(case.data):  # encode([]) returns a shapeless empty list
                return {"sentence_embedding": np.zeros((0, dim), np.float32)}
            emb = model.encode(list(case.data), batch_size=32, convert_to_numpy=True, show_progress_bar=False)
            return {"sentence_embedding": np.asarray(emb, dtype=np.float32).reshape(len(case.data), dim)}

        return encode

    def build_wrapper(self, fmt: str = "onnx"):
        normalize = any(type(m).__name__ == "Normalize" for m in self.st)
        return SentenceEncoder(self.st[0].model, self.pooling_mode(self.st), normalize).eval()

    def output_specs(self):
        return (TensorSpec("sentence_embedding", "float32", ("batch", self.embedding_dim),
                           "sentence embedding, L2-normalised when the model normalises"),)
