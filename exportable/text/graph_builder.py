"""A tiny ONNX graph builder: every value is named by the caller, so a graph built twice is
byte-identical (no global counters whose state depends on what was built before)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

CONTRIB = "ai.onnx.contrib"  # onnxruntime-extensions
ML = "ai.onnx.ml"
MS = "com.microsoft"  # implemented by ONNX Runtime itself
DOMAIN_VERSIONS = {CONTRIB: 1, ML: 2, MS: 1}
STRING, INT64 = onnx.TensorProto.STRING, onnx.TensorProto.INT64
SPLIT_TYPES = ((STRING, 1), (INT64, 1), (INT64, 1), (INT64, 1))  # StringRegexSplitWithOffsets, WordpieceTokenizer


class GraphBuilder:
    def __init__(self, opset: int):
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.domains: set[str] = set()
        self.value_info: list[onnx.ValueInfoProto] = []
        self._names: set[str] = set()

    def _claim(self, name: str) -> str:
        if name in self._names:
            raise ValueError(f"graph value {name!r} defined twice")
        self._names.add(name)
        return name

    def const(self, name: str, value, dtype=None) -> str:
        array = np.array(value, dtype=dtype if dtype is not None else (object if _is_text(value) else None))
        self.initializers.append(numpy_helper.from_array(array, self._claim(name)))
        return name

    def op(self, op_type: str, inputs: list[str], outputs: str | list[str], domain: str = "", types=None, **attrs):
        """Add one node named after its first output; returns the output name(s).

        `types`: (elem_type, rank) per output, required for custom-op outputs: onnx's own shape
        inference cannot see through them, and its LabelEncoder inference segfaults on an input
        of unknown type (onnx 1.23).
        """
        names = [outputs] if isinstance(outputs, str) else list(outputs)
        for name in names:
            self._claim(name)
        if domain and domain != ML:
            if types is None or len(types) != len(names):
                raise ValueError(f"{op_type}: give (elem_type, rank) for each of its outputs {names}")
        for name, (elem_type, rank) in zip(names, types or ()):
            self.value_info.append(helper.make_tensor_value_info(name, elem_type, [None] * rank))
        if domain:
            self.domains.add(domain)
        self.nodes.append(helper.make_node(op_type, inputs, names, name=names[0], domain=domain, **attrs))
        return outputs

    def model(self, name: str, inputs, outputs, doc: str = "") -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, initializer=self.initializers, doc_string=doc,
                                  value_info=self.value_info)
        opsets = [helper.make_opsetid("", self.opset)]
        opsets += [helper.make_opsetid(d, DOMAIN_VERSIONS[d]) for d in sorted(self.domains)]
        # The lowest IR version that carries these opsets: onnx's newest default can be newer than
        # the installed ONNX Runtime accepts ("Unsupported model IR version: 14, max ... 13").
        ir_version = helper.find_min_ir_version_for(opsets, ignore_unknown=True)
        return helper.make_model(graph, opset_imports=opsets, ir_version=ir_version, producer_name="exportable")


def _is_text(value) -> bool:
    if isinstance(value, str):
        return True
    if isinstance(value, (list, tuple)):
        return any(isinstance(v, str) for v in value)
    return False
