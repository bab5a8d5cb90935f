"""Crash safety (issue 27): an export killed with SIGKILL at any stage leaves the previous
artifact intact (or none), never half of one, and the next export removes what it left behind.

Real `python -m exportable recipe` processes kill themselves (SIGKILL, no cleanup can run) where
EXPORTABLE_TEST_CRASH_AT names: a stage as it starts, or a point inside publish.
"""

import hashlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from exportable import api, outfolder, stages
from exportable.stages import CRASH_AT

RECIPE = ROOT / "examples" / "sensor_alarm.py"


def fingerprint(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


@pytest.fixture(scope="module")
def previous(tmp_path_factory):
    out = tmp_path_factory.mktemp("previous") / "artifact"
    api.export_recipe(str(RECIPE), out=out, threshold=0.7)  # differs from the crashing export's files
    return out


def killed_export(out: Path, point: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "exportable", "recipe", str(RECIPE), "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), CRASH_AT: point})


# (point, whether a previous artifact exists at --out)
CRASHES = [("capture:onnx", False), ("verify:onnx", True), ("publish", True), ("publish:swapped", True)]


@pytest.mark.slow
@pytest.mark.parametrize("point,had_previous", CRASHES, ids=[f"{p}-{'over' if h else 'new'}" for p, h in CRASHES])
def test_sigkill_at_any_stage_leaves_the_previous_artifact_or_none(previous, tmp_path, point, had_previous):
    out = tmp_path / "artifact"
    if had_previous:
        shutil.copytree(previous, out)
    before = fingerprint(out) if had_previous else None

    result = killed_export(out, point)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert f"{point} ..." in result.stderr or point.startswith("publish")

    if point == "publish:swapped":  # killed after the atomic exchange: the new artifact, complete
        assert fingerprint(out) != before
        assert api.verify_artifact(out)
    elif had_previous:
        assert fingerprint(out) == before, "the previous artifact was changed"
    else:
        assert not out.exists(), "a half-made artifact was left at --out"

    # the next export to the same place starts by removing what the killed one left beside it
    # (prepare_out is its first step; a whole export is the fixture's and the other tests' job)
    assert point == "publish:swapped" or leftovers(out), "the killed export left nothing to clean?"
    temp = stages.prepare_out(out)
    assert leftovers(out) == [temp.name]


def test_a_crash_between_the_fallback_renames_is_undone_by_the_next_export(tmp_path):
    """Where renameat2 cannot exchange (other kernels, some filesystems) publish renames twice;
    a crash in between leaves the previous artifact under .old-PID-: it is put back."""
    out = tmp_path / "artifact"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    old = tmp_path / f".artifact.old-{dead_pid}-x1"
    old.mkdir()
    (old / "model.onnx").write_bytes(b"previous")
    stale = tmp_path / f".artifact.tmp-{dead_pid}-x2"
    stale.mkdir()
    mine = outfolder.temp_folder(out)  # a live export's temp folder (this process) stays
    handled = outfolder.clean_leftovers(out)
    assert sorted(handled) == sorted([old, stale])
    assert (out / "model.onnx").read_bytes() == b"previous"
    assert not stale.exists() and mine.exists()
