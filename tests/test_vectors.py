"""Vectors round-trip, and their files are the plain little-endian bytes Java and Go read."""

import json

import numpy as np

from exportable import vectors
from exportable.recipe import EXACT, Tolerance


def test_round_trip_every_dtype(tmp_path):
    inputs = {
        "f": np.arange(6, dtype=np.float32).reshape(2, 3) / 7,
        "d": np.array([1.5], dtype=np.float64),
        "i": np.array([[1, -2]], dtype=np.int64),
        "j": np.array([3], dtype=np.int32),
        "u": np.arange(12, dtype=np.uint8).reshape(2, 2, 3),
        "b": np.array([True, False]),
        "s": np.array(["Café", "", "日本語 🇯🇵"], dtype=object),
        "empty": np.zeros((0, 384), dtype=np.float32),
    }
    expected = {"out": np.array([[0.25, -1.0]], dtype=np.float32)}
    tol = {"out": Tolerance(atol=1e-5, rtol=0, min_cosine=0.999), "i": EXACT}
    vectors.write(tmp_path, vectors.Vectors("demo", {"onnx": "model.onnx"}, ["ai.onnx.contrib"], tol,
                                            [vectors.VectorCase("c0", inputs, expected)]))
    back = vectors.read(tmp_path)
    case = back.cases[0]
    for name, value in inputs.items():
        assert case.inputs[name].shape == value.shape
        assert case.inputs[name].dtype == (np.dtype(object) if name == "s" else value.dtype)
        assert (case.inputs[name] == value).all()
    assert back.tolerances == tol and back.custom_op_domains == ["ai.onnx.contrib"]


def test_files_are_little_endian_row_major(tmp_path):
    value = np.array([[1, 256]], dtype=np.int64)
    vectors.write(tmp_path, vectors.Vectors("demo", {}, [], {}, [vectors.VectorCase("c", {"x": value}, {})]))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    entry = manifest["cases"][0]["inputs"]["x"]
    raw = (tmp_path / entry["file"]).read_bytes()
    assert raw == (1).to_bytes(8, "little") + (256).to_bytes(8, "little")
    assert entry == {"dtype": "int64", "shape": [1, 2], "file": "case_000/input.x.bin"}
