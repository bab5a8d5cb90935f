"""ONNX capture.

Strategy, chosen deliberately (measured on all-MiniLM-L6-v2, torch 2.14.1):
- `dynamo` (torch.export based) first. It is the maintained exporter, its symbolic shapes are
  checked by torch.export instead of being guessed by a tracer, and it handles batch 0 (the
  legacy export failed there: "Reshape ... requested shape {0,15,-1,32}"). Its graph had 321
  nodes vs 685 for legacy, same speed in ONNX Runtime. Two traps are guarded: it writes
  `model.onnx.data` by default (we keep the proto in memory and save one file ourselves), and
  naming an output `embedding` collided with an internal value ("Duplicate definition of name"),
  so output names are applied afterwards by graph.rename_outputs, which moves clashes aside.
  A model whose weights reach half of external.LIMIT (2 GiB) has them detached before the proto
  is made (`detach_weights`): the proto stays small for every later step, and those over 2 GB
  are saved as model.onnx + model.onnx.data (exportable/external.py).
- `legacy` (TorchScript based) for modules that are already `torch.jit.ScriptModule`s: scripted
  loops (Viterbi) are what it exports as a real ONNX `Loop`, which torch.export cannot capture.
  It is also the fallback when dynamo fails; the report says which one ran and why.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import torch

from .. import external, graph
from ..errors import ExportError
from ..recipe import TensorSpec
from . import Capture, distinct_messages

MIN_OPSET = 17


def max_opset() -> int:
    return onnx.defs.onnx_opset_version()


def _tensors(example: Mapping[str, np.ndarray], inputs: Sequence[TensorSpec]):
    return tuple(torch.from_numpy(np.ascontiguousarray(example[s.name])) for s in inputs)


def _dynamic_shapes(module, inputs: Sequence[TensorSpec]) -> tuple:
    """Each input's named dims as torch.export.Dim.DYNAMIC, one entry per forward parameter: the
    inputs a `*args` parameter takes are nested as one tuple (torch.export matches the signature;
    a flat tuple failed: "Detected mismatch between the structure of `inputs` and `dynamic_shapes`")."""
    dims = [{i: torch.export.Dim.DYNAMIC for i, d in enumerate(spec.shape) if isinstance(d, str)} for spec in inputs]
    params = list(inspect.signature(module.forward).parameters.values())
    if not any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return tuple(dims)
    fixed = sum(p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD) for p in params)
    return (*dims[:fixed], tuple(dims[fixed:]))


def _exported_program(module, args, dynamic):
    """torch.export of `module` with backed sizes reasoned about normally, for a module that sets
    `size_oblivious_export = False`. torch.onnx.export traces under
    torch.fx.experimental._config.backed_size_oblivious=True (so that a sample dim of 0 or 1 is not
    specialized): a slice by symbolic bounds then keeps its Min/Max size instead of guarding, and a
    model whose layers slice with the previous layer's sizes nests that expression once per layer.
    GPT-Neo's attention slices its causal `bias` buffer by [key_len - query_len : key_len] and the
    result's size becomes the hidden states' length: capture took 30 s at 2 layers, 75 s at 4,
    250 s at 6 and did not end at 10 (sympy simplifying the nested Min/Max). Without the flag the
    slice guards `past + new <= n_positions` and sizes stay `new`: 12 layers in 4 s. Such a
    module's capture sample must keep its dynamic dims off 0 and 1."""
    return torch.export.export(module, args, dynamic_shapes=dynamic, strict=False)


def _dynamo(module, args, inputs, outputs, opset, detached):
    dynamic = _dynamic_shapes(module, inputs)
    if not getattr(module, "size_oblivious_export", True):
        module = _exported_program(module, args, dynamic)
    # The dynamo exporter prints progress lines on stdout; they are not ours to show.
    with contextlib.redirect_stdout(io.StringIO()):
        program = torch.onnx.export(
            module, args, dynamo=True, external_data=False, opset_version=opset, verbose=False,
            input_names=[s.name for s in inputs], dynamic_shapes=dynamic, optimize=True,
            # A module with custom ops names their ONNX translations (blocks.detection: NMS).
            custom_translation_table=getattr(module, "onnx_translations", None),
        )
    detach_weights(program.model, detached)
    return program.model_proto


def detach_weights(model, detached: external.Detached) -> None:
    """Hold the weights of a big onnx_ir model out of its proto (views of the torch tensors, no
    copy): model_proto would otherwise copy every weight into one message that protobuf cannot
    serialise at 2 GiB, and inlining, merging and checking all serialise it. Models whose weights
    are under half of external.LIMIT are left as they are."""
    import onnx_ir as ir  # noqa: PLC0415  # torch.onnx's IR, imported with it

    values = [v for v in model.graph.initializers.values() if v.const_value is not None]
    if sum(v.const_value.nbytes for v in values) < external.LIMIT // 2:
        return
    for value in values:
        tensor = value.const_value
        if tensor.nbytes < external.MIN_BYTES or tensor.dtype == ir.DataType.STRING:
            continue
        key = detached.add(tensor.numpy())
        value.const_value = ir.ExternalTensor(key, offset=0, length=tensor.nbytes, dtype=tensor.dtype,
                                              shape=tensor.shape, name=value.name)


def _legacy(module, args, inputs, outputs, opset, detached):
    buffer = io.BytesIO()
    axes = {s.name: {i: d for i, d in enumerate(s.shape) if isinstance(d, str)} for s in (*inputs, *outputs)}
    torch.onnx.export(
        module, args, buffer, dynamo=False, opset_version=opset, input_names=[s.name for s in inputs],
        output_names=[s.name for s in outputs], dynamic_axes=axes, do_constant_folding=True,
    )
    return onnx.load_model_from_string(buffer.getvalue())


def _reason(exc: Exception) -> str:
    """The informative line of an exporter error (torch.export's first line is a banner)."""
    text = f"{exc.__cause__ or exc}"
    lines = [l.strip() for l in text.splitlines() if l.strip() and "step 1/3" not in l]
    return f"{type(exc).__name__}: {' '.join(lines[:2])[:400]}"


STRATEGIES = {"dynamo": _dynamo, "legacy": _legacy}


def strategies_for(module) -> tuple[str, ...]:
    if isinstance(module, torch.jit.ScriptModule):
        return ("legacy",)
    return ("dynamo", "legacy")


def export(module, example, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], path: Path,
           opset: int = 18) -> Capture:
    """Capture `module` to an in-memory ONNX model with the public names and dims applied.

    Saving is done by the caller after assembly (merging a preprocessor, metadata)."""
    args = _tensors(example, inputs)
    tried: dict[str, str] = {}
    detached = external.Detached()
    for name in strategies_for(module):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                model = STRATEGIES[name](module, args, inputs, outputs, opset, detached)
            except Exception as exc:  # a strategy failing is a result, the next one is tried
                tried[name] = _reason(exc)
                detached.clear()
                continue
        graph.rename_inputs(model, [s.name for s in inputs])
        graph.rename_outputs(model, [s.name for s in outputs])
        graph.apply_specs(model, inputs, outputs)
        return Capture(path, name, model, distinct_messages(caught), tried, detached or None)
    raise ExportError("ONNX capture failed with every strategy: "
                      + "; ".join(f"{k}: {v}" for k, v in tried.items()))
