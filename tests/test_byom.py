"""Bring your own model (issue 22): the minimal recipe contract, recipe files and modules named on
the command line or passed to the API, and the one-line errors for each way they go wrong.

The recipes here are a user's: a seeded torch model whose original pipeline is that model run
eagerly in PyTorch. What is under test is exportable's contract (defaults, checks, errors), and
the artifact is compared with PyTorch itself."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from exportable import api, cli, registry
from exportable.errors import InputError
from exportable.hashing import sha256_state_dict
from exportable.recipe import Tolerance

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

MODEL = '''
import numpy as np
import torch
from exportable import Case, Recipe, TensorSpec


class Thresholded(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(8, 1)

    def forward(self, x):
        score = torch.sigmoid(self.linear(x)).squeeze(-1)
        return WRAPPER_RETURNS


def batch(n, seed):
    return np.random.default_rng(seed).normal(size=(n, 8)).astype(np.float32)
'''

MINIMAL = MODEL.replace("WRAPPER_RETURNS", "score, score > 0.5") + '''

class MyRecipe(Recipe):
    name = "my_model"
    inputs = (TensorSpec("x", "float32", ("batch", 8)),)
    outputs = (TensorSpec("score", "float32", ("batch",)), TensorSpec("flag", "bool", ("batch",)))

    def build_original(self):
        model = Thresholded().eval()

        def run(case):
            with torch.no_grad():
                score, flag = model(torch.from_numpy(case.data["x"]))
            return {"score": score.numpy(), "flag": flag.numpy()}

        return run

    def build_wrapper(self):
        return Thresholded().eval()

    def example_case(self):
        return Case("example", {"x": batch(2, 0)})

    def validation_cases(self):
        return [Case(f"batch_{n}", {"x": batch(n, n)}) for n in (1, 5, 17)]
'''


def write(folder: Path, text: str, name: str = "my_recipe.py") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("[")]  # not progress
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


def nothing_written(out: Path) -> bool:
    return not out.exists() and not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


# --- the minimal contract ------------------------------------------------------------------------
def test_the_minimal_recipe_exports_with_every_default(tmp_path):
    file = write(tmp_path, MINIMAL)
    result = api.export_recipe(str(file), out=tmp_path / "out")
    assert result.passed
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.onnx", "report.json", "report.md",
                                                                     "vectors"]  # format onnx only
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    # float outputs: torch.testing's fp32 tolerances; bool outputs: exact
    assert report["tolerances"] == {"score": Tolerance(atol=1e-5, rtol=1.3e-6).as_dict(), "flag": {"exact": True}}
    # the source: a hash of the wrapper's weights, the same one torch has for that module
    module = registry.load_file(file)
    assert report["source"]["sha256"] == sha256_state_dict(module.Thresholded().state_dict())

    # the artifact answers as PyTorch does on a batch size it was never shown
    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"))
    assert [(o.name, o.type) for o in session.get_outputs()] == [("score", "tensor(float)"), ("flag", "tensor(bool)")]
    x = module.batch(33, seed=99)
    score, flag = session.run(None, {"x": x})
    with torch.no_grad():
        want_score, want_flag = module.Thresholded().eval()(torch.from_numpy(x))
    np.testing.assert_allclose(score, want_score.numpy(), rtol=1.3e-6, atol=1e-5)
    np.testing.assert_array_equal(flag, want_flag.numpy())


def test_a_recipe_has_onnx_unless_it_declares_torchscript(tmp_path):
    file = write(tmp_path, MINIMAL)
    with pytest.raises(InputError, match="does not support 'torchscript'; it supports: onnx"):
        api.export_recipe(str(file), out=tmp_path / "out", formats="onnx,torchscript")
    assert nothing_written(tmp_path / "out")


def test_the_api_takes_a_class_or_an_instance(tmp_path):
    sensor = registry.load_file(EXAMPLES / "sensor_alarm.py")
    result = api.export_recipe(sensor.SensorAlarm(threshold=0.8), out=tmp_path / "instance")
    assert result.passed and result.report.options["threshold"] == 0.8
    result = api.export_recipe(sensor.SensorAlarm, out=tmp_path / "class", threshold=0.9)
    assert result.passed and result.report.options["threshold"] == 0.9
    with pytest.raises(InputError, match="pass the options to the class instead"):
        api.export_recipe(sensor.SensorAlarm(), out=tmp_path / "both", threshold=0.8)
    assert nothing_written(tmp_path / "both")


def test_options_are_checked_once_into_frozen_settings():
    sensor = registry.load_file(EXAMPLES / "sensor_alarm.py")
    assert sensor.SensorAlarm(threshold="0.8").settings["threshold"] == 0.8  # a CLI string, parsed
    assert sensor.SensorAlarm(threshold=1).settings["threshold"] == 1.0
    with pytest.raises(InputError, match=r"--threshold expects a float, got 'high'"):
        sensor.SensorAlarm(threshold="high")
    with pytest.raises(InputError, match=r"--threshold expects a float, got True"):
        sensor.SensorAlarm(threshold=True)
    with pytest.raises(InputError, match=r"has no option 'treshold'; its options: --threshold, --weights"):
        sensor.SensorAlarm(treshold=0.8)
    recipe = sensor.SensorAlarm()
    with pytest.raises(TypeError):
        recipe.settings["threshold"] = 0.1  # what the report records is what every stage used


def test_a_bad_option_value_on_the_cli_is_one_line(tmp_path, capsys):
    code, _, err = run_cli(["recipe", EXAMPLES / "sensor_alarm.py", "--threshold", "high", "--out", tmp_path / "o"],
                           capsys)
    assert_one_line_error(code, err, "--threshold expects a float, got 'high'")
    assert nothing_written(tmp_path / "o")


# --- the wrapper must return what the recipe declares ---------------------------------------------
@pytest.mark.parametrize("returns, needle", [
    ("score", "returns 1 output(s), the recipe declares 2 (score, flag)"),
    ("{'flag': score > 0.5, 'score': score}", "returns ['flag', 'score'], the recipe declares ['score', 'flag']"),
    ("score, (score > 0.5).float()", "output 'flag' is float32, declared bool"),
    ("score.unsqueeze(-1), score > 0.5", "output 'score' has rank 2"),
])
def test_a_wrapper_that_breaks_the_declared_outputs_is_refused(tmp_path, capsys, returns, needle):
    text = MINIMAL.replace("return score, score > 0.5", f"return {returns}")
    file = write(tmp_path, text)
    code, _, err = run_cli(["recipe", file, "--out", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, "recipe 'my_model': the wrapper", needle)
    assert nothing_written(tmp_path / "out")


def test_case_data_that_is_not_the_inputs_is_one_line(tmp_path, capsys):
    text = MINIMAL.replace('Case(f"batch_{n}", {"x": batch(n, n)})', 'Case(f"batch_{n}", {"features": batch(n, n)})')
    code, _, err = run_cli(["recipe", write(tmp_path, text), "--out", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, "case 'batch_1': data has ['features'], the inputs are ['x']")
    assert nothing_written(tmp_path / "out")


# --- recipe files and modules --------------------------------------------------------------------
TWO = MINIMAL + '''

class Other(MyRecipe):
    name = "other_model"
'''


def test_a_file_with_two_recipes_needs_a_class_name(tmp_path, capsys):
    file = write(tmp_path, TWO)
    code, _, err = run_cli(["recipe", file, "--out", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, "defines 2 recipes (MyRecipe, Other)", f"{file}:MyRecipe")
    code, out, err = run_cli(["recipe", f"{file}:Other", "--out", tmp_path / "out"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "out" / "report.json").read_text())["recipe"] == "other_model"


def test_a_module_path_exports_like_a_file(tmp_path, capsys, monkeypatch):
    package = tmp_path / "acme_models"
    package.mkdir()
    (package / "__init__.py").write_text("")
    write(package, MINIMAL, "alarm.py")
    monkeypatch.syspath_prepend(str(tmp_path))
    code, out, err = run_cli(["recipe", "acme_models.alarm:MyRecipe", "--out", tmp_path / "out"], capsys)
    assert code == 0, err
    assert "parity PASSED" in out
    assert registry.resolve("acme_models.alarm") is registry.resolve("acme_models.alarm:MyRecipe")


def test_recipe_help_of_a_file_lists_its_options(capsys):
    code, out, _ = run_cli(["recipe", EXAMPLES / "sensor_alarm.py", "--help"], capsys)
    assert code == 0
    assert "recipe sensor_alarm:" in out and "--threshold" in out and "[default 0.5]" in out


BAD_SPECS = {
    "missing file": (None, "./nowhere/my_recipe.py", "does not exist; pass the path of a .py file"),
    "syntax error": ("import numpy\nclass Broken(:\n    pass\n", None, "my_recipe.py:2: syntax error"),
    "raises on import": ("import numpy\nraise RuntimeError('no GPU here')\n", None,
                         "my_recipe.py:2: importing it raised RuntimeError: no GPU here"),
    "imports what is not installed": ("import not_a_real_package_xyz\n", None,
                                      "importing it raised ModuleNotFoundError"),
    "no recipe": ("import numpy\nclass Model:\n    pass\n", None, "defines no Recipe subclass"),
    "no name": ("from exportable import Recipe\nclass Mine(Recipe):\n    pass\n", None, "Mine sets no `name`"),
    "missing class": (MINIMAL, "{file}:Nope", "has no class 'Nope'; its recipes: MyRecipe"),
    "module that does not import": (None, "not_a_pkg_xyz.models:MyRecipe",
                                    "recipe module not_a_pkg_xyz.models: does not import"),
    "not a .py file": ("x = 1\n", "{txt}", "is not a .py file"),
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_a_bad_recipe_spec_is_one_line_and_writes_nothing(tmp_path, capsys, case):
    text, spec, needle = BAD_SPECS[case]
    file = write(tmp_path, text) if text is not None else tmp_path / "my_recipe.py"
    txt = tmp_path / "my_recipe.txt"
    txt.write_text("x = 1\n")
    spec = (spec or str(file)).format(file=file, txt=txt)
    code, _, err = run_cli(["recipe", spec, "--out", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, needle)
    assert nothing_written(tmp_path / "out")
