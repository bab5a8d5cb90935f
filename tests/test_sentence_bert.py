"""sentence_bert against the real sentence-transformers, through the public API and the CLI."""

import json

import numpy as np
import pytest

from conftest import run_cli
from exportable import api, samples


def _ids(st, texts):
    feats = st.preprocess(texts)
    return {k: feats[k].numpy() for k in ("input_ids", "attention_mask", "token_type_ids")}


def _assert_matches(got, want):
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-5
    cos = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    assert cos.min() >= 0.99999


def test_text_artifact_matches_sentence_transformers_on_fresh_texts(exported, sentence_transformer):
    """Strings in, as a Java or Go program would pass them; texts and batch sizes that neither the
    export example nor its validation used."""
    folder = exported("sentence_bert", "onnx,torchscript")
    texts = samples.sentences(23, seed=99) + ["", samples.long_text(600, seed=5), "Café naïve résumé 東京 😀"]
    want = sentence_transformer.encode(texts, convert_to_numpy=True)
    onnx_runner = api.load_artifact(folder, "onnx")
    assert [n for n in onnx_runner.input_specs] == ["text"]
    _assert_matches(onnx_runner.run({"text": np.array(texts, dtype=object)})["sentence_embedding"], want)
    ts = api.load_artifact(folder, "torchscript").run(_ids(sentence_transformer, texts))["sentence_embedding"]
    _assert_matches(ts, want)


@pytest.mark.parametrize("batch", [0, 1, 7, 32])
def test_text_artifact_batches(exported, sentence_transformer, batch):
    from exportable.text.corpus import tokenizer_corpus

    texts = tokenizer_corpus()[100:100 + batch]
    got = api.load_artifact(exported("sentence_bert", "onnx,torchscript")).run(
        {"text": np.array(texts, dtype=object)})["sentence_embedding"]
    assert got.shape == (batch, 384)
    if batch:
        _assert_matches(got, sentence_transformer.encode(texts))


def test_ids_input_mode_is_kept(exported, sentence_transformer):
    folder = exported("sentence_bert", "onnx", inputs="ids")
    runner = api.load_artifact(folder)
    assert sorted(runner.input_specs) == ["attention_mask", "input_ids", "token_type_ids"]
    texts = ["ids in, for users who tokenize themselves", "x"]
    _assert_matches(runner.run(_ids(sentence_transformer, texts))["sentence_embedding"],
                    sentence_transformer.encode(texts))


@pytest.mark.parametrize("bad,message", [
    (np.array([[101, 102]], dtype=np.int64), "must be a string tensor"),
    (np.array([["a", "b"]], dtype=object), "must have rank 1"),
    (np.array([b"caf\xc3"], dtype=object), "not valid UTF-8"),
    (np.array([3], dtype=object), "must hold strings"),
])
def test_bad_text_input_is_a_clear_error(exported, bad, message):
    from exportable.errors import InputError

    runner = api.load_artifact(exported("sentence_bert", "onnx,torchscript"))
    with pytest.raises(InputError, match=message):
        runner.run({"text": bad})


def test_torchscript_cannot_run_an_empty_batch_and_the_report_says_so(exported):
    report = json.loads((exported("sentence_bert", "onnx,torchscript") / "report.json").read_text())
    na = [c for c in report["parity"]["torchscript"]["cases"] if c["failures"] == {} and not c["metrics"]]
    assert [c["case"] for c in na] == ["corpus_batch0"]


def test_artifact_layout_metadata_and_report(exported, minilm_dir):
    import hashlib

    import onnx

    folder = exported("sentence_bert", "onnx,torchscript")
    assert {"model.onnx", "model.pt", "report.json", "report.md", "vectors"} <= {p.name for p in folder.iterdir()}
    assert not any(p.name.endswith(".data") for p in folder.iterdir())  # single file
    meta = {p.key: p.value for p in onnx.load(str(folder / "model.onnx"), load_external_data=False).metadata_props}
    assert meta["exportable.recipe"] == "sentence_bert"
    assert meta["exportable.opset"] == "18"
    h = hashlib.sha256()
    h.update(b"model.safetensors")
    h.update((minilm_dir / "model.safetensors").read_bytes())
    assert meta["exportable.source_sha256"] == h.hexdigest()
    report = json.loads((folder / "report.json").read_text())
    assert [s["status"] for s in report["stages"]] == ["ok"] * len(report["stages"])
    assert report["parity"]["onnx"]["passed"] and report["versions"]["torch"]


def test_validation_covers_50_sentences_and_the_corpus(exported):
    from exportable import vectors

    vecs = vectors.read(exported("sentence_bert", "onnx,torchscript") / "vectors")
    sizes = [c.inputs["text"].shape[0] for c in vecs.cases]
    basic = [s for c, s in zip(vecs.cases, sizes) if not c.name.startswith("corpus")]
    assert sum(basic) >= 50 and set(basic) == {1, 3, 17}
    assert sum(sizes) >= 1050 and {0, 7, 32} <= set(sizes)
    ids = [c.inputs_for("torchscript")["input_ids"] for c in vecs.cases if "torchscript" in c.inputs_by_format]
    assert max(i.shape[1] for i in ids) == 256  # truncation case


def test_verify_command_replays_vectors_and_catches_tampering(exported, tmp_path):
    import shutil

    folder = exported("sentence_bert", "onnx,torchscript")
    ok = run_cli("verify", folder)
    assert ok.returncode == 0, ok.stderr
    assert "verify PASSED: 106 cases" in ok.stdout
    copy = tmp_path / "tampered"
    shutil.copytree(folder, copy)
    first = sorted((copy / "vectors" / "case_000").glob("expected.*.bin"))[0]
    data = np.fromfile(first, dtype="<f4")
    data[0] += 1e-3
    data.tofile(first)
    bad = run_cli("verify", copy, "--format", "onnx")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "case_000" not in bad.stderr and "batch1_000 / sentence_embedding" in bad.stderr


def test_model_path_with_a_checkpoint_the_test_saves(tmp_path, minilm_dir):
    """A tiny seeded BERT with mean pooling and no Normalize module, saved as a
    sentence-transformers folder, exported through --model."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel, BertTokenizerFast

    torch.manual_seed(0)
    folder = tmp_path / "tiny-st"
    hf = tmp_path / "tiny-hf"
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(hf)
    BertTokenizerFast.from_pretrained(minilm_dir).save_pretrained(hf)
    st = SentenceTransformer(modules=[models.Transformer(str(hf), max_seq_length=64),
                                      models.Pooling(32, pooling_mode="mean")], device="cpu")
    st.save(str(folder))
    out = tmp_path / "artifact"
    result = run_cli("recipe", "sentence_bert", "--model", folder, "--out", out, "--format", "onnx,torchscript")
    assert result.returncode == 0, result.stderr
    texts = ["a tiny model", "with no normalisation at all, and a longer second sentence"]
    want = SentenceTransformer(str(folder), device="cpu").encode(texts)
    assert abs(np.linalg.norm(want[0]) - 1) > 1e-3  # really un-normalised
    got = api.load_artifact(out).run({"text": np.array(texts, dtype=object)})
    np.testing.assert_allclose(got["sentence_embedding"], want, atol=1e-5, rtol=0)
