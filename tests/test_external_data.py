"""The > 2 GB path (exportable/external.py) on a synthetic model, with the limit lowered to 1 MiB:
weights held out of the proto survive a merge, a model over the limit is written as graph + one
aligned data file that ONNX Runtime loads beside it, one under it stays one file, and the loader
refuses a data file that is not a plain file beside the model, or was changed after export.
(tests/test_large_model.py proves it on a real 2.4 GB text_generator export.)"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from exportable import external, graph, integrity, runtime
from exportable.modelfile import ModelFileError

MIB = 1 << 20
rng = np.random.default_rng(0)
WEIGHT = rng.standard_normal((512, 1024), dtype=np.float32)  # 2 MiB: over the lowered limit
BIAS = rng.standard_normal(1024, dtype=np.float32)  # 4 KiB


def affine(detached: external.Detached | None = None) -> onnx.ModelProto:
    """y = x @ WEIGHT + BIAS; with `detached`, WEIGHT is held out of the proto (as after capture)."""
    weight = numpy_helper.from_array(WEIGHT, "weight")
    if detached is not None:
        external.point_at(weight, detached.add(WEIGHT), 0, WEIGHT.nbytes)
    nodes = [helper.make_node("MatMul", ["x", "weight"], ["xw"]), helper.make_node("Add", ["xw", "bias"], ["y"])]
    g = helper.make_graph(nodes, "affine", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 512])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 1024])],
                          [weight, numpy_helper.from_array(BIAS, "bias")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def doubled_in_front(model: onnx.ModelProto) -> onnx.ModelProto:
    """A preprocessor merged in front (x -> 2x): onnx.compose's own merge would run the in-memory
    checker, which fails on held-out weights."""
    pre = helper.make_model(helper.make_graph(
        [helper.make_node("Add", ["raw", "raw"], ["x"])], "pre",
        [helper.make_tensor_value_info("raw", TensorProto.FLOAT, ["b", 512])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 512])]),
        opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    return graph.merge_in_front(pre, model)


def run(path, feed_name="x"):
    x = rng.standard_normal((3, 512), dtype=np.float32)
    return runtime.load(path).run({feed_name: x})["y"], x


def data_entries(path):
    model = onnx.load(str(path), load_external_data=False)
    return {t.name: {e.key: e.value for e in t.external_data} for t in model.graph.initializer
            if t.data_location == TensorProto.EXTERNAL}


@pytest.mark.parametrize("held_out", [False, True], ids=["in_proto", "detached"])
def test_over_the_limit_is_graph_plus_one_aligned_data_file(tmp_path, held_out):
    detached = external.Detached() if held_out else None
    model = doubled_in_front(affine(detached)) if held_out else affine()
    written = external.save(model, tmp_path / "model.onnx", detached, limit=MIB)
    assert written == ["model.onnx", "model.onnx.data"] == sorted(p.name for p in tmp_path.iterdir())
    assert (tmp_path / "model.onnx").stat().st_size < 4096
    entries = data_entries(tmp_path / "model.onnx")
    assert {e["location"] for e in entries.values()} == {"model.onnx.data"}
    assert int(entries["weight"]["offset"]) % 65536 == 0 and int(entries["bias"]["offset"]) % 4096 == 0
    onnx.checker.check_model(str(tmp_path / "model.onnx"), full_check=True)
    y, x = run(tmp_path / "model.onnx", "raw" if held_out else "x")
    np.testing.assert_allclose(y, (2 * x if held_out else x) @ WEIGHT + BIAS, rtol=1e-5, atol=1e-5)


def test_under_the_limit_stays_one_file(tmp_path):
    (tmp_path / "model.onnx.data").write_bytes(b"stale")  # from an earlier save: removed, never listed
    detached = external.Detached()
    assert external.save(affine(detached), tmp_path / "model.onnx", detached) == ["model.onnx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    y, x = run(tmp_path / "model.onnx")
    np.testing.assert_allclose(y, x @ WEIGHT + BIAS, rtol=1e-5, atol=1e-5)


@pytest.fixture
def big(tmp_path):
    folder = tmp_path / "artifact"
    folder.mkdir()
    external.save(affine(), folder / "model.onnx", limit=MIB)
    return folder


def point_data_at(folder, location):
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(model, str(folder / "model.onnx"))


@pytest.mark.parametrize("location", ["../model.onnx.data", "sub/model.onnx.data", "/etc/passwd", "."])
def test_a_data_location_that_is_not_a_plain_sibling_is_refused(big, location):
    (big / "sub").mkdir()
    (big / "model.onnx.data").rename(big / "sub" / "model.onnx.data")
    (big.parent / "model.onnx.data").write_bytes((big / "sub" / "model.onnx.data").read_bytes())
    point_data_at(big, location)
    with pytest.raises(ModelFileError) as info:
        runtime.load(big / "model.onnx")
    assert "\n" not in str(info.value) and repr(location) in str(info.value)
    assert "external data must be a plain file beside model.onnx" in str(info.value)


def test_a_symlinked_data_file_is_refused_even_inside_the_folder(big):
    (big / "model.onnx.data").rename(big / "weights.bin")
    (big / "model.onnx.data").symlink_to(big / "weights.bin")
    with pytest.raises(ModelFileError, match=r"'model.onnx.data' .* is a symlink to .*weights.bin, inside the model"):
        runtime.load(big / "model.onnx")


def test_the_data_file_is_hashed_and_checked_with_its_model(big):
    files = integrity.describe(big, ["model.onnx", "model.onnx.data"])
    (big / "report.json").write_text(json.dumps({"files": files}))
    integrity.check_files(big, ["model.onnx"])  # as recorded: passes
    data = bytearray((big / "model.onnx.data").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (big / "model.onnx.data").write_bytes(bytes(data))
    with pytest.raises(integrity.IntegrityError, match="model.onnx.data does not match its recorded sha256"):
        integrity.check_files(big, ["model.onnx"])  # callers name the model; its data file comes with it


@pytest.mark.slow
def test_the_export_pipeline_writes_and_verifies_external_data(tmp_path, monkeypatch):
    """The default text_generator (13 MB of weights) with the limit lowered to 1 MiB: detached at
    capture, through the decoding loop and the tokenizer/detokenizer merges, saved as graph + data,
    checked, verified against generate, both files hashed into the records and replayed."""
    from exportable import api

    monkeypatch.setattr(external, "LIMIT", MIB)
    out = tmp_path / "artifact"
    assert api.export_recipe("text_generator", out=out, max_new_tokens=2).passed
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "model.onnx.data", "report.json", "report.md",
                                                     "vectors"]
    report = json.loads((out / "report.json").read_text())
    assert set(report["files"]) == {"model.onnx", "model.onnx.data"}
    check = next(s for s in report["stages"] if s["name"] == "check:onnx")["detail"]
    assert check["load"]["seconds"] > 0 and check["load"]["peak_rss_mib"] > 0
    assert all(r.passed for r in api.verify_artifact(out)["onnx"])
