"""token_tagger against transformers + the numpy Viterbi: exact paths at every length 1..128,
both artifacts, the default model and a `--model` folder this test saves."""

import json

import numpy as np
import pytest

from conftest import run_cli
from exportable import api, registry, vectors
from exportable.errors import InputError

FORMATS = "onnx,torchscript"  # the same export as tests/test_recipes.py's parity run (one per session)
TINY_TAGS = ["O", "B-X", "I-X", "B-Y", "I-Y"]


@pytest.fixture(scope="module")
def default_export(exported):
    folder = exported("token_tagger", FORMATS)
    return folder, exported.results[("token_tagger", FORMATS, ())][1].report


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, minilm_dir):
    """A small random BERT token classifier saved as the `--model` folder format documents."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForTokenClassification

    from exportable.blocks.crf import CRF

    folder = tmp_path_factory.mktemp("tagger") / "tiny_tagger"
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, num_labels=len(TINY_TAGS), id2label=dict(enumerate(TINY_TAGS)),
                        label2id={t: i for i, t in enumerate(TINY_TAGS)})
    model = BertForTokenClassification(config).eval()
    torch.nn.init.normal_(model.classifier.weight, std=0.5)  # emissions O(1), like a trained head
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(minilm_dir)).save_pretrained(folder)
    CRF.seeded(len(TINY_TAGS), seed=3).save(folder / "crf.safetensors")
    return folder


def _metadata(folder):
    import onnx

    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    return model, {p.key: p.value for p in model.metadata_props}


def test_every_length_1_to_128_decodes_exactly_in_both_artifacts(default_export):
    folder, report = default_export
    cases = vectors.read(folder / "vectors").cases
    ids = [c.inputs_for("torchscript") for c in cases]  # the ONNX artifact takes the texts themselves
    assert all(list(c.inputs) == ["text"] for c in cases)
    lengths = {i["input_ids"].shape[1] for i in ids}
    assert set(range(1, 129)) - {1} <= lengths and 512 in lengths  # the sweep + one truncated at max_length
    mixed = [i for i in ids if len(set(i["attention_mask"].sum(1).tolist())) > 1]
    assert len(mixed) >= 16  # batches whose rows have different lengths (padding inside the batch)
    for fmt in ("onnx", "torchscript"):
        results = report.parity[fmt]
        assert len(results) == len(cases) and all(r.passed for r in results)
        tags = [m for r in results for m in r.metrics if m.output == "tags"]
        assert sum(m.total for m in tags) > 10_000 and not any(m.mismatched for m in tags)
        scores = [m for r in results for m in r.metrics if m.output == "score"]
        assert max(m.max_abs for m in scores) <= 1e-3  # measured: <= 2.5e-4 on ONNX, 0 on TorchScript


def test_onnx_artifact_decodes_with_a_real_loop_and_documents_its_tags(default_export):
    from exportable import graph

    folder, report = default_export
    model, meta = _metadata(folder)
    assert graph.node_counts(model).get("Loop", 0) >= 2  # Viterbi recursion + backtracking
    assert report.stages[[s.name for s in report.stages].index("capture:onnx")].detail["strategy"] == "legacy"
    pre = json.loads(meta["exportable.preprocessing"])
    assert pre["tags"][:3] == ["O", "B-PER", "I-PER"] and len(pre["tags"]) == 9 and pre["padding_tag"] == -1
    assert [o["name"] for o in json.loads(meta["exportable.outputs"])] == ["tags", "score"]


def test_fresh_inputs_match_transformers_plus_reference_viterbi(default_export):
    """A length the validation never used (200), left and right padding, against a fresh original."""
    folder, _ = default_export
    recipe = registry.get("token_tagger")()
    rng = np.random.default_rng(42)
    ids = rng.integers(1000, 20000, (3, 200)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, 150:] = 0
    mask[2, :30] = 0
    feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    from exportable.recipe import Case

    want = recipe.build_original()(Case("fresh", feed))
    assert _metadata(folder)[1]["exportable.source_sha256"] == recipe.source().sha256  # seeded = reproducible
    got = api.load_artifact(folder, "torchscript").run(feed)  # ids in: any mask, left padding too
    np.testing.assert_array_equal(got["tags"], want["tags"])
    assert (got["tags"][mask == 0] == -1).all() and (got["tags"][mask == 1] >= 0).all()
    np.testing.assert_allclose(got["score"], want["score"], atol=1e-3, rtol=1e-5)
    texts = ["Ada Lovelace met Charles Babbage in London.", " ".join(["token"] * 198), ""]
    want = recipe.build_original()(Case("fresh_text", texts))
    got = api.load_artifact(folder, "onnx").run({"text": np.array(texts, dtype=object)})  # strings in
    np.testing.assert_array_equal(got["tags"], want["tags"])
    np.testing.assert_allclose(got["score"], want["score"], atol=1e-3, rtol=1e-5)


def test_local_model_folder_through_the_cli(tiny_model, tmp_path):
    out = tmp_path / "art"
    result = run_cli("recipe", "token_tagger", "--model", tiny_model, "--format", FORMATS, "--out", out)
    assert result.returncode == 0, result.stderr[-2000:]
    _, meta = _metadata(out)
    assert json.loads(meta["exportable.preprocessing"])["tags"] == TINY_TAGS
    assert meta["exportable.source_model"] == "tiny_tagger"
    assert all(r.passed for rs in api.verify_artifact(out).values() for r in rs)


@pytest.mark.slow  # the tokenizer graph is built and merged: ~15 s more
def test_text_inputs_put_the_tokenizer_in_front(tiny_model, tmp_path):
    """--inputs text: strings in (ONNX), ids in (TorchScript), the same exact paths."""
    result = api.export_recipe("token_tagger", out=tmp_path / "art", formats=FORMATS, model=str(tiny_model),
                               inputs="text")
    assert result.passed
    model, _ = _metadata(result.out)
    assert [i.name for i in model.graph.input] == ["text"]
    onnx_out = api.load_artifact(result.out, "onnx").run({"text": np.array(["Ada met Grace.", "Hi"], object)})
    assert onnx_out["tags"].shape == (2, 6) and (onnx_out["tags"][1, 3:] == -1).all()


def test_bad_model_folders_name_the_fix(tiny_model, tmp_path):
    import shutil

    from exportable.blocks.crf import CRF

    cls = registry.get("token_tagger")
    with pytest.raises(InputError, match="no such folder"):
        cls(model=str(tmp_path / "nope"))
    no_crf = tmp_path / "no_crf"
    shutil.copytree(tiny_model, no_crf)
    (no_crf / "crf.safetensors").unlink()
    with pytest.raises(InputError, match=r"no crf\.safetensors; write it with .*CRF\.save"):
        cls(model=str(no_crf))
    CRF.seeded(4).save(no_crf / "crf.safetensors")
    with pytest.raises(InputError, match="has 4 tags but config.json's id2label has 5"):
        cls(model=str(no_crf)).build_original()
