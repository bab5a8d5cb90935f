"""exportable.serving: `run` over tables (local, Ray Data), `serve` (Ray Serve), `triton`.

Two cheap artifacts: examples/sensor_alarm.py (float rows, checked against its original numpy +
PyTorch pipeline) and a tiny string-in graph (the extensions' StringLower and
StringLength, checked against Python's str.lower and len) for text columns.
"""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, run_cli
from exportable import api, registry
from exportable.errors import InputError
from exportable.recipe import Case
from exportable.serving import RowFeeder, predict_rows

EXAMPLES = ROOT / "examples"
TEXTS = ["Hello World", "ÉTÉ à Paris", "", "Ray Data and ONNX", "MiXeD CaSe 123"]


@pytest.fixture(scope="module")
def sensor(tmp_path_factory):
    out = tmp_path_factory.mktemp("sensor") / "artifact"
    api.export_recipe(str(EXAMPLES / "sensor_alarm.py"), out=out)
    return out


@pytest.fixture(scope="module")
def sensor_original():
    return registry.load_file(EXAMPLES / "sensor_alarm.py").SensorAlarm().build_original()


@pytest.fixture(scope="module")
def text_artifact(tmp_path_factory):
    """text string [batch] -> lower string, length int64 (onnxruntime-extensions StringLower, StringLength)."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("StringLower", ["text"], ["lower"], domain="ai.onnx.contrib"),
             helper.make_node("StringLength", ["text"], ["length"], domain="ai.onnx.contrib")]
    graph = helper.make_graph(nodes, "text", [helper.make_tensor_value_info("text", TensorProto.STRING, ["batch"])],
                              [helper.make_tensor_value_info("lower", TensorProto.STRING, ["batch"]),
                               helper.make_tensor_value_info("length", TensorProto.INT64, ["batch"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                    helper.make_opsetid("ai.onnx.contrib", 1)])
    model.ir_version = 10
    folder = tmp_path_factory.mktemp("text") / "text_artifact"
    folder.mkdir()
    onnx.save(model, str(folder / "model.onnx"))
    return folder


def _sensor_rows(n, seed=0):
    readings = registry.load_file(EXAMPLES / "sensor_alarm.py").readings(n, seed)
    return [{"readings": r.tolist()} for r in readings]


def _write_jsonl(path, rows, extra_lines=()):
    with path.open("w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
        for line in extra_lines:
            handle.write(line + "\n")
    return path


def _read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


BAD_SENSOR_ROWS = {3: {"readings": None}, 7: {"x": 1}, 11: {"readings": [1.0, 2.0]}, 12: {"readings": "high"},
                   20: {"readings": [[1.0] * 8]}}


def _sensor_input(tmp_path, n=200):
    rows = _sensor_rows(n)
    for i, bad in BAD_SENSOR_ROWS.items():
        rows[i] = bad
    return _write_jsonl(tmp_path / "in.jsonl", rows, ["{broken"]), rows


def test_run_local_answers_every_good_row_like_the_original_and_refuses_bad_ones(sensor, sensor_original, tmp_path):
    source, rows = _sensor_input(tmp_path)
    result = run_cli("run", sensor, source, tmp_path / "out.jsonl", "--batch-size", "16")
    assert result.returncode == 0, result.stderr
    assert "wrote 195 rows" in result.stdout and "refused 6" in result.stdout
    assert "rows/s" in result.stderr and "ETA" in result.stderr  # the progress bar
    out = _read_jsonl(tmp_path / "out.jsonl")
    good = [i for i in range(len(rows)) if i not in BAD_SENSOR_ROWS]
    assert [r["id"] for r in out] == good
    readings = np.array([rows[i]["readings"] for i in good], np.float32)
    want = sensor_original(Case("all", {"readings": readings}))
    np.testing.assert_allclose([r["score"] for r in out], want["score"], rtol=1e-5, atol=1e-6)
    assert [r["alarm"] for r in out] == want["alarm"].tolist()
    errors = _read_jsonl(tmp_path / "out.errors.jsonl")
    assert [e["id"] for e in errors] == [*BAD_SENSOR_ROWS, len(rows)]
    reasons = dict((e["id"], e["reason"]) for e in errors)
    assert "null" in reasons[3] and "missing field 'readings'" in reasons[7] and "shape [8]" in reasons[11]
    assert "not valid JSON" in reasons[len(rows)]
    assert all("\n" not in r for r in reasons.values())
    assert not list(tmp_path.glob(".*"))  # no temporary file or parts folder left


def test_run_text_csv_to_parquet_and_parquet_to_jsonl_pass_ids_through(text_artifact, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    with (tmp_path / "in.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text"])
        writer.writerows([[f"doc-{i}", t] for i, t in enumerate(TEXTS)])
    result = run_cli("run", text_artifact, tmp_path / "in.csv", tmp_path / "out.parquet", "--batch-size", "2")
    assert result.returncode == 0, result.stderr
    table = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert table == [{"id": f"doc-{i}", "lower": t.lower(), "length": len(t)} for i, t in enumerate(TEXTS)]

    pq.write_table(pa.table({"text": [*TEXTS, None], "other": list(range(len(TEXTS) + 1))}), tmp_path / "in.parquet")
    result = run_cli("run", text_artifact, tmp_path / "in.parquet", tmp_path / "out.jsonl")
    assert result.returncode == 0, result.stderr
    assert _read_jsonl(tmp_path / "out.jsonl") == [{"id": i, "lower": t.lower(), "length": len(t)}
                                                  for i, t in enumerate(TEXTS)]
    assert _read_jsonl(tmp_path / "out.errors.jsonl") == [{"id": len(TEXTS), "reason": "field 'text' is null"}]


def test_run_exits_1_when_no_row_can_be_processed_and_2_on_bad_paths(text_artifact, tmp_path):
    source = _write_jsonl(tmp_path / "in.jsonl", [{"text": 1}, {"txt": "a"}])
    result = run_cli("run", text_artifact, source, tmp_path / "out.jsonl")
    assert result.returncode == 1 and "wrote 0 rows" in result.stdout and "refused 2" in result.stdout
    bad = run_cli("run", text_artifact, tmp_path / "in.txt", tmp_path / "out.jsonl")
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "expected a .jsonl" in bad.stderr


def test_a_batch_the_artifact_refuses_is_retried_row_by_row(sensor):
    """The graph refuses one row of a batch (as an image graph refuses a corrupt file): only that row."""
    real = api.load_artifact(sensor)

    class RefusesNegativeRows:
        input_specs, output_names = real.input_specs, real.output_names

        def run(self, feed):
            if (feed["readings"] < 0).any():
                raise InputError("readings must be positive")
            return real.run(feed)

    rows = _sensor_rows(10)
    rows[4]["readings"][0] = -1.0
    outcome = predict_rows(RefusesNegativeRows(), RowFeeder(real.input_specs, real.output_names),
                           list(enumerate(rows)), batch_size=8)
    assert [r["id"] for r in outcome.results] == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    assert outcome.refused == [{"id": 4, "reason": "readings must be positive"}]


def test_resume_after_sigkill_finishes_without_redoing_written_parts(sensor, tmp_path):
    source = _write_jsonl(tmp_path / "in.jsonl", _sensor_rows(60_000, seed=1))
    reference = run_cli("run", sensor, source, tmp_path / "reference.jsonl", "--chunk-rows", "500")
    assert reference.returncode == 0, reference.stderr
    output = tmp_path / "out.jsonl"
    journal = tmp_path / ".out.jsonl.parts" / "journal.jsonl"
    process = subprocess.Popen([sys.executable, "-m", "exportable", "run", sensor, source, output,
                                "--chunk-rows", "500"], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (journal.is_file() and journal.read_text().count("\n") >= 4):
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = journal.read_text().count("\n") - 1
    assert not output.exists() and 3 <= done < 120, "killed mid-run: no OUTPUT yet, some parts journaled"
    resumed = run_cli("run", sensor, source, output, "--chunk-rows", "500", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    skipped = int(resumed.stderr.split("--resume: ")[1].split(" parts")[0])
    assert skipped >= done and f"({skipped * 500:,} rows) already written" in resumed.stderr
    assert output.read_bytes() == (tmp_path / "reference.jsonl").read_bytes()  # no row lost or duplicated


@pytest.mark.slow
def test_ray_engine_writes_what_the_local_engine_writes_and_resumes(sensor, text_artifact, tmp_path):
    pytest.importorskip("ray")
    from exportable.serving.local import local_outcomes
    from exportable.serving.parts import Parts, run_settings

    source, _ = _sensor_input(tmp_path)
    local = run_cli("run", sensor, source, tmp_path / "local.parquet", "--chunk-rows", "64")
    assert local.returncode == 0, local.stderr
    # Ray resumes a run interrupted after its first part (written here as the local engine writes it)
    parts = Parts(tmp_path / "ray.parquet", run_settings(source, sensor, tmp_path / "ray.parquet", 64), False, print)
    runner = api.load_artifact(sensor)
    first = next(local_outcomes(runner, RowFeeder(runner.input_specs, runner.output_names), source, 0, 64, 32))
    parts.commit(0, first.results, first.refused)
    ray = run_cli("run", sensor, source, tmp_path / "ray.parquet", "--engine", "ray", "--chunk-rows", "64", "--resume")
    assert ray.returncode == 0, ray.stderr
    assert "1 parts (64 rows) already written" in ray.stderr
    assert (tmp_path / "ray.parquet").read_bytes() == (tmp_path / "local.parquet").read_bytes()
    assert (tmp_path / "ray.errors.jsonl").read_text() == (tmp_path / "local.errors.jsonl").read_text()
    (tmp_path / "in.csv").write_text("text,id\n" + "".join(f'"{t}",{i}\n' for i, t in enumerate(TEXTS * 50)))
    for engine in ("local", "ray"):
        result = run_cli("run", text_artifact, tmp_path / "in.csv", tmp_path / f"{engine}.jsonl", "--engine", engine,
                         "--batch-size", "8")
        assert result.returncode == 0, result.stderr
    assert (tmp_path / "ray.jsonl").read_text() == (tmp_path / "local.jsonl").read_text()
    assert len((tmp_path / "ray.jsonl").read_text().splitlines()) == 250


def test_engine_ray_without_ray_names_the_extra(sensor, tmp_path):
    (tmp_path / "noray" / "ray").mkdir(parents=True)
    (tmp_path / "noray" / "ray" / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    source, _ = _sensor_input(tmp_path)
    result = subprocess.run([sys.executable, "-m", "exportable", "run", sensor, source, tmp_path / "o.jsonl",
                             "--engine", "ray"], capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": f"{tmp_path / 'noray'}{os.pathsep}{ROOT}"})
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert '.[scale]' in result.stderr and not (tmp_path / "o.jsonl").exists()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_serve_batches_concurrent_requests_and_refuses_bad_ones(text_artifact, tmp_path):
    requests = pytest.importorskip("requests")
    pytest.importorskip("ray")
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "exportable", "serve", text_artifact, "--port", str(port)],
                              cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                              stdout=(tmp_path / "serve.log").open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300  # Ray + Serve start: ~25 s idle, minutes on a loaded 2-core box
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except requests.RequestException:  # not listening yet, or the app not deployed yet
                pass
            time.sleep(0.5)
        assert requests.get(f"{url}/health", timeout=30).json()["status"] == "ok", (tmp_path / "serve.log").read_text()
        batches = [TEXTS[i % 5:] + [f"Request {i}"] for i in range(24)]
        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(lambda texts: requests.post(f"{url}/predict", json={"inputs": {"text": texts}},
                                                                timeout=30), batches))
        direct = api.load_artifact(text_artifact)
        for texts, answer in zip(batches, answers):
            assert answer.status_code == 200, answer.text
            want = direct.run({"text": np.array(texts, dtype=object)})
            assert answer.json()["outputs"] == {"lower": want["lower"].tolist(), "length": want["length"].tolist()}
        assert max(int(a.headers["X-Batched-Requests"]) for a in answers) > 1  # concurrent requests shared calls
        bad_json = requests.post(f"{url}/predict", data=b"{not json", timeout=10)
        wrong_field = requests.post(f"{url}/predict", json={"inputs": {"txt": ["a"]}}, timeout=10)
        wrong_type = requests.post(f"{url}/predict", json={"inputs": {"text": [1, 2]}}, timeout=10)
        huge = requests.post(f"{url}/predict", data=b"x" * (17 * 2**20), timeout=30)
        assert bad_json.status_code == 400 and "not valid JSON" in bad_json.json()["error"]
        assert wrong_field.status_code == 422 and "missing ['text']" in wrong_field.json()["error"]
        assert wrong_type.status_code == 422 and "strings" in wrong_type.json()["error"]
        assert huge.status_code == 413
        after = requests.post(f"{url}/predict", json={"inputs": {"text": ["Still Here"]}}, timeout=10)
        assert after.json()["outputs"] == {"lower": ["still here"], "length": [10]}
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()


def test_triton_repository_parses_as_a_triton_model_config(sensor, text_artifact, tmp_path):
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    from google.protobuf import text_format

    for artifact, name in ((sensor, "sensor"), (text_artifact, "text")):
        result = run_cli("triton", artifact, "--out", tmp_path / "repo", "--name", name)
        assert result.returncode == 0, result.stderr
    configs = {name: text_format.Parse((tmp_path / "repo" / name / "config.pbtxt").read_text(),
                                       model_config_pb2.ModelConfig()) for name in ("sensor", "text")}
    types = model_config_pb2.DataType
    sensor_config, text_config = configs["sensor"], configs["text"]
    assert sensor_config.backend == "onnxruntime" and sensor_config.max_batch_size > 0
    assert [(i.name, i.data_type, list(i.dims)) for i in sensor_config.input] == [("readings", types.TYPE_FP32, [8])]
    assert [o.name for o in sensor_config.output] == ["score", "alarm"]
    assert sensor_config.HasField("dynamic_batching") and sensor_config.instance_group[0].count == 1
    assert not sensor_config.model_operations.op_library_filename  # plain ONNX ops: no library
    assert text_config.input[0].data_type == types.TYPE_STRING and list(text_config.input[0].reshape.shape) == []
    assert list(text_config.model_operations.op_library_filename) == ["/opt/tritonserver/lib/libortextensions.so"]
    model = tmp_path / "repo" / "text" / "1" / "model.onnx"
    assert model.read_bytes() == (text_artifact / "model.onnx").read_bytes()
    again = run_cli("triton", text_artifact, "--out", tmp_path / "repo", "--name", "text")
    assert again.returncode == 2 and "already exists" in again.stderr


def test_spark_udf_without_pyspark_names_what_to_install(sensor):
    try:
        import pyspark  # noqa: F401
    except ImportError:
        from exportable.errors import MissingDependency
        from exportable.spark import predict_udf

        with pytest.raises(MissingDependency, match="pip install pyspark"):
            predict_udf(sensor)
    else:
        pytest.skip("pyspark is installed: this checks the message shown without it")


def test_image_rows_take_file_paths_or_bytes_and_refuse_unreadable_images(tmp_path):
    """The row side of image artifacts (one image per call): a path relative to the input file's
    folder or the bytes of a PNG/JPEG, decoded to RGB pixels as PIL decodes them."""
    from PIL import Image

    from exportable.images import encode, synthetic_image
    from exportable.serving import RowError

    pixels = synthetic_image(20, 30, seed=3)
    (tmp_path / "a.png").write_bytes(encode(pixels, "PNG"))
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    feeder = RowFeeder({"image": ("uint8", ["height", "width", 3])}, ["probabilities"], base_dir=tmp_path)
    assert not feeder.batched
    np.testing.assert_array_equal(feeder.convert({"image": "a.png"})["image"], pixels)
    as_bytes = feeder.convert({"image": (tmp_path / "a.png").read_bytes()})["image"]
    np.testing.assert_array_equal(as_bytes, np.array(Image.open(tmp_path / "a.png").convert("RGB")))
    with pytest.raises(RowError, match="not a readable image"):
        feeder.convert({"image": "broken.jpg"})
    with pytest.raises(RowError, match="cannot read image file 'missing.png'"):
        feeder.convert({"image": "missing.png"})
    encoded = RowFeeder({"image_bytes": ("uint8", ["bytes"])}, ["probabilities"], base_dir=tmp_path)
    assert encoded.convert({"image_bytes": "a.png"})["image_bytes"].tobytes() == (tmp_path / "a.png").read_bytes()
