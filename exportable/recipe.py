"""The recipe contract: a recipe declares, the pipeline in api.py orchestrates.

A recipe names the original pipeline (the parity reference), the export-friendly wrapper, the
example and validation cases, the artifact's input/output specs and the tolerances.

The minimal contract (docs/writing-a-recipe.md) is `name`, `inputs`, `outputs`, build_original(),
build_wrapper(), example_case() and validation_cases(). Everything else has a default declared
on `Recipe` below, with a docstring: the pipeline never looks for hooks with getattr.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np

from .errors import InputError

FORMATS = ("onnx", "torchscript")  # every format an exporter exists for
DEFAULT_FORMATS = ("onnx",)  # what a recipe supports unless it declares `formats`


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

    `tokens`: the rows (axis 0) are token sequences, e.g. generated ids and the text decoded from
    them. Every comparison then also counts the rows that are identical and, for [rows, steps],
    the rows whose first token agrees. Exact, that is a report; a lossy variant judges such an
    output by *token agreement* instead (exact=False, see token_agreement): the first token is
    the argmax of the prompt's logits on the same input, so the fraction of rows whose first
    token agrees measures the variant's own per-step error, and must reach `min_first_tokens`
    over all cases together; later tokens follow the variant's own earlier choices, so once one
    differs the rest is another continuation, reported (identical rows) but not gated. An output
    that `follows` another (text decoded from ids) must be identical on every row where that
    output's row is.
    """

    atol: float = 1e-5
    rtol: float = 1.3e-6
    min_cosine: float | None = None
    exact: bool = False
    tokens: bool = False
    min_first_tokens: float | None = None
    follows: str = ""

    @property
    def agreement(self) -> bool:
        """Judged by token agreement (a lossy variant's ids and text), not element by element."""
        return self.tokens and not self.exact

    def as_dict(self) -> dict:
        tokens = {k: v for k, v in (("tokens", self.tokens), ("min_first_tokens", self.min_first_tokens),
                                    ("follows", self.follows)) if v}
        if self.exact:
            return {"exact": True, **tokens}
        if self.agreement:
            return {"exact": False, **tokens}
        d = {"exact": False, "atol": self.atol, "rtol": self.rtol}
        if self.min_cosine is not None:
            d["min_cosine"] = self.min_cosine
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> Tolerance:
        tokens = {"tokens": bool(d.get("tokens")), "min_first_tokens": d.get("min_first_tokens"),
                  "follows": d.get("follows", "")}
        if d.get("exact"):
            return cls(exact=True, **tokens)
        if tokens["tokens"]:
            return cls(**tokens)
        return cls(atol=float(d["atol"]), rtol=float(d["rtol"]), min_cosine=d.get("min_cosine"))

    def token_agreement(self, min_first_tokens: float) -> Tolerance:
        """This token output as a lossy variant judges it: agreement, first tokens gated at
        `min_first_tokens` (an output that follows another is gated through that one)."""
        return Tolerance(tokens=True, follows=self.follows,
                         min_first_tokens=None if self.follows else min_first_tokens)


EXACT = Tolerance(exact=True)
TOKENS = Tolerance(exact=True, tokens=True)  # generated ids: exact here, token agreement in a lossy variant


def decoded_tokens(ids_output: str) -> Tolerance:
    """Text decoded from the token output `ids_output`: exact here; in a lossy variant identical
    wherever that output's rows are."""
    return Tolerance(exact=True, tokens=True, follows=ids_output)

# The tolerance an output gets when the recipe does not name one: torch.testing's defaults for
# the float dtypes (assert_close: float16 rtol 1e-3 atol 1e-5, bfloat16 1.6e-2 / 1e-5, float64
# 1e-7 / 1e-7); integers, booleans and strings must match exactly.
DTYPE_TOLERANCES = {
    "float32": Tolerance(),
    "float16": Tolerance(atol=1e-5, rtol=1e-3),
    "bfloat16": Tolerance(atol=1e-5, rtol=1.6e-2),
    "float64": Tolerance(atol=1e-7, rtol=1e-7),
}


def default_tolerance(dtype: str) -> Tolerance:
    return DTYPE_TOLERANCES.get(dtype, EXACT)


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

    def coerce(self, value: Any, recipe: str) -> Any:
        """`value` as this option's type (a string from the CLI is parsed; an API value of the
        wrong type is refused), or a one-line InputError naming the expected type."""
        if value is None:
            return None
        expected = getattr(self.type, "__name__", str(self.type))
        wrong = InputError(f"recipe {recipe!r}: {self.flag} expects {_a(expected)}, got {value!r}")
        if self.type is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in _BOOL_WORDS:
                return _BOOL_WORDS[value.lower()]
            raise wrong
        if isinstance(value, bool) and self.type in (int, float):
            raise wrong  # True is an int to Python, not to a user who typed --top-k
        if self.type is str:
            if isinstance(value, os.PathLike):
                return os.fspath(value)
            if not isinstance(value, str):
                raise wrong
            return value
        if self.type is float and isinstance(value, int):
            return float(value)
        if isinstance(self.type, type) and isinstance(value, self.type):
            return value
        if not isinstance(value, str):
            raise wrong
        try:
            return self.type(value)
        except (TypeError, ValueError):
            raise wrong from None


