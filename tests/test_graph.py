"""Graph surgery guards, on tiny hand-built graphs run in ONNX Runtime."""

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from exportable import graph
from exportable.recipe import TensorSpec


def _model_with_internal_value_named_embedding():
    # x -> Relu -> "embedding" (internal) -> Neg -> "out": the shape of the dynamo trap.
    nodes = [helper.make_node("Relu", ["x"], ["embedding"]), helper.make_node("Neg", ["embedding"], ["out"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["s0"])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["s0"])])
    # ir_version 10: onnx 1.23 defaults to 14, newer than ONNX Runtime 1.31 reads (max 13).
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def test_renaming_an_output_onto_an_internal_name_keeps_the_graph_valid():
    model = _model_with_internal_value_named_embedding()
    graph.rename_outputs(model, ["embedding"])
    onnx.checker.check_model(model, full_check=True)  # "Duplicate definition" would fail here
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.array([-1.0, 2.0], dtype=np.float32)
    (y,) = sess.run(["embedding"], {"x": x})
    np.testing.assert_array_equal(y, -np.maximum(x, 0))


def test_apply_specs_names_symbolic_dims():
    model = _model_with_internal_value_named_embedding()
    graph.apply_specs(model, [TensorSpec("x", "float32", ("batch",))], [TensorSpec("out", "float32", ("batch",))])
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert model.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_saved_model_is_one_file(tmp_path):
    model = _model_with_internal_value_named_embedding()
    big = helper.make_tensor("w", TensorProto.FLOAT, [1024 * 1024], np.zeros(1024 * 1024, np.float32))
    model.graph.initializer.append(big)  # 4 MB: onnx would externalise it if asked to
    graph.save_model(model, tmp_path / "m.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_empty_batch_guard_returns_zero_rows_and_applies_once():
    # Reshape to [-1, 2, 2] is ambiguous on zero rows; the guard runs one blank row instead.
    consts = [onnx.numpy_helper.from_array(np.array(v, np.int64), n) for n, v in (("shape", [-1, 2, 2]),
                                                                                   ("axes", [1, 2]))]
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["r"]),
             helper.make_node("ReduceSum", ["r", "axes"], ["y"], keepdims=0)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch"])], consts)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    assert graph.guard_empty_batch(model)
    count = len(model.graph.node)
    # a second stage guarding again (fp32 standard attention, then int8) changes nothing
    assert graph.guard_empty_batch(model) and len(model.graph.node) == count
    onnx.checker.check_model(model, full_check=True)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"x": np.zeros((0, 4), np.float32)})[0].shape == (0,)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], x.sum(1))
