"""fp16 for the GPU path (`bench --device cuda`): the model's float compute in fp16, its edges
in fp32. Inputs and outputs keep their types; string, index and custom-domain work is untouched.

Why not onnxruntime.transformers.float16.convert_float_to_float16 (what to_fp16 used before):
- with its shape inference on, onnx.shape_inference crashed the process (segfault) on our
  text-in graph;
- with it off, it cannot see intermediate types and bound a Clip to both types: "Type parameter
  (T) of Optype (Clip) bound to different types (tensor(float) and tensor(float16))": the fp16
  file loaded nowhere, so the GPU run would have reported it failed;
- handed the types as value_info, it cast blocked nodes' fp32 outputs to fp16 and back (a lossy
  round trip in the pooling) and named two Casts alike ("two nodes with same node name").

Here the types come from ONNX Runtime itself (a session lists every value's type at load, no
run), and each value crosses at most once per direction, through one Cast named after it.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from .. import graph, runtime
from ..graph import drop_unused_initializers, subgraph_reads

STANDARD_DOMAINS = ("", "ai.onnx", "com.microsoft")
# Ops that stay fp32: index, shape and selection work, big reductions (sums lose precision in
# fp16), embedding tables (Gather), and ops whose float inputs must be float (Resize's scales).
KEEP_FP32 = frozenset({
    "Constant", "ConstantOfShape", "Range", "CumSum", "Gather", "GatherND", "GatherElements", "Where",
    "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Not", "ReduceSum", "ReduceMean",
    "ReduceL2", "ArgMax", "ArgMin", "TopK", "NonZero", "Compress", "Resize", "NonMaxSuppression",
    "RoiAlign", "Loop", "If", "Scan", "SequenceInsert", "ConcatFromSequence", "SplitToSequence",
})
# Ops that read any input type: they take an fp16 value as it is (no Cast back to fp32 first).
ANY_INPUT = frozenset({"Cast", "Shape", "Size"})
LAYER_NORMS = ("LayerNormalization", "SkipLayerNormalization", "SkipSimplifiedLayerNormalization")
FLOAT, FP16_MIN, FP16_MAX = "tensor(float)", 5.96e-08, 65504.0


def to_fp16(model, *, fp32_tail: bool = True):
    """A copy of `model` with its float compute in fp16. Returns (model, detail).

    fp32_tail: the nodes after the last layer norm stay fp32. In sentence_bert that is the
    pooling and the normalization, whose clamp floors (1e-9, 1e-12) are below fp16's smallest
    value (6e-8), and a mean over up to 512 tokens; they cost nothing next to the encoder."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    types = value_types(out)
    inits = {i.name: i for i in g.initializer}
    tail = _tail_after_last_layer_norm(g) if fp32_tail else set()
    # Nodes are told apart by position: protobuf may hand out a new wrapper object per access,
    # so id() is no identity, and names may be empty.
    half = {i for i, n in enumerate(g.node) if i not in tail and _computes_in_fp16(n, types, inits)}
    half_outputs = {o for i in half for o in g.node[i].output if types.get(o) == FLOAT}
    reads_fp32 = _fp32_readers(g, half, half_outputs)

    nodes, to_half, to_float, new_inits = [], {}, {}, []
    for index, node in enumerate(g.node):
        if index in half:
            for k, name in enumerate(node.input):
                if name in half_outputs:
                    node.input[k] = name + "/fp16"
                elif _is_float(name, types, inits):
                    if name not in to_half:
                        to_half[name] = name + "/to_fp16"
                        if name in inits:
                            new_inits.append(_fp16_initializer(inits[name], to_half[name], numpy_helper))
                        else:
                            nodes.append(helper.make_node("Cast", [name], [to_half[name]], name=to_half[name],
                                                          to=onnx.TensorProto.FLOAT16))
                    node.input[k] = to_half[name]
            for k, name in enumerate(node.output):
                if name in half_outputs:
                    node.output[k] = name + "/fp16"
            _half_attributes(node, numpy_helper)
            nodes.append(node)
            for name in (o for o in list(node.output) if o.endswith("/fp16")):
                original = name[: -len("/fp16")]
                if original in reads_fp32:
                    to_float[original] = name
                    nodes.append(helper.make_node("Cast", [name], [original], name=original + "/to_fp32",
                                                  to=onnx.TensorProto.FLOAT))
        else:
            for k, name in enumerate(node.input):
                if node.op_type in ANY_INPUT and name in half_outputs and name not in to_float:
                    node.input[k] = name + "/fp16"
            nodes.append(node)
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(new_inits)
    drop_unused_initializers(out)  # the fp32 copies only fp16 nodes read
    del g.value_info[:]  # the fp32 types recorded there are stale now; ORT infers them
    return out, {"method": "exportable.half.to_fp16", "fp16_nodes": len(half), "fp32_tail_nodes": len(tail),
                 "fp16_initializers": len(new_inits), "casts_to_fp16": len(to_half) - len(new_inits),
                 "casts_to_fp32": len(to_float), "kept_fp32_ops": sorted(KEEP_FP32)}