_BOOL_WORDS = {"true": True, "yes": True, "1": True, "on": True, "false": False, "no": False, "0": False, "off": False}


def _a(noun: str) -> str:
    return ("an " if noun[:1] in "aeiou" else "a ") + noun


@dataclass(frozen=True)
class Source:
    """What the artifact was made from, for metadata: a name, a path, a hash of the weights."""

    name: str
    sha256: str
    path: str = ""


class Recipe:
    """Base class. A subclass declares `name`, `inputs`, `outputs` and the four build methods
    (build_original, build_wrapper, example_case, validation_cases); everything else below has a
    default that a subclass overrides only when it needs something else."""

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    inputs: ClassVar[tuple[TensorSpec, ...]] = ()  # the artifact's inputs (or override input_specs)
    outputs: ClassVar[tuple[TensorSpec, ...]] = ()  # the artifact's outputs (or override output_specs)
    formats: ClassVar[tuple[str, ...]] = DEFAULT_FORMATS  # add "torchscript" where the wrapper scripts/traces
    options: ClassVar[tuple[Option, ...]] = ()
    original_pipeline: ClassVar[str] = ""  # e.g. "SentenceTransformer.encode", shown in reports
    # Dense FLOPs per token, for bench's efficiency column; None: bench counts them in the graph.
    flops_per_token: ClassVar[float | None] = None
    generates_text: ClassVar[bool] = False  # a decoding loop: bench times new tokens/s (bench/generation.py)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not cls.original_pipeline:  # reports say what parity was measured against
            cls.original_pipeline = f"{cls.__qualname__}.build_original()"

    def __init__(self, **options: Any):
        known = {o.name: o for o in self.options}
        unknown = sorted(set(options) - set(known))
        if unknown:
            valid = ", ".join(o.flag for o in self.options) or "none"
            raise InputError(f"recipe {self.name!r} has no option {unknown[0]!r}; its options: {valid}")
        settings: dict[str, Any] = {}
        for name, opt in known.items():
            value = opt.coerce(options.get(name), self.name)
            if value is None:
                value = opt.default
            if value is not None and opt.choices is not None and value not in opt.choices:
                raise InputError(
                    f"{opt.flag} {value!r} is not supported by {self.name}; choose one of: "
                    + ", ".join(map(str, opt.choices))
                )
            settings[name] = value
        # Validated once, then read-only: what the report records is what every stage used.
        self.settings: Mapping[str, Any] = MappingProxyType(settings)
        self.validate_settings()

    # --- what a recipe declares -------------------------------------------------------------
    def validate_settings(self) -> None:
        """Check option values (paths exist, ranges); raise InputError naming the fix."""

    def input_specs(self, fmt: str = "onnx") -> tuple[TensorSpec, ...]:
        """The artifact's inputs for `fmt`; by default the class's `inputs`."""
        if not self.inputs:
            raise InputError(f"recipe {self.name!r} declares no inputs; set `inputs = (TensorSpec(...), ...)` "
                             "on the class (or define input_specs)")
        return tuple(self.inputs)

    def output_specs(self) -> tuple[TensorSpec, ...]:
        """The artifact's outputs; by default the class's `outputs`."""
        if not self.outputs:
            raise InputError(f"recipe {self.name!r} declares no outputs; set `outputs = (TensorSpec(...), ...)` "
                             "on the class (or define output_specs)")
        return tuple(self.outputs)

    def tolerances(self) -> dict[str, Tolerance]:
        """Per-output tolerances that differ from the defaults (default_tolerance of the output's
        dtype: torch.testing's for floats, exact for the rest). Say why in a comment."""
        return {}

    def output_tolerances(self) -> dict[str, Tolerance]:
        """The tolerance of every output: tolerances() over the dtype defaults. What parity uses."""
        table = {spec.name: default_tolerance(spec.dtype) for spec in self.output_specs()}
        table.update(self.tolerances())
        return table

    def source(self) -> Source | None:
        """What the artifact was made from (a name, a path, a hash of the weights files). None:
        the pipeline hashes the captured wrapper's state_dict."""
        return None

    def preprocessing(self) -> dict:
        """Settings baked into the graph (recorded in metadata)."""
        return {}

    # --- what a recipe builds ---------------------------------------------------------------
    def build_original(self) -> Callable[[Case], dict[str, np.ndarray]]:
        """The unwrapped pipeline a user runs today; returns outputs keyed by output name."""
        raise NotImplementedError(f"recipe {self.name!r} must define build_original()")

    def build_wrapper(self, fmt: str = "onnx"):
        """The export-friendly module (torch.nn.Module) captured by the exporters. A recipe whose
        wrapper is the same for every format may define build_wrapper(self) without `fmt`."""
        raise NotImplementedError(f"recipe {self.name!r} must define build_wrapper()")

    def wrapper_for(self, fmt: str):
        """build_wrapper(fmt), or build_wrapper() when the recipe's takes no format."""
        if len(inspect.signature(self.build_wrapper).parameters) == 0:
            return self.build_wrapper()
        return self.build_wrapper(fmt)

    def exporter(self, fmt: str) -> str:
        """Which exporter module (exportable.exporters.<name>) captures `fmt`."""
        return fmt

    def onnx_around(self, model, opset: int):
        """The captured model inside a graph the recipe builds around it, before the pre/post graphs
        are merged (e.g. a decoding Loop around one decoder step); by default the model itself."""
        return model

    def onnx_preprocessor(self, opset: int):
        """Optional ONNX graph (at `opset`) merged in front of the captured model (e.g. a tokenizer)."""
        return None

    def onnx_postprocessor(self, opset: int):
        """Optional ONNX graph (at `opset`) merged behind the captured model: its inputs are model
        outputs of the same name, its outputs come after the model's (e.g. ids -> label strings)."""
        return None

    def example_case(self) -> Case:
        """The case the wrapper is captured with; validation cases must use other shapes."""
        raise NotImplementedError(f"recipe {self.name!r} must define example_case()")

    def validation_cases(self) -> list[Case]:
        """The cases the artifact is proven on against build_original()."""
        raise NotImplementedError(f"recipe {self.name!r} must define validation_cases()")

    def feed(self, case: Case, fmt: str = "onnx") -> dict[str, np.ndarray]:
        """Turn a raw case into the artifact's inputs for `fmt`. By default `case.data` is already
        {input name: array}: it is checked against input_specs(fmt) and fed as is."""
        return checked_feed(self.name, case, self.input_specs(fmt))

    def unsupported(self, case: Case, fmt: str) -> str | None:
        """Why `fmt` cannot run `case` at all (e.g. a traced graph and an empty batch), or None.
        Such cases are listed as N/A in the report and as known failures in the vectors."""
        return None

    def variants_unavailable(self) -> str | None:
        """Why these settings rule out every accelerate variant (--variants), or None."""
        return None

    def format_unavailable(self, fmt: str) -> str | None:
        """Why these settings rule out `fmt`, one of `formats` (e.g. bytes in only in ONNX), or None."""
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

    # --- optional: bench and int8 calibration -----------------------------------------------
    def bench_case(self, length: str, batch: int) -> Case | None:
        """bench's input for one (length: short/long/mixed, batch size), or None: this shape does
        not apply (left out of the table). Not overridden, bench uses its default: texts of exactly
        16/128 tokens for text recipes, else the validation cases' list data, repeated."""
        return None

    def declares_bench_case(self) -> bool:
        return type(self).bench_case is not Recipe.bench_case

    def bench_original(self) -> Callable[[Case], dict[str, np.ndarray]]:
        """The original pipeline as bench times it (override when build_original memoises)."""
        return self.build_original()

    def original_on(self, device: str) -> Callable[[Case], dict[str, np.ndarray]] | None:
        """The original pipeline on `device` (e.g. "cuda") for bench, or None: not supported."""
        return None

    def tokenize(self, texts: list[str]) -> dict[str, np.ndarray] | None:
        """The original tokenizer's ids for `texts` (bench counts real tokens), or None: not text."""
        return None

    @property
    def text_mode(self) -> bool:
        """True when the artifact takes strings (the tokenizer is in the graph)."""
        return False

    def calibration_cases(self) -> list[Case] | None:
        """Cases to calibrate int8 on, or None for the default (the text corpus or the validation cases)."""
        return None

    # --- helpers ----------------------------------------------------------------------------
    def option_path(self, name: str) -> Path | None:
        value = self.settings.get(name)
        return Path(value).expanduser() if value else None

    def describe(self) -> dict:
        return {"recipe": self.name, "options": {k: _plain(v) for k, v in self.settings.items()}}


