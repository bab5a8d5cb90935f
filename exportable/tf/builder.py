"""exportable.text's GraphBuilder verbs (`op`, `const`, `opset`) on top of a tf2onnx graph.

The tokenizer stages in exportable.text (normalisation table, NUL handling, WordPiece [UNK]
collapsing) are written against that small interface; with this adapter the same functions
build their nodes straight into a graph that tf2onnx is converting, instead of being rewritten.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

ML = "ai.onnx.ml"


class Tf2onnxBuilder:
    """Names the caller gives are local; each becomes `scope/name` in the tf2onnx graph. Names
    the builder did not create (tensors already in the graph) pass through unchanged."""

    def __init__(self, graph, scope: str):
        self.graph = graph
        self.scope = scope
        self.opset = graph.opset
        self._local: dict[str, str] = {}

    def name(self, local: str) -> str:
        return self._local.get(local, local)

    def _claim(self, local: str) -> str:
        if local in self._local:
            raise ValueError(f"graph value {local!r} defined twice in {self.scope}")
        self._local[local] = f"{self.scope}/{local}"
        return self._local[local]

    def const(self, name: str, value, dtype=None) -> str:
        text = isinstance(value, str) or (isinstance(value, (list, tuple)) and any(isinstance(v, str) for v in value))
        array = np.array(value, dtype=dtype if dtype is not None else (object if text else None))
        real = self._claim(name)
        self.graph.make_const(real, array)
        return name

    def op(self, op_type: str, inputs: list[str], outputs, domain: str = "", types=None, **attrs):
        names = [outputs] if isinstance(outputs, str) else list(outputs)
        inputs = [self.name(i) for i in inputs]  # before claiming: an output may reuse an external name
        real = [self._claim(n) for n in names]
        dtypes = shapes = None
        if types is not None:
            dtypes = [elem for elem, _ in types]
            shapes = [[-1] * rank for _, rank in types]
        elif domain == ML:
            # onnx's LabelEncoder shape inference can crash on a partly typed graph; the output type
            # is fixed by the attributes anyway.
            elem = TensorProto.STRING if "values_strings" in attrs else TensorProto.INT64
            dtypes, shapes = [elem], [self.graph.get_shape(inputs[0])]
        self.graph.make_node(op_type, inputs, attr=attrs, outputs=real, name=real[0],
                             domain=domain, dtypes=dtypes, shapes=shapes)
        return outputs
