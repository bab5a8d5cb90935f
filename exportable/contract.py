"""Checks that a recipe keeps its own contract before anything is captured or written.

The wrapper's eager outputs on the capture example must be what the recipe declares (count,
names, dtypes, ranks): the exporters name outputs by position (graph.rename_outputs), so a
wrapper that returns them in another order, or one too few, would otherwise produce a
mislabelled artifact or a parity table that blames the wrong output.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .errors import InputError
from .recipe import TensorSpec

FIX = "make build_wrapper() return exactly the declared outputs, in order (or fix the recipe's outputs)"


def wrapper_outputs(module, feed: Mapping[str, Any], inputs: Sequence[TensorSpec]) -> list[tuple[str | None, Any]]:
    """Run a torch module eagerly on `feed` (numpy arrays), passed in `inputs` order as the
    exporters pass them, and return its outputs as (name or None, tensor): a dict keeps its keys,
    a tensor/tuple/list has no names."""
    args = [torch.from_numpy(np.array(feed[s.name])) for s in inputs]  # a copy: from_numpy warns on read-only
    with torch.no_grad():
        result = module(*args)
    if isinstance(result, Mapping):
        return list(result.items())
    if isinstance(result, (tuple, list)):
        return [(None, r) for r in result]
    return [(None, result)]


def check_wrapper_outputs(recipe_name: str, module, feed: Mapping[str, Any], inputs: Sequence[TensorSpec],
                          specs: Sequence[TensorSpec]) -> None:
    """A one-line InputError when the wrapper's outputs do not match `specs`."""
    if not isinstance(module, torch.nn.Module):
        return  # a TF function or a prebuilt graph: its exporter checks it
    outputs = wrapper_outputs(module, feed, inputs)
    declared = [s.name for s in specs]
    where = f"recipe {recipe_name!r}: the wrapper"
    if len(outputs) != len(specs):
        raise InputError(f"{where} returns {len(outputs)} output(s), the recipe declares {len(specs)} "
                         f"({', '.join(declared)}); {FIX}")
    for (name, value), spec in zip(outputs, specs):
        if name is not None and name != spec.name:
            raise InputError(f"{where} returns {[n for n, _ in outputs]}, the recipe declares {declared}; {FIX}")
        if spec.dtype == "string" and isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            continue  # TorchScript has no string tensors: a List[str] stands for a string output
        if not isinstance(value, torch.Tensor):
            raise InputError(f"{where}'s output {spec.name!r} is a {type(value).__name__}, not a tensor; {FIX}")
        dtype = str(value.dtype).removeprefix("torch.")
        if dtype != spec.dtype:
            raise InputError(f"{where}'s output {spec.name!r} is {dtype}, declared {spec.dtype}; "
                             f"cast it in the wrapper (e.g. .to(torch.{spec.dtype})) or declare {dtype}")
        if value.dim() != len(spec.shape):
            raise InputError(f"{where}'s output {spec.name!r} has rank {value.dim()} (shape "
                             f"{tuple(value.shape)}), declared rank {len(spec.shape)} {spec.shape}; {FIX}")
