"""`python -m exportable bench --quick`: every variant appears in the JSON with a parity status.
No timing assertions here: the speed targets live in the bench output (docs/performance.md)."""

import json
import statistics

import numpy as np
import pytest

from conftest import run_cli
from exportable import bench

VARIANTS = {"original", "torchscript", "onnx", "onnx-optimized", "onnx-int8", "onnx-int8-static", "onnx-ids-optimized"}


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    # --device cuda exercises the GPU path's fallback: onnxruntime here has no CUDA provider.
    proc = run_cli("bench", "sentence_bert", "--quick", "--out", out, "--batch-sizes", "1,3",
                   "--lengths", "short", "--device", "cuda", "--threads", "2")
    return proc, out


def test_quick_bench_writes_json_with_every_variant(quick):
    proc, out = quick
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((out / "bench.json").read_text())
    assert set(data["variants"]) == VARIANTS
    for name, v in data["variants"].items():
        assert v["status"] == "ok", (name, v["reason"])
        assert v["parity"]["passed"] is True
        assert v["parity"]["min_cosine"] >= (0.99 if name.startswith("onnx-int8") else 0.99999)
    rows = data["results"]
    assert {(r["variant"], r["length"], r["batch"]) for r in rows} == {(v, "short", b) for v in VARIANTS for b in (1, 3)}
    for r in rows:
        assert r["status"] == "ok" and r["median_ms"] > 0 and r["p95_ms"] >= r["median_ms"]
        assert r["tokens"] == 16 * r["batch"] and r["gflops"] > 0 and r["speedup"] > 0
        q1, q3 = r["speedup_iqr"]
        assert q1 <= r["speedup"] <= q3 and r["speedup_of_medians"] > 0
    assert data["flops_per_token"] == pytest.approx(21.2e6, rel=0.01)
    assert data["machine"]["threads"] == 2
    assert data["machine"]["fp32_matmul_peak_gflops"] > 0 and "%peak" in proc.stdout
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "onnx-int8" in proc.stdout and "x orig" in proc.stdout


def test_paired_speedup_cancels_a_host_slowdown_that_unpaired_medians_do_not():
    # A variant twice as fast as the original. The host slows 3x from round 3 on; in round 3
    # the slowdown starts between the variant's block and the original's. Unpaired medians
    # then read 6x; the median of per-round ratios reads the true 2x (round 3 is one of five).
    original = [0.010, 0.010, 0.030, 0.030, 0.030]
    variant = [0.005, 0.005, 0.015, 0.015, 0.015]
    variant_ahead_of_the_slowdown = [0.005, 0.005, 0.005, 0.015, 0.015]
    assert bench.paired_speedup(original, variant) == (pytest.approx(2.0), [pytest.approx(2.0)] * 2)
    speedup, (q1, q3) = bench.paired_speedup(original, variant_ahead_of_the_slowdown)
    assert statistics.median(original) / statistics.median(variant_ahead_of_the_slowdown) == pytest.approx(6.0)
    assert speedup == pytest.approx(2.0) and q1 == pytest.approx(2.0) and q3 == pytest.approx(2.0)


