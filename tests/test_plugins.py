"""Plugins (issue 22): installed distributions that declare the entry-point group
`exportable.recipes`. The test makes three on a temporary sys.path entry, each a package plus a
real `*.dist-info` (METADATA + entry_points.txt, what pip writes), and drives the CLI in a fresh
interpreter the way a user would: a good plugin lists and exports by name, a broken one is listed
with its reason without hiding the others, and one that claims a built-in's name is refused with
both origins named."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_byom import MINIMAL

ROOT = Path(__file__).resolve().parents[1]


def dist(site: Path, name: str, version: str, entry_points: str, files: dict[str, str]) -> None:
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text("[exportable.recipes]\n" + textwrap.dedent(entry_points))
    for rel, text in files.items():
        path = site / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("plugins")
    alarm = MINIMAL.replace('name = "my_model"', 'name = "acme_alarm"').replace("class MyRecipe", "class AlarmRecipe")
    dist(site, "acme-recipes", "1.2.0", "acme_alarm = acme_recipes.alarm:AlarmRecipe\n",
         {"acme_recipes/__init__.py": "", "acme_recipes/alarm.py": alarm})
    dist(site, "broken-recipes", "0.1", "broken_thing = broken_recipes:Thing\n",
         {"broken_recipes/__init__.py": "raise ImportError('needs libfoo.so.3, which is not installed')\n"})
    clash = MINIMAL.replace('name = "my_model"', 'name = "sentence_bert"')
    dist(site, "clash-recipes", "0.3", "sentence_bert = clash_recipes:MyRecipe\n",
         {"clash_recipes/__init__.py": clash})
    return site


def exportable(site: Path, *args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    return subprocess.run([sys.executable, "-m", "exportable", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_list_shows_plugins_with_their_origin_and_survives_a_broken_one(site, tmp_path):
    done = exportable(site, "list", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line for line in done.stdout.splitlines()}
    assert "plugin acme-recipes 1.2.0 (entry point acme_alarm = acme_recipes.alarm:AlarmRecipe)" in rows["acme_alarm"]
    assert "broken: ImportError: needs libfoo.so.3" in rows["broken_thing"]
    assert "plugin broken-recipes 0.1" in rows["broken_thing"]
    assert "refused" in rows["sentence_bert"] and "built-in" in rows["sentence_bert"]
    for name in ("image_classifier", "text_classifier", "token_tagger", "yolo_nms"):  # the others are intact
        assert rows[name].endswith("[built-in]")


def test_a_plugin_exports_by_name(site, tmp_path):
    done = exportable(site, "recipe", "acme_alarm", "--out", tmp_path / "out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "parity PASSED" in done.stdout
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["recipe"] == "acme_alarm"


@pytest.mark.parametrize("name, needles", [
    ("sentence_bert", ("recipe name 'sentence_bert' is claimed by built-in and plugin clash-recipes 0.3",)),
    ("broken_thing", ("broken: ImportError: needs libfoo.so.3",)),
])
def test_a_refused_or_broken_plugin_is_one_line_and_writes_nothing(site, tmp_path, name, needles):
    done = exportable(site, "recipe", name, "--out", tmp_path / "out", cwd=tmp_path)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    assert not (tmp_path / "out").exists()
