"""docs/bring-your-own-model.md is a test: its exact command line exports examples/sensor_alarm.py
from a folder outside the package, and its Python snippet runs against the artifact; both are
checked against the example's own PyTorch pipeline."""

from __future__ import annotations

import importlib.util
import re
import shlex
import shutil
import subprocess
import sys

import numpy as np

from conftest import ROOT
from exportable.recipe import Case

DOC = ROOT / "docs" / "bring-your-own-model.md"
EXAMPLE = ROOT / "examples" / "sensor_alarm.py"


def blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


def the_command() -> str:
    lines = [line for block in blocks("console") for line in block.splitlines() if line.startswith("$ ")]
    assert len(lines) == 1, lines
    return lines[0][2:]


def load_example():
    spec = importlib.util.spec_from_file_location("sensor_alarm_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_tutorial_command_and_snippet_work_as_written(tmp_path):
    import onnxruntime as ort

    shutil.copy(EXAMPLE, tmp_path / EXAMPLE.name)
    argv = shlex.split(the_command())
    assert argv[:4] == ["python", "-m", "exportable", "recipe"] and argv[4] == "./sensor_alarm.py"
    result = subprocess.run([sys.executable, *argv[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    out_dir = tmp_path / argv[argv.index("--out") + 1]
    assert "parity PASSED; wrote artifacts/sensor_alarm/ (model.onnx, vectors/)" in result.stdout
    # The doc shows the run's table: the same outputs and case counts as this run printed.
    shown = [line for line in blocks("console")[0].splitlines() if line.startswith(("score ", "alarm "))]
    printed = [line for line in result.stdout.splitlines() if line.startswith(("score ", "alarm "))]
    assert [s.split()[:3] for s in shown] == [p.split()[:3] for p in printed]

    # The artifact against the example's own pipeline (numpy standardise + AlarmNet + threshold),
    # on readings the export never saw, with the threshold the command passed.
    example = load_example()
    threshold = float(argv[argv.index("--threshold") + 1])
    readings = example.readings(37, seed=123)
    readings[5] = example.MEAN  # exactly normal
    want = example.SensorAlarm(threshold=threshold).build_original()(Case("fresh", {"readings": readings}))
    score, alarm = ort.InferenceSession(str(out_dir / "model.onnx")).run(None, {"readings": readings})
    np.testing.assert_allclose(score, want["score"], rtol=1.3e-6, atol=1e-5)
    np.testing.assert_array_equal(alarm, want["alarm"])
    assert 0 < alarm.sum() < len(alarm)  # both decisions occur

    # The doc's snippet, run as a user would, prints what the doc says it prints.
    snippet = next(b for b in blocks("python") if "InferenceSession" in b)
    ran = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    claimed = re.search(r"prints `(.*?)`", DOC.read_text(encoding="utf-8")).group(1)
    assert ran.stdout.strip() == claimed
