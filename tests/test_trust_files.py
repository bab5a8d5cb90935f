"""Trust the file (issue 27): recorded hashes, damaged files, hostile artifacts.

One small artifact (examples/sensor_alarm.py, an MLP) is exported once; each test damages a
copy and checks that `verify`, `inspect` and `load_artifact` answer with one line naming the
file and what is wrong (exit 2), never a traceback, and never run what a hostile file asks for.
"""

import hashlib
import json
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import external_data_helper

from conftest import ROOT, run_cli
from exportable import api, cli, integrity
from exportable.errors import InputError
from exportable.inspect import inspect_model
from exportable.weights import load_state_dict

RECIPE = ROOT / "examples" / "sensor_alarm.py"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    out = tmp_path_factory.mktemp("sensor") / "artifact"
    api.export_recipe(str(RECIPE), out=out)
    return out


@pytest.fixture
def artifact(pristine, tmp_path):
    copy = tmp_path / "artifact"
    shutil.copytree(pristine, copy)
    return copy


def one_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


def cli_error(capsys, *argv) -> str:
    """Run the CLI in this process (an uncaught exception would fail the test); exit 2, one line."""
    code = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    return one_line(err)


def refused(call, *words) -> str:
    with pytest.raises(InputError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message
    return message


# --- 1. integrity -----------------------------------------------------------------------------

def test_every_model_file_is_recorded_in_report_and_manifest(pristine):
    manifest = json.loads((pristine / "vectors" / "manifest.json").read_text())
    report = json.loads((pristine / "report.json").read_text())
    data = (pristine / "model.onnx").read_bytes()

    want = {"model.onnx": {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}}
    assert manifest["files"] == want
    assert report["files"] == want


def flip_a_byte(path: Path) -> None:
    """Change one weight byte, keeping the size and a loadable graph: only the hash can tell."""
    model = onnx.load(str(path))
    weight = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    raw = bytearray(weight.raw_data)
    raw[1] ^= 0x40
    weight.raw_data = bytes(raw)
    before = path.stat().st_size
    onnx.save(model, str(path))
    assert path.stat().st_size == before


def test_a_changed_model_file_is_refused_by_verify_and_load(artifact, capsys):
    flip_a_byte(artifact / "model.onnx")
    line = cli_error(capsys, "verify", artifact)
    assert "model.onnx does not match its recorded sha256" in line and "--no-hash-check" in line
    refused(lambda: api.load_artifact(artifact), "model.onnx does not match its recorded sha256")
    refused(lambda: api.load_artifact(artifact / "model.onnx"), "recorded sha256")
    # opting out loads it (the changed weight is then judged by the vectors, not the hash)
    assert api.load_artifact(artifact, check_hash=False).run({"readings": np.zeros((2, 8), np.float32)})
    assert "DIFFERS" in inspect_model(artifact / "model.onnx")["integrity"]


def test_no_hash_check_replays_a_changed_file(artifact, capsys):
    flip_a_byte(artifact / "model.onnx")
    code = cli.main(["verify", str(artifact), "--no-hash-check"])
    out = capsys.readouterr()
    assert "sha256" not in out.err
    assert code in (0, 1)  # replayed: the vectors judge the changed weight


def test_a_truncated_file_is_named_by_its_size_before_hashing(artifact):
    path = artifact / "model.onnx"
    path.write_bytes(path.read_bytes()[:1000])
    refused(lambda: api.verify_artifact(artifact), "model.onnx is 1000 bytes", "cut short")


# --- 2. corrupt files -------------------------------------------------------------------------

DAMAGE = {
    "truncated": lambda b: b[: len(b) // 2],
    "empty": lambda b: b"",
    "zero-filled": lambda b: bytes(len(b)),
    "not ONNX": lambda b: b"\x89PNG\r\n\x1a\n" + os.urandom(2000),
    "text": lambda b: b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 12059\n",
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_model_file_is_one_line_everywhere(artifact, capsys, damage):
    path = artifact / "model.onnx"
    path.write_bytes(DAMAGE[damage](path.read_bytes()))
    # without the hash check the file's own content is judged
    message = refused(lambda: api.load_artifact(artifact, check_hash=False), "model.onnx")
    assert any(w in message for w in ("empty", "zero", "not a readable ONNX", "no complete ONNX", "does not load"))
    refused(lambda: api.load_artifact(artifact), "model.onnx")
    assert "model.onnx" in cli_error(capsys, "verify", artifact)
    assert "model.onnx" in cli_error(capsys, "verify", artifact, "--no-hash-check")
    assert "model.onnx" in cli_error(capsys, "inspect", path)


def test_verify_of_a_truncated_model_from_a_real_shell(artifact):
    """issue 27's report: a truncated model.onnx printed a protobuf DecodeError traceback."""
    path = artifact / "model.onnx"
    path.write_bytes(path.read_bytes()[:5000])
    for argv in (["verify", artifact, "--no-hash-check"], ["inspect", path]):
        result = run_cli(*argv)
        assert result.returncode == 2, result.stderr
        assert "model.onnx" in one_line(result.stderr)


def rewrite_manifest(artifact: Path, change) -> None:
    path = artifact / "vectors" / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


VECTOR_DAMAGE = {
    "manifest not JSON": (lambda a: (a / "vectors" / "manifest.json").write_text('{"format": "exportable.vec'),
                          "not valid JSON"),
    "manifest a list": (lambda a: (a / "vectors" / "manifest.json").write_text("[1, 2]"), "not an object"),
    "manifest lacks cases": (lambda a: rewrite_manifest(a, lambda d: d.pop("cases")), "missing key 'cases'"),
    "tensor shape not a list": (lambda a: rewrite_manifest(
        a, lambda d: d["cases"][0]["inputs"]["readings"].update(shape=7)), "malformed"),
    "tensor file missing": (lambda a: (a / "vectors" / "case_000" / "input.readings.bin").unlink(), "missing"),
    "tensor file cut short": (lambda a: (a / "vectors" / "case_001" / "expected.score.bin").write_bytes(b"\0" * 5),
                              "cut short"),
    "tensor file outside": (lambda a: rewrite_manifest(
        a, lambda d: d["cases"][0]["inputs"]["readings"].update(file="../../../etc/passwd")), "outside"),
    "report.json not JSON": (lambda a: (a / "report.json").write_bytes(b"\xff\xfe{garbage"), "report.json"),
}


@pytest.mark.parametrize("damage", VECTOR_DAMAGE)
def test_a_malformed_vectors_folder_or_report_is_one_line(artifact, capsys, damage):
    spoil, words = VECTOR_DAMAGE[damage]
    spoil(artifact)
    line = cli_error(capsys, "verify", artifact)
    assert words in line, line
    if damage in ("manifest not JSON", "manifest a list", "report.json not JSON"):  # records read before loading
        refused(lambda: api.load_artifact(artifact), words)
    if damage.startswith("report"):
        assert "report.json" in cli_error(capsys, "inspect", artifact / "model.onnx")


# --- 4. hostile artifacts ---------------------------------------------------------------------

def externalise(path: Path, location: str, data_at: Path | None = None) -> bytes:
    """Move model.onnx's biggest weight to external data at `location` (written to `data_at`)."""
    model = onnx.load(str(path))
    weight = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    raw = weight.raw_data
    if data_at is not None:
        data_at.write_bytes(raw)
    external_data_helper.set_external_data(weight, location=location, offset=0, length=len(raw))
    weight.data_location = onnx.TensorProto.EXTERNAL
    weight.ClearField("raw_data")
    onnx.save(model, str(path))
    return raw


def test_external_data_beside_the_model_still_loads(artifact):
    externalise(artifact / "model.onnx", "model.onnx.data", artifact / "model.onnx.data")
    runner = api.load_artifact(artifact, check_hash=False)
    assert runner.run({"readings": np.zeros((1, 8), np.float32)})["score"].shape == (1,)


@pytest.mark.parametrize("where", ["dotdot", "absolute", "symlink"])
def test_external_data_outside_the_folder_is_refused(artifact, tmp_path, capsys, where):
    outside = tmp_path / "secret.bin"
    location = {"dotdot": "../secret.bin", "absolute": str(outside), "symlink": "inside.bin"}[where]
    externalise(artifact / "model.onnx", location, outside)
    if where == "symlink":
        (artifact / "inside.bin").symlink_to(outside)
    refused(lambda: api.load_artifact(artifact, check_hash=False), "outside the model's folder")
    assert "outside the model's folder" in cli_error(capsys, "verify", artifact, "--no-hash-check")


def test_missing_or_truncated_external_data_is_named(artifact):
    raw = externalise(artifact / "model.onnx", "model.onnx.data")
    refused(lambda: api.load_artifact(artifact, check_hash=False), "model.onnx.data", "missing")
    (artifact / "model.onnx.data").write_bytes(raw[: len(raw) // 2])
    refused(lambda: api.load_artifact(artifact, check_hash=False), "model.onnx.data", "cut short")


def add_to_model(path: Path, change) -> None:
    model = onnx.load(str(path))
    change(model)
    onnx.save(model, str(path))
    integrity_records = json.loads((path.parent / "report.json").read_text())
    # the attacker also updates both records, so only the file's own checks can refuse it
    files = integrity.describe(path.parent, [path.name])
    integrity_records["files"] = files
    (path.parent / "report.json").write_text(json.dumps(integrity_records))
    rewrite_manifest(path.parent, lambda d: d.update(files=files))


def test_an_undeclared_custom_op_domain_is_refused(artifact, capsys):
    add_to_model(artifact / "model.onnx", lambda m: m.opset_import.add(domain="ai.onnx.contrib", version=1))
    line = cli_error(capsys, "verify", artifact)
    assert "ai.onnx.contrib" in line and "does not declare" in line
    refused(lambda: api.load_artifact(artifact), "does not declare")


def test_a_foreign_custom_op_domain_is_refused_even_when_declared(artifact):
    def evil(model):
        model.opset_import.add(domain="com.evil", version=1)
        for p in model.metadata_props:
            if p.key == "exportable.custom_op_domains":
                p.value = "com.evil"
    add_to_model(artifact / "model.onnx", evil)
    refused(lambda: api.load_artifact(artifact), "model.onnx needs", "com.evil", "cannot provide")


@pytest.mark.parametrize("key,value", [("custom_op_library", "libcustom.so"), ("exportable.ortx", "/tmp/x/libevil.so")])
def test_metadata_naming_a_library_is_refused(artifact, capsys, key, value):
    add_to_model(artifact / "model.onnx", lambda m: m.metadata_props.add(key=key, value=value))
    assert "asks for a library" in cli_error(capsys, "verify", artifact)
    refused(lambda: api.load_artifact(artifact), "never loads code")


class CreatesAFile:
    """A pickle whose loading would run code: open(marker, "w") creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("container", ["raw pickle", "torch.save zip"])
def test_a_pickle_that_runs_code_is_refused(artifact, tmp_path, capsys, container):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    if container == "raw pickle":
        evil.write_bytes(pickle.dumps({"weight": CreatesAFile(marker)}))
    else:
        torch.save({"weight": CreatesAFile(marker)}, evil)
        assert zipfile.is_zipfile(evil)
    # as --weights (vision recipes): torch.load(weights_only=True) refuses the global
    message = refused(lambda: load_state_dict(evil), "evil.pt", "never unpickled")
    assert len(message) < 400
    # as an artifact's model.pt: never unpickled as code
    shutil.copy(evil, artifact / "model.pt")
    refused(lambda: api.load_artifact(artifact, "torchscript", check_hash=False), "model.pt")
    assert "model.pt" in one_line(str(pytest.raises(InputError, api.load_artifact, artifact / "model.pt").value))
    assert not marker.exists(), "the pickle's code ran"


def test_a_damaged_torchscript_archive_is_one_line(artifact, tmp_path):
    scripted = torch.jit.script(torch.nn.Linear(2, 2))
    good = tmp_path / "good.pt"
    torch.jit.save(scripted, str(good))
    (artifact / "model.pt").write_bytes(good.read_bytes()[:-200])
    refused(lambda: api.load_artifact(artifact / "model.pt"), "model.pt")


def test_loading_a_runner_leaves_the_callers_subnormals_alone(pristine):
    """ONNX Runtime's denormal-as-zero setting used to leak into the thread that created the
    session: the user's own numpy code then flushed 1e-40 to 0 (runtime.caller_float_state)."""
    tiny = np.float32(1e-40)
    assert tiny * np.float32(1) > 0
    runner = api.load_artifact(pristine)
    runner.run({"readings": np.zeros((1, 8), np.float32)})
    assert tiny * np.float32(1) > 0