def checked_feed(recipe: str, case: Case, specs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
    """case.data as the artifact's inputs: a mapping with exactly the inputs' names, each an array
    of the declared dtype and rank (a one-line InputError otherwise)."""
    if not isinstance(case.data, Mapping):
        raise InputError(f"recipe {recipe!r} case {case.name!r}: data is a {type(case.data).__name__}; "
                         f"make it a dict {{input name: array}} or define feed()")
    names = [s.name for s in specs]
    if set(case.data) != set(names):
        raise InputError(f"recipe {recipe!r} case {case.name!r}: data has {sorted(case.data)}, the inputs are "
                         f"{names}; give exactly those keys or define feed()")
    feed = {}
    for spec in specs:
        array = np.asarray(case.data[spec.name], dtype=object if spec.dtype == "string" else None)
        got = "string" if array.dtype.kind in "OUS" else str(array.dtype)
        if got != spec.dtype or array.ndim != len(spec.shape):
            raise InputError(f"recipe {recipe!r} case {case.name!r}: input {spec.name!r} is {got} of rank "
                             f"{array.ndim}, declared {spec.dtype} of rank {len(spec.shape)}; "
                             f"e.g. np.asarray(..., dtype='{spec.dtype}')")
        feed[spec.name] = array
    return feed


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    return value
