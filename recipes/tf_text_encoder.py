"""tf_text_encoder: a TensorFlow text encoder with its tokenizer inside the TF graph
(tensorflow-text BertTokenizer), converted by tf2onnx with our handlers and rewrites
(exportable.tf) to one ONNX file that takes strings.

Original: the SavedModel's serving signature run by TensorFlow. Default: a seeded Keras encoder
over the real vocabulary of the bundled all-MiniLM-L6-v2 (exportable.tf.model);
`--saved-model PATH` converts a user's own SavedModel whose signature takes one batch of strings.
Needs the tf extra: pip install -e ".[tf]".
"""

from __future__ import annotations

import tempfile
from functools import cached_property
from pathlib import Path

import numpy as np

from exportable import samples
from exportable.errors import InputError
from exportable.hashing import sha256_files
from exportable.recipe import EXACT, Case, Option, Recipe, Source, TensorSpec, Tolerance
from exportable.registry import register
from exportable.textinput import bundled_model_dir, corpus_cases
from exportable.tf import build_default_savedmodel, run_savedmodel, signature_info

TF_DTYPES = {"float32": "float32", "float64": "float64", "int64": "int64", "int32": "int32", "bool": "bool",
             "string": "string"}


@register
class TfTextEncoder(Recipe):
    name = "tf_text_encoder"
    summary = "TensorFlow SavedModel, tokenizer in the TF graph (tf2onnx + custom ops) -> sentence embedding"
    original_pipeline = "TensorFlow SavedModel serving signature"
    formats = ("onnx",)
    options = (Option("saved_model", "a TF SavedModel folder whose serving signature takes one batch of strings "
                                     "(default: a seeded Keras encoder with the bundled MiniLM vocabulary)"),)

    def validate_settings(self) -> None:
        path = self.option_path("saved_model")
        if path is not None and not (path / "saved_model.pb").is_file():
            raise InputError(f"--saved-model {path}: not a SavedModel folder (no saved_model.pb); "
                             "write one with tf.saved_model.save(module, PATH, signatures=...)")

    def exporter(self, fmt: str) -> str:
        return "tf"

    @cached_property
    def saved_model_dir(self) -> Path:
        given = self.option_path("saved_model")
        if given is not None:
            return given
        self._workdir = tempfile.TemporaryDirectory(prefix="exportable-tf-")  # lives as long as the recipe
        folder = Path(self._workdir.name) / "default_text_encoder"
        build_default_savedmodel(folder, bundled_model_dir() / "vocab.txt", seed=0)
        return folder

    @cached_property
    def signature(self):
        return signature_info(self.saved_model_dir)

    # --- specs ---------------------------------------------------------------------------------
    def input_specs(self, fmt: str = "onnx"):
        return (TensorSpec(self.signature.text_input, "string", ("batch",), "UTF-8 texts, one per row"),)

    def output_specs(self):
        specs = []
        for name, (dtype, shape) in self.signature.outputs.items():
            dims = tuple("batch" if i == 0 else (d if d is not None else f"{name}_dim{i}")
                         for i, d in enumerate(shape))
            specs.append(TensorSpec(name, TF_DTYPES.get(dtype, dtype), dims))
        return tuple(specs)

    def tolerances(self):
        # fp32 bar of the issue: embeddings within 1e-5 and cosine 0.99999 per row; ids exactly.
        return {s.name: Tolerance(atol=1e-5, rtol=0.0, min_cosine=0.99999 if len(s.shape) == 2 else None)
                if s.dtype.startswith("float") else EXACT for s in self.output_specs()}

    def source(self) -> Source:
        files = [p for p in self.saved_model_dir.rglob("*") if p.is_file()]
        name = self.saved_model_dir.name if self.option_path("saved_model") else "seeded Keras text encoder (MiniLM vocab)"
        return Source(name, sha256_files(files), str(self.saved_model_dir))

    def preprocessing(self) -> dict:
        return {"tokenizer": "tensorflow-text (inside the SavedModel), converted with exportable.tf handlers",
                "signature": self.signature.name}

    # --- build ---------------------------------------------------------------------------------
    def build_original(self):
        folder, names = self.saved_model_dir, [s.name for s in self.output_specs()]

        def run(case: Case) -> dict[str, np.ndarray]:
            out = run_savedmodel(folder, list(case.data))
            return {k: np.asarray(out[k]) for k in names}

        return run

    def build_wrapper(self, fmt: str = "onnx"):
        return self.saved_model_dir

    # --- data ----------------------------------------------------------------------------------
    def example_case(self) -> Case:
        return Case("example", ["TensorFlow tokenizes inside its graph.", "So does the artifact."])

    def validation_cases(self) -> list[Case]:
        texts = samples.sentences(21, seed=5)
        cases = [Case("batch1", texts[:1]), Case("batch3", texts[1:4]), Case("batch17", texts[4:21])]
        return cases + corpus_cases()

    def feed(self, case: Case, fmt: str = "onnx") -> dict[str, np.ndarray]:
        texts = list(case.data)
        return {self.signature.text_input: np.array(texts, dtype=object).reshape(len(texts))}
