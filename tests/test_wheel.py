"""The wheel: built-ins install as exportable.recipes with their data files (no top-level
`recipes` package), every module is in it, and, installed into a fresh venv without the editable
finder, it lists and exports every built-in recipe from a folder outside the repo."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT

BUILT_INS = ("sentence_bert", "text_classifier", "token_tagger", "image_classifier", "object_detector",
             "yolo_nms", "tf_text_encoder")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # From a clean copy: setuptools reuses build/ in the source tree, where a stale module would
    # slip into the wheel (and the checkout would get build/ and *.egg-info written into it).
    source = out / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "artifacts", "__pycache__", ".pytest_cache", "consumers"))
    # --no-build-isolation: the build backend (setuptools, a torch dependency) is already here and
    # CI has no index for an isolated build env to fetch from faster than that.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out), str(source)], check=True, capture_output=True, text=True, timeout=300)
    (built,) = out.glob("exportable-*.whl")
    return built


def test_the_wheel_holds_every_module_and_data_file_under_exportable(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    top = sorted({n.split("/")[0] for n in names})
    assert top == ["exportable", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"]
    sources = {str(p.relative_to(ROOT)) for p in (ROOT / "exportable").rglob("*.py")}
    sources |= {"exportable/recipes/" + p.name for p in (ROOT / "recipes").glob("*.py")}
    missing = sorted(sources - names)
    assert not missing, f"modules left out of the wheel (add the package to pyproject.toml): {missing}"
    data = {"exportable/recipes/data/" + p.name for p in (ROOT / "recipes" / "data").iterdir()}
    assert data and data <= names
    entry = [n for n in names if n.endswith("entry_points.txt")]
    assert entry and "exportable = exportable.cli:main" in zipfile.ZipFile(wheel).read(entry[0]).decode()


@pytest.mark.slow  # a venv, then every built-in exported from the installed wheel: ~2 min
def test_the_installed_wheel_exports_every_built_in_outside_the_repo(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # The dependencies come from this environment's site-packages, appended by a .pth (.pth files
    # in a directory added this way are not run, so the editable finder of the checkout is not).
    (site / "dev-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True, text=True, timeout=300)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": "", "HF_HUB_OFFLINE": "1"}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(python), *args], cwd=work, env=env, capture_output=True, text=True, timeout=1800)

    where = run("-c", "import exportable, exportable.recipes as r; print(exportable.__file__); print(r.__file__)")
    assert where.returncode == 0, where.stderr
    assert all(line.startswith(str(site)) for line in where.stdout.split()), where.stdout
    assert run("-c", "import recipes").returncode != 0  # no top-level `recipes` package installed
    listed = run("-m", "exportable", "list")
    assert listed.returncode == 0, listed.stderr
    for name in BUILT_INS:
        assert name in listed.stdout
        result = run("-m", "exportable", "recipe", name, "--out", f"artifacts/{name}")
        assert result.returncode == 0, f"{name}: {result.stderr[-2000:]}"
        assert "parity PASSED" in result.stdout and (work / "artifacts" / name / "model.onnx").is_file()
