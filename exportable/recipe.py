"""The recipe contract: a recipe declares, the pipeline in api.py orchestrates.

A recipe names the original pipeline (the parity reference), the export-friendly wrapper, the
example and validation cases, the artifact's input/output specs and the tolerances.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np

from .errors import InputError

FORMATS = ("onnx", "torchscript")


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output. `shape` holds ints for fixed dims, names for symbolic ones."""

    name: str
    dtype: str  # numpy-style: float32, int64, uint8, bool, string
    shape: tuple[int | str, ...]
    doc: str = ""

    def as_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "doc": self.doc}


@dataclass(frozen=True)
class Tolerance:
    """How close an output must be to the original's.

    Defaults follow torch.testing for fp32 (rtol 1.3e-6, atol 1e-5). `exact` is for integers,
    booleans and strings. `min_cosine` is checked per row (last axis).
    """

    atol: float = 1e-5
    rtol: float = 1.3e-6
    min_cosine: float | None = None
    exact: bool = False

    def as_dict(self) -> dict:
        if self.exact:
            return {"exact": True}
        d = {"exact": False, "atol": self.atol, "rtol": self.rtol}
        if self.min_cosine is not None:
            d["min_cosine"] = self.min_cosine
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "Tolerance":
        if d.get("exact"):
            return cls(exact=True)
        return cls(atol=d["atol"], rtol=d["rtol"], min_cosine=d.get("min_cosine"))


EXACT = Tolerance(exact=True)


@dataclass(frozen=True)
class Case:
    """One raw input to the original pipeline (a batch of texts, an image...) and its name."""

    name: str
    data: Any


@dataclass(frozen=True)
class Option:
    """A recipe-specific option, exposed as `--name` on the CLI and as a keyword in the API."""

    name: str
    help: str
    default: Any = None
    type: Callable[[str], Any] = str
    choices: Sequence[Any] | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


@dataclass(frozen=True)
class Source:
    """What the artifact was made from, for metadata: a name, a path, a hash of the weights."""

    name: str
    sha256: str
    path: str = ""


class Recipe:
    """Base class. Subclasses set the class attributes and implement the build_* methods."""

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    formats: ClassVar[tuple[str, ...]] = FORMATS
    options: ClassVar[tuple[Option, ...]] = ()
    original_pipeline: ClassVar[str] = ""  # e.g. "SentenceTransformer.encode", shown in reports

    def __init__(self, **options: Any):
        known = {o.name: o for o in self.options}
        unknown = sorted(set(options) - set(known))
        if unknown:
            valid = ", ".join(o.flag for o in self.options) or "none"
            raise InputError(f"recipe {self.name!r} has no option {unknown[0]!r}; its options: {valid}")
        self.settings: dict[str, Any] = {}
        for name, opt in known.items():
            value = options.get(name)
            if value is None:
                value = opt.default
            if value is not None and opt.choices is not None and value not in opt.choices:
                raise InputError(
                    f"{opt.flag} {value!r} is not supported by {self.name}; choose one of: "
                    + ", ".join(map(str, opt.choices))
                )
            self.settings[name] = value
        self.validate_settings()

    # --- what a recipe declares -------------------------------------------------------------
    def validate_settings(self) -> None:
        """Check option values (paths exist, ranges); raise InputError naming the fix."""

    def input_specs(self, fmt: str = "onnx") -> tuple[TensorSpec, ...]:
        raise NotImplementedError

    def output_specs(self) -> tuple[TensorSpec, ...]:
        raise NotImplementedError

    def tolerances(self) -> dict[str, Tolerance]:
        """Per-output tolerance against the original. Integers/strings must be EXACT."""
        return {}

    def source(self) -> Source:
        raise NotImplementedError

    def preprocessing(self) -> dict:
        """Settings baked into the graph (recorded in metadata)."""
        return {}

    # --- what a recipe builds ---------------------------------------------------------------
    def build_original(self) -> Callable[[Case], dict[str, np.ndarray]]:
        """The unwrapped pipeline a user runs today; returns outputs keyed by output name."""
        raise NotImplementedError

    def build_wrapper(self, fmt: str = "onnx"):
        """The export-friendly module (torch.nn.Module) captured by the exporters."""
        raise NotImplementedError

    def exporter(self, fmt: str) -> str:
        """Which exporter module (exportable.exporters.<name>) captures `fmt`."""
        return fmt

    def onnx_preprocessor(self, opset: int):
        """Optional ONNX graph (at `opset`) merged in front of the captured model (e.g. a tokenizer)."""
        return None

    def onnx_postprocessor(self, opset: int):
        """Optional ONNX graph (at `opset`) merged behind the captured model: its inputs are model
        outputs of the same name, its outputs come after the model's (e.g. ids -> label strings)."""
        return None

    def example_case(self) -> Case:
        raise NotImplementedError

    def validation_cases(self) -> list[Case]:
        raise NotImplementedError

    def feed(self, case: Case, fmt: str = "onnx") -> dict[str, np.ndarray]:
        """Turn a raw case into the artifact's inputs for the given format."""
        raise NotImplementedError

    def unsupported(self, case: Case, fmt: str) -> str | None:
        """Why `fmt` cannot run `case` at all (e.g. a traced graph and an empty batch), or None.
        Such cases are listed as N/A in the report and as known failures in the vectors."""
        return None

    def runtime_limitations(self, case: Case) -> dict[str, str]:
        """Non-Python runtimes (java, go) known not to run `case`, with the reason; written to the
        vectors as known failures, which those consumers report as XFAIL without running them."""
        return {}

    def model_input_specs(self, fmt: str = "onnx") -> tuple[TensorSpec, ...]:
        """Inputs of the *captured module*; differs from input_specs when a preprocessor graph
        (onnx_preprocessor) is merged in front of it."""
        return self.input_specs(fmt)

    def model_output_specs(self, fmt: str = "onnx") -> tuple[TensorSpec, ...]:
        """Outputs of the *captured module*; differs from output_specs when a postprocessor graph
        (onnx_postprocessor) adds outputs behind it."""
        return self.output_specs()

    def capture_feed(self, fmt: str = "onnx") -> dict[str, np.ndarray]:
        """Inputs of the captured module for the example case."""
        return self.feed(self.example_case(), fmt)

    # --- helpers ----------------------------------------------------------------------------
    def option_path(self, name: str) -> Path | None:
        value = self.settings.get(name)
        return Path(value).expanduser() if value else None

    def describe(self) -> dict:
        return {"recipe": self.name, "options": {k: _plain(v) for k, v in self.settings.items()}}


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    return value
