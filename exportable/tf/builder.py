"""exportable.onnx_builder's GraphBuilder verbs (`op`, `const`, `opset`) on top of a tf2onnx graph.

The tokenizer stages in exportable.text (normalisation table, NUL handling, WordPiece [UNK]
collapsing) are written against that small interface; with this adapter the same functions
build their nodes straight into a graph that tf2onnx is converting, instead of being rewritten.
Naming, value conversion and the output-typing rule are onnx_builder's; only the node and
constant creation go through tf2onnx (which keeps its own node list and types).
"""

from __future__ import annotations

from onnx import TensorProto

from ..onnx_builder import ML, Names, as_array, output_types


class Tf2onnxBuilder:
    """Names the caller gives are local; each becomes `scope/name` in the tf2onnx graph. Names
    the builder did not create (tensors already in the graph) pass through unchanged."""

    def __init__(self, graph, scope: str):
        self.graph = graph
        self.scope = scope
        self.opset = graph.opset
        self._names = Names()
        self._local: dict[str, str] = {}

    def name(self, local: str) -> str:
        return self._local.get(local, local)

    def _claim(self, local: str) -> str:
        self._local[local] = self._names.claim(f"{self.scope}/{local}")
        return self._local[local]

    def const(self, name: str, value, dtype=None) -> str:
        self.graph.make_const(self._claim(name), as_array(value, dtype))
        return name

    def op(self, op_type: str, inputs: list[str], outputs, domain: str = "", types=None, **attrs):
        names = [outputs] if isinstance(outputs, str) else list(outputs)
        inputs = [self.name(i) for i in inputs]  # before claiming: an output may reuse an external name
        real = [self._claim(n) for n in names]
        types = output_types(op_type, names, domain, types)
        dtypes = [elem for elem, _ in types] or None
        shapes = [[-1] * rank for _, rank in types] or None
        if domain == ML and not types:
            # onnx's LabelEncoder shape inference can crash on a partly typed graph; the output type
            # is fixed by the attributes anyway.
            elem = TensorProto.STRING if "values_strings" in attrs else TensorProto.INT64
            dtypes, shapes = [elem], [self.graph.get_shape(inputs[0])]
        self.graph.make_node(op_type, inputs, attr=attrs, outputs=real, name=real[0],
                             domain=domain, dtypes=dtypes, shapes=shapes)
        return outputs