def test_io_binding_runs_numeric_graphs_bound_and_string_graphs_plainly():
    """bench --device cuda's call path, on the CPU device (the binding code is the same)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    def session(nodes, inputs, outputs, inits=()):
        g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])

    ids = session([helper.make_node("Gather", ["table", "ids"], ["vectors"])],
                  [helper.make_tensor_value_info("ids", TensorProto.INT64, ["b", "s"])],
                  [helper.make_tensor_value_info("vectors", TensorProto.FLOAT, None)],
                  [numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(6, 2), "table")])
    feed = {"ids": np.array([[1, 5], [0, 3]], np.int64)}
    got = bench.run_bound(ids, feed, ["vectors"], "cpu", set())
    np.testing.assert_array_equal(got["vectors"], ids.run(None, feed)[0])

    # a string input cannot be bound at all ("Only binding non-string Tensors is currently
    # supported"): the text-in graph's call goes through session.run
    text = session([helper.make_node("Shape", ["text"], ["n"])],
                   [helper.make_tensor_value_info("text", TensorProto.STRING, ["b"])],
                   [helper.make_tensor_value_info("n", TensorProto.INT64, None)])
    strings = {"text": np.array(["a b", "Café"], dtype=object)}
    with pytest.raises(RuntimeError, match="non-string"):
        text.io_binding().bind_cpu_input("text", strings["text"])
    assert bench.run_bound(text, strings, ["n"], "cpu", {"text"})["n"].tolist() == [2]


def test_the_gpu_original_is_the_same_pipeline_on_another_device_and_says_why_it_is_not_used():
    from exportable.recipe import Case
    from exportable.recipes.sentence_bert import SentenceBert
    from exportable.recipes.yolo_nms import YoloNMS

    recipe = SentenceBert()
    case = Case("texts", ["a first sentence", "Café 東京 😀", ""])
    moved = recipe.original_on("cpu")(case)["sentence_embedding"]  # the device move itself, here
    np.testing.assert_array_equal(moved, recipe.build_original()(case)["sentence_embedding"])
    assert next(recipe.st.parameters()).device.type == "cpu"  # a copy moved, not the original

    gpu, why = bench.original_on_gpu(recipe)
    if gpu is None:  # no CUDA here: the bench table says so next to the original
        assert "sees no CUDA device" in why or "not installed" in why
    assert bench.original_on_gpu(YoloNMS()) == (None, "yolo_nms has no original_on(device)")


def test_cuda_request_falls_back_to_cpu_with_one_line(quick):
    proc, out = quick
    data = json.loads((out / "bench.json").read_text())
    ok, why = bench.cuda_available()
    if ok:
        pytest.skip("this machine has CUDA; the fallback is not exercised")
    assert data["machine"]["device"] == "cpu"
    assert any("CUDAExecutionProvider" in n for n in data["notes"])
    assert sum("running on CPU" in line for line in proc.stderr.splitlines()) == 1


def test_reused_artifact_and_a_failing_variant(quick, tmp_path):
    """--artifact reuses built models; a model that breaks parity is reported failed, not timed."""
    import shutil

    import onnx
    from onnx import numpy_helper

    _, out = quick
    art = tmp_path / "art"
    art.mkdir()
    model = onnx.load(str(out / "models" / "model.optimized.onnx"))
    for init in model.graph.initializer:  # break it: scale one layer's FFN weights
        if init.dims == [1536, 384]:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.5, init.name))
            break
    onnx.save(model, str(art / "model.optimized.onnx"))
    shutil.copy(out / "models" / "model.onnx", art / "model.onnx")
    result = bench.run_bench("sentence_bert", out=tmp_path / "b", artifact=art, variants=["onnx", "onnx-optimized"],
                             batches=[1], lengths=["short"], quick=True)
    v = result.data["variants"]
    assert v["onnx"]["status"] == "ok"
    assert v["onnx-optimized"]["status"] == "failed"
    assert "atol" in v["onnx-optimized"]["reason"] or "cosine" in v["onnx-optimized"]["reason"]
    row = next(r for r in result.data["results"] if r["variant"] == "onnx-optimized")
    assert row["status"] == "failed" and row["median_ms"] is None
    assert "FAILED" in result.table


def test_bad_bench_options_are_usage_errors():
    proc = run_cli("bench", "sentence_bert", "--batch-sizes", "0")
    assert proc.returncode == 2 and "positive" in proc.stderr
    proc = run_cli("bench", "sentence_bert", "--lengths", "huge")
    assert proc.returncode == 2 and "short, long, mixed" in proc.stderr


def test_bench_on_an_image_recipe_reports_what_does_not_apply(tmp_path):
    """A conv net has no GEMMs for int8 and its artifact takes one image per call: those rows
    say why (unavailable), the rest are timed against the original, and the run succeeds."""
    proc = run_cli("bench", "image_classifier", "--quick", "--out", tmp_path, "--batch-sizes", "1,2",
                   "--lengths", "short", "--variants", "original,onnx,onnx-int8")
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["variants"]["onnx-int8"]["status"] == "unavailable"
    assert "no MatMul" in data["variants"]["onnx-int8"]["reason"]
    rows = {(r["variant"], r["batch"]): r for r in data["results"]}
    assert rows[("onnx", 1)]["status"] == "ok" and rows[("onnx", 1)]["median_ms"] > 0
    assert rows[("original", 1)]["median_ms"] > 1  # computed per call, not a memoised answer
    assert rows[("onnx", 2)]["status"] == "unavailable" and "batch of 2" in rows[("onnx", 2)]["reason"]
