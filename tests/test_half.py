"""exportable.half (the fp16 model of `bench --device cuda`) on tiny graphs, run by ONNX Runtime's
CPU provider: the graph loads, float compute is fp16, the edges stay fp32, values cross once.
The real model's accuracy against sentence-transformers is in tests/test_optimize.py."""

import collections

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from exportable.accelerate import fp16 as half


def _model(nodes, inputs, outputs, inits):
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def _run(model, feed):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))


def _encoder_like():
    """MatMul -> LayerNorm (the last one) -> L2 normalization with a 1e-12 clamp floor, like
    sentence_bert's tail; a Shape reading the MatMul; a ReduceSum (kept fp32) reading the same
    weight as the MatMul."""
    rng = np.random.default_rng(0)
    inits = {"w": rng.normal(size=(8, 16)).astype(np.float32), "scale": np.ones(16, np.float32),
             "bias": np.zeros(16, np.float32), "floor": np.array(1e-12, np.float32), "axis": np.array([1])}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"]),
             helper.make_node("LayerNormalization", ["mm", "scale", "bias"], ["ln"], axis=-1),
             helper.make_node("ReduceL2", ["ln", "axis"], ["norm"], keepdims=1),
             helper.make_node("Clip", ["norm", "floor"], ["clamped"]),
             helper.make_node("Div", ["ln", "clamped"], ["y"]),
             helper.make_node("Shape", ["mm"], ["shape"]),
             helper.make_node("ReduceSum", ["w", "axis"], ["w_sum"], keepdims=0)]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
               helper.make_tensor_value_info("shape", TensorProto.INT64, None),
               helper.make_tensor_value_info("w_sum", TensorProto.FLOAT, None)]
    return _model(nodes, inputs, outputs, inits), rng.normal(size=(5, 8)).astype(np.float32)


def test_float_compute_runs_in_fp16_and_the_edges_in_fp32():
    model, x = _encoder_like()
    converted, detail = half.to_fp16(model)
    types = half.value_types(converted)
    assert types["mm/fp16"] == "tensor(float16)" and types["ln/fp16"] == "tensor(float16)"
    # the tail after the last layer norm stays fp32: the 1e-12 floor is below fp16's 6e-8
    assert {types[v] for v in ("norm", "clamped", "y")} == {"tensor(float)"}
    assert detail["fp32_tail_nodes"] == 3
    weight = {i.name: i for i in converted.graph.initializer}
    assert weight["w/to_fp16"].data_type == TensorProto.FLOAT16
    assert weight["w"].data_type == TensorProto.FLOAT  # still read in fp32 by the ReduceSum

    want, got = _run(model, {"x": x}), _run(converted, {"x": x})
    assert got["y"].dtype == np.float32 and got["w_sum"].dtype == np.float32
    np.testing.assert_allclose(got["y"], want["y"], atol=3e-3)
    np.testing.assert_array_equal(got["w_sum"], want["w_sum"])
    np.testing.assert_array_equal(got["shape"], want["shape"])


def test_each_value_crosses_once_through_one_uniquely_named_cast():
    model, x = _encoder_like()
    converted, detail = half.to_fp16(model)
    names = collections.Counter(n.name for n in converted.graph.node if n.name)
    assert all(count == 1 for count in names.values()), names
    casts = [n for n in converted.graph.node if n.op_type == "Cast"]
    # x into fp16 once; ln back to fp32 once, for the tail (Shape reads the fp16 value as it is)
    assert sorted((n.input[0], n.output[0]) for n in casts) == [("ln/fp16", "ln"), ("x", "x/to_fp16")]
    assert detail["casts_to_fp16"] == 1 and detail["casts_to_fp32"] == 1


def test_a_large_negative_mask_saturates_instead_of_becoming_nan():
    # -3.4e38 (torch.finfo(float32).min, a common additive mask) overflows fp16 to -inf, and a
    # row whose every score is -inf is NaN after softmax (the second row here: an empty text).
    # Saturated at -65504 the row stays finite and uniform, as it is in fp32.
    low = np.finfo(np.float32).min
    mask = np.array([[0.0, low, low, 0.0], [low, low, low, low]], np.float32)
    nodes = [helper.make_node("Add", ["x", "mask"], ["scores"]),
             helper.make_node("Softmax", ["scores"], ["p"], axis=-1)]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                   [helper.make_tensor_value_info("p", TensorProto.FLOAT, None)], {"mask": mask})
    converted, _ = half.to_fp16(model)
    x = np.array([[1.0, 2.0, 3.0, 4.0], [0.5, 0.5, 0.5, 0.5]], np.float32)
    got, want = _run(converted, {"x": x})["p"], _run(model, {"x": x})["p"]
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, atol=1e-3)
