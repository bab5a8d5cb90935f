"""The variants of an ONNX artifact, as one table.

A variant is a name (the one spelling used by the CLI, the file, report.json, the vectors and
bench JSON), the file it is written to, the transforms that make it from the artifact's
model.onnx, the tolerance it is verified with, and the execution providers it runs on. The
export (api's accelerate stage), `verify`, `bench`, the vectors and the report all read this
table. Adding a variant is one row below plus its transform (docs/architecture.md shows one).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import onnx

from ..errors import InputError
from ..recipe import Tolerance
from .calibrate import CALIBRATION_BATCHES, calibration_cases
from .common import Transformed, annotate
from .fp16 import to_fp16
from .fusion import fuse, standardized
from .int8 import quantize_int8
from .loop_weights import quantize_loop_int4, quantize_loop_int8

CPU = ("CPUExecutionProvider",)
CUDA = ("CUDAExecutionProvider", "CPUExecutionProvider")
INT8_MIN_COSINE = 0.99
FP16_MIN_COSINE = 0.9995
# Generated ids under a lossy variant: the fraction of prompts whose first new token (the argmax
# of the prompt's logits) agrees with the original's, over all validation prompts. int8's error
# in the logits is small next to their spread (prompt logits' cosine vs fp32 >= 0.9997 on the
# random default GPT-Neo, whose top-2 margins are a quarter of the logits' std): it flipped no
# first token there. int4's is ~10x larger (cosine 0.988): a flat random LM keeps 73 % of its
# first tokens, a trained one (examples/trained_tiny_lm.py) more; a variant whose weights are
# broken agrees by chance only (~0).
INT8_MIN_FIRST_TOKENS = 0.9
INT4_MIN_FIRST_TOKENS = 0.5


@dataclass
class Context:
    """What a transform may need besides the model: the recipe (its calibration inputs and
    feed), ONNX Runtime threads, how many calibration batches, and where progress goes."""
    recipe: object  # exportable.recipe.Recipe
    threads: int | None = None
    calibration_batches: int = CALIBRATION_BATCHES
    progress: Callable[[str], None] = field(default=lambda _m: None)


@dataclass(frozen=True)
class Transform:
    """`run(model, context)` returns a new model (never changes its input) and what it did,
    which is recorded in report.json and in the model's metadata under `metadata_key`."""
    name: str
    run: Callable[[onnx.ModelProto, Context], Transformed]
    metadata_key: str


# --- the transforms ---------------------------------------------------------------------------

def _fuse(model, _context: Context) -> Transformed:
    return fuse(model, standard=False)


def _standard_attention(model, _context: Context) -> Transformed:
    return standardized(Transformed(model))


def _calibration_feeds(context: Context) -> list[dict]:
    cases = calibration_cases(context.recipe, limit=context.calibration_batches)
    return [context.recipe.feed(c, "onnx") for c in cases]


def _dynamic_int8(model, context: Context) -> Transformed:
    return quantize_int8(model, _calibration_feeds(context), threads=context.threads, progress=context.progress)


def _static_int8(model, context: Context) -> Transformed:
    # The ranges come from every calibration batch, the search from CALIBRATION_BATCHES of them:
    # a static range is fixed for good, and from 8 of the corpus's batches it clipped a text of
    # another (sentence_bert: cosine 0.985 on one validation batch, with 12 of 36 GEMMs kept fp32).
    every = calibration_cases(context.recipe)
    return quantize_int8(model, _calibration_feeds(context), threads=context.threads, static=True,
                         range_feeds=[context.recipe.feed(c, "onnx") for c in every], progress=context.progress)


def _loop_int8(model, _context: Context) -> Transformed:
    return quantize_loop_int8(model)


def _loop_int4(model, _context: Context) -> Transformed:
    return quantize_loop_int4(model)


def _fp16(model, _context: Context) -> Transformed:
    converted, detail = to_fp16(model)
    return Transformed(converted, detail)


FUSE = Transform("fuse", _fuse, "exportable.optimization")
STANDARD_ATTENTION = Transform("standard-attention", _standard_attention, "exportable.optimization")
DYNAMIC_INT8 = Transform("int8", _dynamic_int8, "exportable.quantization")
STATIC_INT8 = Transform("static-int8", _static_int8, "exportable.quantization")
FP16 = Transform("fp16", _fp16, "exportable.fp16")
LOOP_INT8 = Transform("loop-int8", _loop_int8, "exportable.quantization")
LOOP_INT4 = Transform("loop-int4", _loop_int4, "exportable.quantization")


# --- the tolerances ---------------------------------------------------------------------------

def same_tolerances(tolerances: Mapping[str, Tolerance]) -> dict[str, Tolerance]:
    return dict(tolerances)


def cosine_tolerances(min_cosine: float, min_first_tokens: float = 1.0
                      ) -> Callable[[Mapping[str, Tolerance]], dict[str, Tolerance]]:
    """A lossy variant is judged by cosine per row on every float output that has a cosine bar;
    absolute differences are no meaningful bar there (atol unbounded). Token outputs (generated
    ids, their text) are judged by token agreement (Tolerance.token_agreement), first tokens
    gated at `min_first_tokens`. Other exact outputs (labels) stay exact."""
    def lossy(tol: Tolerance) -> Tolerance:
        if tol.tokens:
            return tol.token_agreement(min_first_tokens)
        if tol.exact or tol.min_cosine is None:
            return tol
        return Tolerance(atol=float("inf"), rtol=0.0, min_cosine=min_cosine)

    def tolerances(fp32: Mapping[str, Tolerance]) -> dict[str, Tolerance]:
        return {name: lossy(tol) for name, tol in fp32.items()}

    return tolerances


