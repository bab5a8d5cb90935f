"""text_classifier against transformers + numpy softmax/sigmoid + thresholds: exact decisions
(near thresholds too), both heads, the default trained head, a `--model` folder this test saves,
and the bad inputs."""

import json

import numpy as np
import pytest

from conftest import run_cli
from exportable import api, registry
from exportable.errors import InputError

FORMATS = "onnx,torchscript"  # the same export as tests/test_recipes.py's parity run (one per session)


def _load_recipe_module():
    import importlib

    return importlib.import_module("exportable.recipes.text_classifier")


tc = _load_recipe_module()


@pytest.fixture(scope="module")
def default_export(exported):
    folder = exported("text_classifier", FORMATS)
    return folder, exported.results[("text_classifier", FORMATS, ())][1].report


def _save_tiny(folder, minilm_dir, problem_type):
    """A small random BERT sequence classifier over the 5 topics, saved as `--model` expects."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    labels = tc.topic_labels()
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, num_labels=len(labels), id2label=dict(enumerate(labels)),
                        label2id={t: i for i, t in enumerate(labels)}, problem_type=problem_type)
    model = BertForSequenceClassification(config).eval()
    torch.nn.init.normal_(model.classifier.weight, std=1.0)  # logits O(1): scores spread over (0, 1)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(minilm_dir)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_multi(tmp_path_factory, minilm_dir):
    return _save_tiny(tmp_path_factory.mktemp("tc") / "tiny_multi", minilm_dir, "multi_label_classification")


def _metadata(folder):
    import onnx

    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    return model, {p.key: p.value for p in model.metadata_props}


def _all_passed(report, fmt):
    return report.parity[fmt] and all(r.passed for r in report.parity[fmt])


def test_default_single_label_export_is_meaningful_and_exact(default_export):
    folder, report = default_export
    model, meta = _metadata(folder)
    assert [i.name for i in model.graph.input] == ["text"]
    assert [o["name"] for o in json.loads(meta["exportable.outputs"])] == ["label_id", "score"]
    pre = json.loads(meta["exportable.preprocessing"])
    assert pre["head"] == "single" and pre["labels"] == ["finance", "food", "sports", "technology", "weather"]
    assert pre["training"]["held_out_accuracy"] >= 0.9 and pre["validation"]["texts"] >= 200
    for fmt in ("onnx", "torchscript"):
        assert _all_passed(report, fmt)
        ids = [m for r in report.parity[fmt] for m in r.metrics if m.output == "label_id"]
        assert sum(m.total for m in ids) >= 300 and not any(m.mismatched for m in ids)
    texts = ["Tomorrow brings snow and freezing wind.", "The midfielder scored a stunning goal.",
             "Shares rallied after the bank's earnings.", "Slice the onions and fry them in butter."]
    got = api.load_artifact(folder, "onnx").run({"text": np.array(texts, object)})
    assert [pre["labels"][i] for i in got["label_id"]] == ["weather", "sports", "finance", "food"]
    assert got["score"].dtype == np.float32 and (got["score"] > 0.2).all()


def test_multi_label_thresholds_file_near_scores_stays_exact(tiny_multi, tmp_path):
    """Thresholds put 2e-4..9e-4 from validation scores: the decisions still match exactly."""
    recipe = registry.get("text_classifier")(model=str(tiny_multi))
    texts = [t for _, t in tc.load_topics()][:64]
    scores = tc.sigmoid(recipe.logits(texts))
    offsets = [2e-4, -4e-4, 6e-4, -8e-4, 9e-4]
    lines = [f"{label}\t{scores[7 * c + 3, c] + offsets[c]:.9f}" for c, label in enumerate(recipe.labels)]
    (tmp_path / "t.tsv").write_text("# label<TAB>threshold\n" + "\n".join(lines) + "\n")
    result = api.export_recipe("text_classifier", out=tmp_path / "art", formats=FORMATS, model=str(tiny_multi),
                               thresholds=str(tmp_path / "t.tsv"))
    report = result.report
    assert _all_passed(report, "onnx") and _all_passed(report, "torchscript")
    pre = json.loads(_metadata(result.out)[1]["exportable.preprocessing"])
    assert pre["head"] == "multi" and pre["problem_type"] == "multi_label_classification"
    assert list(pre["thresholds"]) == recipe.labels and pre["decision"].count(">=") == 1
    assert pre["validation"]["within_0.001"] >= 5 and pre["validation"]["min_margin"] >= tc.GUARD
    # the measured rule: score error far below the smallest margin kept
    score_err = max(m.max_abs for rs in report.parity.values() for r in rs for m in r.metrics if m.output == "scores")
    assert score_err < 1e-5 <= pre["validation"]["min_margin"]
    labels = [m for r in report.parity["onnx"] for m in r.metrics if m.output == "labels"]
    assert sum(m.total for m in labels) >= 1000 and not any(m.mismatched for m in labels)


def test_single_label_model_folder_through_the_cli(tmp_path, minilm_dir):
    folder = _save_tiny(tmp_path / "tiny_single", minilm_dir, "single_label_classification")
    out = tmp_path / "art"
    result = run_cli("recipe", "text_classifier", "--model", folder, "--inputs", "ids", "--out", out)
    assert result.returncode == 0, result.stderr[-2000:]
    model, meta = _metadata(out)
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert meta["exportable.source_model"] == "tiny_single"
    assert json.loads(meta["exportable.preprocessing"])["head"] == "single"


def test_threshold_at_equality_is_positive():
    import torch

    from exportable.blocks.decision import MultiLabelDecision

    scores, labels = MultiLabelDecision([0.5, float(np.nextafter(np.float32(0.5), np.float32(1)))])(torch.zeros(1, 2))
    assert scores.tolist() == [[0.5, 0.5]] and labels.tolist() == [[True, False]]


def test_bad_inputs_are_one_line_errors(tiny_multi, tmp_path, minilm_dir):
    cls = registry.get("text_classifier")
    with pytest.raises(InputError, match=r"threshold 1\.5 is not a probability in \[0, 1\]"):
        cls(head="multi", threshold=1.5)
    (tmp_path / "bad.tsv").write_text("sports\t0.3\ncooking\t0.4\n")
    with pytest.raises(InputError, match=r"unknown label\(s\) \['cooking'\]; the model's labels are"):
        cls(model=str(tiny_multi), thresholds=str(tmp_path / "bad.tsv"))
    (tmp_path / "neg.tsv").write_text("sports\t-0.1\n")
    with pytest.raises(InputError, match=r"neg\.tsv:1: threshold '-0\.1' is not a probability"):
        cls(head="multi", thresholds=str(tmp_path / "neg.tsv"))
    with pytest.raises(InputError, match="apply to the multi-label head; add --head multi"):
        cls(threshold=0.3)
    result = run_cli("recipe", "text_classifier", "--model", minilm_dir)  # a BertModel, no classifier
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "is not a sequence classifier; pass a folder saved from " \
                               "AutoModelForSequenceClassification.save_pretrained(DIR)" in lines[0]