def value_types(model) -> dict[str, str]:
    """Every top-level value's type ('tensor(float)', ...), as ONNX Runtime infers it at load.
    onnx.shape_inference is not used: it crashed on the text-in graph (module docstring)."""


    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    seen = {v.name for v in probe.graph.output}
    probe.graph.output.extend(helper.make_empty_tensor_value_info(o) for n in probe.graph.node
                              for o in n.output if o and o not in seen)
    options = runtime.session_options(graph.custom_domains(model), 1)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every value
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return {v.name: v.type for v in (*session.get_inputs(), *session.get_outputs())}


def _is_float(name, types, inits) -> bool:

    if name in inits:
        return inits[name].data_type == TensorProto.FLOAT
    return types.get(name) == FLOAT


def _computes_in_fp16(node, types, inits) -> bool:

    if node.domain not in STANDARD_DOMAINS or node.op_type in KEEP_FP32 or node.op_type in ANY_INPUT:
        return False
    if any(a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) for a in node.attribute):
        return False  # control flow stays fp32
    return any(_is_float(v, types, inits) for v in (*node.input, *node.output) if v)


def _tail_after_last_layer_norm(g) -> set[int]:
    """The positions of the nodes downstream of the last layer norm's output."""
    norms = [i for i, n in enumerate(g.node) if n.op_type in LAYER_NORMS]
    if not norms:
        return set()
    reached, tail = {g.node[norms[-1]].output[0]}, set()
    for index in range(norms[-1] + 1, len(g.node)):
        if any(i in reached for i in g.node[index].input):
            reached.update(g.node[index].output)
            tail.add(index)
    return tail


def _fp32_readers(g, half: set[int], half_outputs) -> set[str]:
    """fp16 values that something still reads in fp32: an fp32 node, a subgraph, a graph output."""
    reads = {o.name for o in g.output} | subgraph_reads(g)
    for index, node in enumerate(g.node):
        if index not in half and node.op_type not in ANY_INPUT:
            reads.update(node.input)
    return reads & half_outputs


def _fp16_initializer(init, name, numpy_helper):
    value = numpy_helper.to_array(init).astype(np.float32)
    return numpy_helper.from_array(_clamped_fp16(value), name)


def _clamped_fp16(value: np.ndarray) -> np.ndarray:
    """Saturate at fp16's largest finite value (-1e4 / -3.4e38 attention masks stay very
    negative, not -inf, which would give NaN rows in softmax) and keep tiny nonzero values
    nonzero (epsilons)."""
    tiny = (value != 0) & (np.abs(value) < FP16_MIN)
    value = np.where(tiny, np.sign(value) * FP16_MIN, value)
    return np.clip(value, -FP16_MAX, FP16_MAX).astype(np.float16)


def _half_attributes(node, numpy_helper) -> None:
    """Tensor attributes of an fp16 node (a Constant-like value) become fp16 as well."""
    for attr in node.attribute:
        if attr.type == AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT:
            attr.t.CopyFrom(numpy_helper.from_array(_clamped_fp16(numpy_helper.to_array(attr.t)), attr.t.name))
