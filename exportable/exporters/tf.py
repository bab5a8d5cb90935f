"""TensorFlow capture: a SavedModel with a string signature -> ONNX via tf2onnx and our
handlers (exportable.tf), same verb as the other exporters.

`module` is the SavedModel folder; `example` is unused (the signature fixes the graph).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .. import graph
from ..recipe import TensorSpec
from ..tf import convert_savedmodel
from . import Capture


def export(module, example, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], path: Path,
           opset: int = 18) -> Capture:
    model = convert_savedmodel(Path(module), opset=opset)
    by_name = {o.name: i for i, o in enumerate(model.graph.output)}
    # Keep the recipe's output order (the signature's dict order may differ).
    ordered = [model.graph.output[by_name[s.name]] for s in outputs if s.name in by_name]
    if len(ordered) == len(model.graph.output):
        del model.graph.output[:]
        model.graph.output.extend(ordered)
    graph.apply_specs(model, inputs, outputs)
    return Capture(path, "tf2onnx", model)
