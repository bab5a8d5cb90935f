"""Every recipe's artifact replayed from Java and Go (tests/consumers), without Python.

Select alone with `pytest -m consumers`. Builds both consumers from scratch (Maven Central and
the Go module proxy on first use), exports every recipe once (shared with test_recipes.py) and
records the runtime versions each artifact was proven on in its report.json.
"""

import json
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from test_recipes import PARITY_CASES, require_extra

from exportable import api, registry
from exportable.report import record_runtime

pytestmark = pytest.mark.consumers
HERE = Path(__file__).parent / "consumers"
NATIVE = HERE / "native" / "linux-x64"


def _run(cmd, cwd=None, env=None, timeout=900):
    return subprocess.run(cmd, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


def _need(tool):
    if shutil.which(tool) is None:
        pytest.fail(f"{tool} is not installed; the consumer tests need Java 17 + Maven and Go (see tests/consumers/README.md)")


@pytest.fixture(scope="session")
def java_jar():
    _need("mvn")
    built = _run(["mvn", "-q", "-B", "-Dstyle.color=never", "-f", str(HERE / "java" / "pom.xml"), "package"])
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    return HERE / "java" / "target" / "replay-vectors.jar"


@pytest.fixture(scope="session")
def go_binary():
    _need("go")
    fetched = _run(["bash", str(HERE / "fetch_native.sh")])
    assert fetched.returncode == 0, fetched.stderr[-3000:]
    built = _run(["go", "build", "-o", "replay-vectors", "."], cwd=HERE / "go")
    assert built.returncode == 0, built.stderr[-3000:]
    return HERE / "go" / "replay-vectors"


def _artifact(exported, name):
    require_extra(name)
    formats = ",".join(registry.get(name).formats)  # the same export test_recipes.py uses
    return exported(name, formats, **PARITY_CASES[name])


def _known(folder, runtime) -> int:
    """Cases the exporter recorded as known limitations of `runtime` (reported XFAIL, not run):
    only those may be skipped, every other case must pass."""
    manifest = json.loads((folder / "vectors" / "manifest.json").read_text())
    return sum(runtime in c.get("known_failures", {}) for c in manifest["cases"])


def _outcome(result) -> dict:
    lines = result.stdout.splitlines()
    closing = next((l for l in reversed(lines) if re.fullmatch(r"\d+ passed, \d+ failed", l)), "")
    xfail = [l for l in lines if l.startswith("XFAIL")]
    return {"versions": lines[0] if lines else "", "result": closing, "expected_failures": len(xfail),
            "expected_failure_reasons": sorted({l.split(": ", 1)[-1] for l in xfail})}


@pytest.mark.parametrize("name", registry.names())
def test_java_replays_the_vectors(exported, java_jar, name):
    folder = _artifact(exported, name)
    result = _run(["java", "-jar", str(java_jar), str(folder)])
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    assert _outcome(result)["expected_failures"] == _known(folder, "java")
    record_runtime(folder, "java", _outcome(result))


@pytest.mark.parametrize("name", registry.names())
def test_go_replays_the_vectors(exported, go_binary, name):
    folder = _artifact(exported, name)
    result = _run([str(go_binary), "-ort", str(NATIVE / "libonnxruntime.so"), "-ortx",
                   str(NATIVE / "libortextensions.so"), str(folder)])
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    assert _outcome(result)["expected_failures"] == _known(folder, "go")
    record_runtime(folder, "go", _outcome(result))


def test_consumers_fail_loudly_on_a_wrong_expected_value(exported, java_jar, go_binary, tmp_path):
    folder = tmp_path / "tampered"
    shutil.copytree(_artifact(exported, "sentence_bert"), folder)
    manifest = json.loads((folder / "vectors" / "manifest.json").read_text())
    target = folder / "vectors" / manifest["cases"][0]["expected"]["sentence_embedding"]["file"]
    data = bytearray(target.read_bytes())
    data[0:4] = struct.pack("<f", 1.0)  # an embedding value no normalised row can hold
    target.write_bytes(bytes(data))
    java = _run(["java", "-jar", str(java_jar), str(folder)])
    go = _run([str(go_binary), "-ort", str(NATIVE / "libonnxruntime.so"), "-ortx",
               str(NATIVE / "libortextensions.so"), str(folder)])
    for result in (java, go):
        assert result.returncode == 1 and "FAIL" in result.stdout and "expected" in result.stdout


def test_consumers_refuse_a_model_file_changed_after_export(java_jar, go_binary, tmp_path):
    """Both check the model's sha256 recorded in the manifest before ONNX Runtime reads it."""
    folder = tmp_path / "changed"
    api.export_recipe(str(HERE.parents[1] / "examples" / "sensor_alarm.py"), out=folder)
    for result in (_run(["java", "-jar", str(java_jar), str(folder)]),
                   _run([str(go_binary), "-ort", str(NATIVE / "libonnxruntime.so"), "-ortx",
                         str(NATIVE / "libortextensions.so"), str(folder)])):
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]  # unchanged: replays
    model = folder / "model.onnx"
    data = bytearray(model.read_bytes())
    data[-1] ^= 0x01  # same size, one bit: only the hash can tell
    model.write_bytes(bytes(data))
    java = _run(["java", "-jar", str(java_jar), str(folder)])
    go = _run([str(go_binary), "-ort", str(NATIVE / "libonnxruntime.so"), "-ortx",
               str(NATIVE / "libortextensions.so"), str(folder)])
    for result in (java, go):
        assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
        assert "model.onnx does not match its recorded sha256" in result.stderr, result.stderr


