"""Building ONNX graphs by hand with deterministic names: the one helper behind the tokenizer
graphs (exportable.text), the image guards (exportable.blocks.image_io) and the nodes the TF
conversion adds (exportable.tf.builder).

    names = Names("decode_")        claim(name) refuses a name defined twice; fresh(hint) -> "decode_<hint>_<n>"
    b = GraphBuilder(opset)         const / constant / op / graph / model; b.child() builds a subgraph
    as_array(value, dtype)          python values, strings included, -> numpy (strings as object)
    output_types(...)               the rule for custom-domain outputs: each needs (elem_type, rank)

A graph built twice is byte-identical: names come from the caller or from a counter owned by
the builder (never a global one whose state depends on what was built before). This module is
a leaf: it imports nothing from exportable.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

CONTRIB = "ai.onnx.contrib"  # onnxruntime-extensions
EXTENSIONS = "com.microsoft.extensions"  # onnxruntime-extensions' image ops (DecodeImage)
ML = "ai.onnx.ml"
MS = "com.microsoft"  # implemented by ONNX Runtime itself
DOMAIN_VERSIONS = {CONTRIB: 1, EXTENSIONS: 1, ML: 2, MS: 1}
STRING, INT64 = onnx.TensorProto.STRING, onnx.TensorProto.INT64
SPLIT_TYPES = ((STRING, 1), (INT64, 1), (INT64, 1), (INT64, 1))  # StringRegexSplitWithOffsets, WordpieceTokenizer


class Names:
    """The value names of one model (its subgraphs included: ONNX wants them unique across all)."""

    def __init__(self, prefix: str = ""):
        self.prefix = prefix
        self._taken: set[str] = set()
        self._count = 0

    def claim(self, name: str) -> str:
        if name in self._taken:
            raise ValueError(f"graph value {name!r} defined twice")
        self._taken.add(name)
        return name

    def fresh(self, hint: str) -> str:
        """prefix + hint + a counter, not yet claimed (the caller claims it when it defines it;
        a subgraph's inputs are never claimed, yet must not be handed out again)."""
        while True:
            self._count += 1
            name = f"{self.prefix}{hint}_{self._count}"
            if name not in self._taken:
                return name


def as_array(value, dtype=None) -> np.ndarray:
    """numpy's own conversion, except that text becomes an object array (numpy would pick a
    fixed-width unicode dtype, which onnx cannot store)."""
    if dtype is None and _is_text(value):
        dtype = object
    return np.array(value, dtype=dtype)


def tensor(name: str, value, dtype=None) -> onnx.TensorProto:
    return numpy_helper.from_array(as_array(value, dtype), name)


def output_types(op_type: str, outputs: list[str], domain: str, types) -> list:
    """(elem_type, rank) per output, required for custom-op outputs: onnx's own shape inference
    cannot see through them, and its LabelEncoder inference segfaults on an input of unknown
    type (onnx 1.23). ai.onnx.ml ops have onnx schemas, so they may go untyped."""
    if domain and domain != ML and (types is None or len(types) != len(outputs)):
        raise ValueError(f"{op_type}: give (elem_type, rank) for each of its outputs {outputs}")
    return list(types or ())


def opset_imports(opset: int, domains) -> list[onnx.OperatorSetIdProto]:
    return [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, DOMAIN_VERSIONS[d]) for d in sorted(domains)]


def make_model(graph: onnx.GraphProto, opset: int, domains=(), **fields) -> onnx.ModelProto:
    """`fields`: other ModelProto fields (doc_string, ...)."""
    opsets = opset_imports(opset, domains)
    # The lowest IR version that carries these opsets: onnx's newest default can be newer than
    # the installed ONNX Runtime accepts ("Unsupported model IR version: 14, max ... 13").
    ir_version = helper.find_min_ir_version_for(opsets, ignore_unknown=True)
    return helper.make_model(graph, opset_imports=opsets, ir_version=ir_version, producer_name="exportable", **fields)


class GraphBuilder:
    """Nodes, initializers and value types of one graph. Every value name is claimed once, so
    a typo that reuses a name fails here instead of silently rewiring the graph."""

    def __init__(self, opset: int, names: Names | None = None, domains: set[str] | None = None):
        self.opset = opset
        self.names = names if names is not None else Names()
        self.domains = domains if domains is not None else set()
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.value_info: list[onnx.ValueInfoProto] = []

    def child(self) -> GraphBuilder:
        """A subgraph (If/Loop body): its own nodes, the model's names and custom domains."""
        return GraphBuilder(self.opset, self.names, self.domains)

    def const(self, name: str, value, dtype=None) -> str:
        self.initializers.append(tensor(self.names.claim(name), value, dtype))
        return name

    def constant(self, name: str, value, dtype=None) -> str:
        """The same value as a Constant node, which a subgraph (If/Loop body) can hold as its own."""
        self.names.claim(name)
        self.nodes.append(helper.make_node("Constant", [], [name], name=name, value=tensor(name, value, dtype)))
        return name

    def op(self, op_type: str, inputs: list[str], outputs: str | list[str], domain: str = "", types=None,
           name: str | None = None, **attrs):
        """Add one node, named after its first output unless `name` is given; returns the output
        name(s). `types`: (elem_type, rank) per output, see output_types."""
        names = [outputs] if isinstance(outputs, str) else list(outputs)
        for out in names:
            self.names.claim(out)
        for out, (elem_type, rank) in zip(names, output_types(op_type, names, domain, types)):
            self.value_info.append(helper.make_tensor_value_info(out, elem_type, [None] * rank))
        if domain:
            self.domains.add(domain)
        self.nodes.append(helper.make_node(op_type, inputs, names, name=name or names[0], domain=domain, **attrs))
        return outputs

    def graph(self, name: str, inputs, outputs, doc: str = "") -> onnx.GraphProto:
        return helper.make_graph(self.nodes, name, inputs, outputs, initializer=self.initializers, doc_string=doc,
                                 value_info=self.value_info)

    def model(self, name: str, inputs, outputs, doc: str = "", **fields) -> onnx.ModelProto:
        """`doc` documents the graph; `fields` go to the ModelProto (see make_model)."""
        return make_model(self.graph(name, inputs, outputs, doc), self.opset, self.domains, **fields)


def _is_text(value) -> bool:
    if isinstance(value, str):
        return True
    if isinstance(value, (list, tuple)):
        return any(isinstance(v, str) for v in value)
    return False