int8_tolerances = cosine_tolerances(INT8_MIN_COSINE, INT8_MIN_FIRST_TOKENS)
int4_tolerances = cosine_tolerances(INT8_MIN_COSINE, INT4_MIN_FIRST_TOKENS)
fp16_tolerances = cosine_tolerances(FP16_MIN_COSINE)


# --- the table --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Variant:
    name: str
    file: str
    transforms: tuple[Transform, ...]
    tolerances: Callable[[Mapping[str, Tolerance]], dict[str, Tolerance]]
    providers: tuple[str, ...]
    description: str
    # "artifact": made from model.onnx; "ids": from the ids-in capture of a text recipe (bench
    # only: what the in-graph tokenizer costs), not an export option
    base: str = "artifact"
    # the transforms for a generation artifact (a recipe that generates_text: its step's weights
    # sit in a decoding Loop, which `transforms` do not see); empty: not made for one
    decoding: tuple[Transform, ...] = ()

    def chain(self, recipe) -> tuple[Transform, ...]:
        """The transforms that make this variant of `recipe`'s artifact (empty: none do)."""
        return self.decoding if recipe.generates_text else self.transforms

    def made_for(self, recipe) -> bool:
        return bool(self.chain(recipe))


VARIANTS = (
    Variant("onnx-optimized", "model.optimized.onnx", (FUSE, STANDARD_ATTENTION), same_tolerances, CPU,
            "fused graph: opset-23 Attention, Add + LayerNorm, BiasGelu (fp32)"),
    Variant("onnx-int8", "model.int8.onnx", (FUSE, STANDARD_ATTENTION, DYNAMIC_INT8), int8_tolerances, CPU,
            f"fused + accuracy-aware dynamic int8, cosine >= {INT8_MIN_COSINE} (generation: the decoding Loop's "
            f"MatMuls, first tokens agree on >= {INT8_MIN_FIRST_TOKENS:.0%} of prompts)", decoding=(LOOP_INT8,)),
    Variant("onnx-int8-static", "model.int8-static.onnx", (FUSE, STANDARD_ATTENTION, STATIC_INT8), int8_tolerances,
            CPU, f"fused + static int8 (activation ranges fixed at calibration), cosine >= {INT8_MIN_COSINE}"),
    Variant("onnx-fp16", "model.fp16.onnx", (FUSE, FP16), fp16_tolerances, CUDA,
            f"fused + fp16 (GPU), cosine >= {FP16_MIN_COSINE}"),
    Variant("onnx-ids-optimized", "model.ids.optimized.onnx", (FUSE, STANDARD_ATTENTION), same_tolerances, CPU,
            "HF tokenizer in Python + ids-in fused graph (fp32)", base="ids"),
    Variant("onnx-int4", "model.int4.onnx", (), int4_tolerances, CPU,
            f"generation: the decoding Loop's MatMuls as 4-bit MatMulNBits (blocks of 32), first tokens agree on "
            f">= {INT4_MIN_FIRST_TOKENS:.0%} of prompts", decoding=(LOOP_INT4,)),
)
BY_NAME = {v.name: v for v in VARIANTS}
EXPORT_VARIANTS = tuple(v.name for v in VARIANTS if v.base == "artifact")


def variant(name: str) -> Variant:
    if name not in BY_NAME:
        raise InputError(f"unknown variant {name!r}; choose from: {', '.join(BY_NAME)}")
    return BY_NAME[name]


def export_variants(names: Sequence[str], recipe=None) -> list[Variant]:
    """The export's variants, in table order, each named once; one made from another's ids-in
    capture (bench only), or one not made for `recipe`'s kind of artifact, is refused."""
    chosen = [variant(n) for n in names]
    why_not = recipe.variants_unavailable() if chosen and recipe is not None else None
    if why_not:
        raise InputError(f"--variants {','.join(names)}: {why_not}")
    for v in chosen:
        if v.base != "artifact":
            raise InputError(f"variant {v.name} is bench-only; export one of: {', '.join(EXPORT_VARIANTS)}")
        if recipe is not None and not v.made_for(recipe):
            fits = [n for n in EXPORT_VARIANTS if BY_NAME[n].made_for(recipe)]
            raise InputError(f"variant {v.name} is not made for {recipe.name}'s artifact; choose from: "
                             f"{', '.join(fits) or 'none'}")
    return [v for v in VARIANTS if v in chosen]


class Builder:
    """Builds variants from one base model, each transform chain's prefix once: onnx-int8 starts
    from onnx-optimized's model when both are asked for, as it would alone."""
    def __init__(self, base: onnx.ModelProto, context: Context):
        self.context = context
        self._done: dict[tuple[str, ...], tuple[onnx.ModelProto, dict]] = {(): (base, {})}

    def build(self, variant: Variant) -> tuple[onnx.ModelProto, dict]:
        """(model, {transform name: what it did})."""
        key: tuple[str, ...] = ()
        chain = variant.chain(self.context.recipe)
        if not chain:
            raise InputError(f"variant {variant.name} is not made for {self.context.recipe.name}'s artifact")
        for transform in chain:
            model, details = self._done[key]
            key += (transform.name,)
            if key not in self._done:
                step = transform.run(model, self.context)
                recorded = {k: v for t in chain[:len(key) - 1] if t.metadata_key == transform.metadata_key
                            for k, v in details.get(t.name, {}).items()}
                annotate(step.model, transform.metadata_key, {**recorded, **step.detail})
                self._done[key] = (step.model, {**details, transform.name: step.detail})
        return self._done[key]