def test_consumers_load_external_data_and_refuse_it_changed(java_jar, go_binary, tmp_path, monkeypatch):
    """A model over the (here lowered) 2 GB limit is model.onnx + model.onnx.data: both consumers
    load it by path (ONNX Runtime finds the data beside it) and check the data file's sha256 too."""
    from exportable import external

    monkeypatch.setattr(external, "LIMIT", 1024)
    folder = tmp_path / "external"
    api.export_recipe(str(HERE.parents[1] / "examples" / "sensor_alarm.py"), out=folder)
    data = folder / "model.onnx.data"
    assert data.is_file()
    consumers = (["java", "-jar", str(java_jar), str(folder)],
                 [str(go_binary), "-ort", str(NATIVE / "libonnxruntime.so"), "-ortx", str(NATIVE / "libortextensions.so"),
                  str(folder)])
    for result in map(_run, consumers):
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    changed = bytearray(data.read_bytes())
    changed[0] ^= 0x01
    data.write_bytes(bytes(changed))
    for result in map(_run, consumers):
        assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
        assert "model.onnx.data does not match its recorded sha256" in result.stderr, result.stderr


@pytest.mark.slow
def test_go_soak_from_8_goroutines_answers_right_with_flat_memory(go_binary, tmp_path):
    """issue 27: one session shared by 8 goroutines for 10,000 calls, every answer checked."""
    folder = tmp_path / "sensor"
    api.export_recipe(str(HERE.parents[1] / "examples" / "sensor_alarm.py"), out=folder)
    result = _run([str(go_binary), "-ort", str(NATIVE / "libonnxruntime.so"), "-ortx",
                   str(NATIVE / "libortextensions.so"), "-soak", "10000", "-goroutines", "8", str(folder)])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    line = next(l for l in result.stdout.splitlines() if l.startswith("soak "))
    print(line)
    assert ", 0 wrong answers," in line
    assert float(re.search(r"growth (-?[\d.]+) MB", line).group(1)) < 20, line


def test_consumers_replay_the_optimized_sentence_bert(exported, java_jar, go_binary, tmp_path):
    """`--optimize`'s graph (opset-23 Attention, the unpadding If, the chunk Loop over sequences)
    loads in ONNX Runtime Java and Go and answers the artifact's vectors within their tolerance."""
    source = exported("sentence_bert", "onnx", optimize=True)
    folder = tmp_path / "optimized"
    shutil.copytree(source, folder)
    shutil.copy(source / "model.optimized.onnx", folder / "model.onnx")
    manifest = json.loads((folder / "vectors" / "manifest.json").read_text())
    manifest["files"]["model.onnx"] = manifest["files"]["model.optimized.onnx"]  # the file now there, as recorded
    (folder / "vectors" / "manifest.json").write_text(json.dumps(manifest))
    java = _run(["java", "-jar", str(java_jar), str(folder)])
    go = _run([str(go_binary), "-ort", str(NATIVE / "libonnxruntime.so"), "-ortx",
               str(NATIVE / "libortextensions.so"), str(folder)])
    for result, runtime in ((java, "java"), (go, "go")):
        assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
        outcome = _outcome(result)
        assert outcome["expected_failures"] == _known(folder, runtime)
        assert re.fullmatch(r"[1-9]\d* passed, 0 failed", outcome["result"]), outcome


def _readme_block(language: str) -> str:
    text = (Path(__file__).parents[1] / "README.md").read_text()
    match = re.search(rf"## Using an artifact from Java / Go.*?```{language}\n(.*?)```", text, re.S)
    assert match, f"README has no {language} example in 'Using an artifact from Java / Go'"
    return match.group(1)


def test_readme_examples_are_the_compiled_ones_and_run(exported, java_jar, go_binary):
    """The README's snippets are the sources the test compiles and runs, so they cannot rot."""
    java_src = (HERE / "java/src/main/java/dev/exportable/consumer/Example.java").read_text()
    go_src = (HERE / "go/example/main.go").read_text()
    assert _readme_block("java").strip() in java_src
    assert _readme_block("go").strip() in go_src
    folder = _artifact(exported, "sentence_bert")
    cp = f"{java_jar}:{java_jar.parent / 'lib'}/*"
    java = _run(["java", "-cp", cp, "dev.exportable.consumer.Example", str(folder), "Hello from Java"])
    assert java.returncode == 0 and "sentence_embedding" in java.stdout, java.stderr
    go = _run(["go", "run", "./example", str(folder), "Hello from Go"], cwd=HERE / "go",
              env={"ORT_LIB": str(NATIVE / "libonnxruntime.so"), "ORTX_LIB": str(NATIVE / "libortextensions.so")})
    assert go.returncode == 0 and "sentence_embedding" in go.stdout, go.stderr
