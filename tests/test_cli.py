"""The CLI as a user meets it: one-line errors, exit codes, nothing half-written."""

import numpy as np
import pytest
import torch

from conftest import run_cli
from exportable import cli, registry
from exportable.recipe import Case, Option, Recipe, TensorSpec, Tolerance


def _one_line_error(result, code, *words):
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_list_shows_recipes():
    result = run_cli("list")
    assert result.returncode == 0 and "sentence_bert" in result.stdout


def test_unknown_recipe():
    _one_line_error(run_cli("recipe", "sentense_bert"), 2, "unknown recipe", "did you mean sentence_bert")


def test_missing_model_path(tmp_path):
    out = tmp_path / "out"
    _one_line_error(run_cli("recipe", "sentence_bert", "--model", tmp_path / "nope", "--out", out), 2,
                    "no such folder")
    assert not out.exists()


def test_invalid_model_path(tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "config.json").write_text("{not json")
    out = tmp_path / "out"
    _one_line_error(run_cli("recipe", "sentence_bert", "--model", tmp_path / "junk", "--out", out), 2,
                    "could not load")
    assert not out.exists() and list(tmp_path.iterdir()) == [tmp_path / "junk"]


def test_unknown_format():
    _one_line_error(run_cli("recipe", "sentence_bert", "--format", "onnx,tflite"), 2, "unknown format 'tflite'")


def test_unsupported_opset():
    _one_line_error(run_cli("recipe", "sentence_bert", "--opset", "9"), 2, "opset 9 is not supported")


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    _one_line_error(run_cli("recipe", "sentence_bert", "--out", blocker / "sub"), 2, "cannot write there")


def test_unknown_recipe_option():
    _one_line_error(run_cli("recipe", "sentence_bert", "--colour", "red"), 2, "unknown option '--colour'")


def test_verify_and_inspect_bad_paths(tmp_path):
    _one_line_error(run_cli("verify", tmp_path / "none"), 2, "not an artifact folder")
    _one_line_error(run_cli("inspect", tmp_path / "none.onnx"), 2, "no file at")
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    _one_line_error(run_cli("inspect", tmp_path / "bad.onnx"), 2, "not a readable ONNX model")


class _Doubler(torch.nn.Module):
    def __init__(self, offset):
        super().__init__()
        self.offset = offset

    def forward(self, x):
        return x * 2 + self.offset


class _MismatchDemo(Recipe):
    """A tiny recipe whose wrapper is wrong by --offset, to drive the parity failure path."""

    name = "_mismatch_demo"
    formats = ("onnx",)
    original_pipeline = "x * 2"
    options = (Option("offset", "error injected into the wrapper", default=0.0, type=float),)

    def input_specs(self, fmt="onnx"):
        return (TensorSpec("x", "float32", ("batch",)),)

    def output_specs(self):
        return (TensorSpec("y", "float32", ("batch",)),)

    def tolerances(self):
        return {"y": Tolerance()}

    def source(self):
        from exportable.recipe import Source

        return Source("demo", "0" * 64)

    def build_original(self):
        return lambda case: {"y": case.data * 2}

    def build_wrapper(self, fmt="onnx"):
        return _Doubler(self.settings["offset"])

    def example_case(self):
        return Case("example", np.arange(3, dtype=np.float32))

    def validation_cases(self):
        return [Case("five", np.linspace(-1, 1, 5, dtype=np.float32))]

    def feed(self, case, fmt="onnx"):
        return {"x": case.data}


@pytest.fixture
def mismatch_recipe():
    registry.register(_MismatchDemo)
    yield
    registry.unregister(_MismatchDemo.name)


def test_parity_failure_exits_1_with_the_table_and_writes_nothing(mismatch_recipe, tmp_path, capsys):
    out = tmp_path / "out"
    code = cli.main(["recipe", "_mismatch_demo", "--offset", "0.01", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1
    assert "max abs" in err and "FAIL five / y" in err and "--allow-mismatch" in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_allow_mismatch_keeps_the_artifact_and_still_exits_1(mismatch_recipe, tmp_path, capsys):
    out = tmp_path / "out"
    code = cli.main(["recipe", "_mismatch_demo", "--offset", "0.01", "--out", str(out), "--allow-mismatch"])
    assert code == 1 and (out / "model.onnx").is_file() and (out / "report.json").is_file()
    assert "FAILED (kept because of --allow-mismatch)" in capsys.readouterr().out


def test_matching_tiny_recipe_passes(mismatch_recipe, tmp_path, capsys):
    assert cli.main(["recipe", "_mismatch_demo", "--out", str(tmp_path / "ok")]) == 0
    assert "parity PASSED" in capsys.readouterr().out
