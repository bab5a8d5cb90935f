"""The text families: one table of supported encoders for every text recipe and the tokenizer
reader, `--model` as a Hugging Face id from a cache the test builds, and every encoder the table
lists (a seeded classifier of each type, tokenizers trained or bundled here) exported and checked
against transformers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import run_cli
from exportable import api, registry, samples
from exportable.errors import InputError
from exportable.text import support

TEXT_RECIPES = ("sentence_bert", "text_classifier", "token_tagger")
COMMIT = "89abcdef0123456789abcdef0123456789abcdef"
# Types also exported strings-in here: WordPiece (bert, distilbert) and byte-level BPE (roberta).
TEXT_MODE_PROVEN = ("bert", "distilbert", "roberta")


def fake_folder(folder, model_type: str, architecture: str):
    """The files every text recipe's folder check asks for, with a config of `model_type`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": model_type, "architectures": [architecture]}))
    (folder / "crf.safetensors").write_bytes(b"")  # token_tagger's extra file; never read here
    return folder


@pytest.mark.parametrize("name", TEXT_RECIPES)
def test_every_text_recipe_refuses_an_unsupported_encoder_from_the_one_table(name, tmp_path):
    folder = fake_folder(tmp_path / "gpt2", "gpt2", "GPT2ForSequenceClassification")
    with pytest.raises(InputError) as err:
        registry.get(name)(model=str(folder))
    msg = str(err.value)
    assert "\n" not in msg and "model type 'gpt2' is not a supported encoder" in msg
    assert msg.endswith("supported: " + ", ".join(support.ENCODERS))


@pytest.mark.parametrize("name", TEXT_RECIPES)
def test_ids_inputs_need_no_tokenizer_in_the_graph(name, tmp_path):
    """With --inputs ids nothing reads the tokenizer's pipeline (tests/test_text_kinds.py has the
    refusals of a pipeline the graph cannot reproduce)."""
    folder = fake_folder(tmp_path / "rob", "roberta", "RobertaForSequenceClassification")
    registry.get(name)(model=str(folder), inputs="ids")


def test_the_wordpiece_reader_takes_any_class_name(tmp_path, minilm_dir):
    """The kind is decided by the pipeline, not by tokenizer_class: a WordPiece tokenizer saved
    under another class name (Electra's, say) is read the same way."""
    import shutil

    from exportable.text import TokenizerSettings

    for klass in ("BertTokenizerFast", "ElectraTokenizerFast", "SomethingElse"):
        folder = tmp_path / klass
        shutil.copytree(minilm_dir, folder)
        config = json.loads((folder / "tokenizer_config.json").read_text())
        (folder / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": klass}))
        settings = TokenizerSettings.from_pretrained(folder, max_length=64)
        assert settings.max_length == 64 and settings.vocab == TokenizerSettings.from_pretrained(minilm_dir).vocab


def _tiny_bert_classifier(folder, minilm_dir):
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=64, num_labels=3, max_position_embeddings=128)
    model = BertForSequenceClassification(config).eval()
    torch.nn.init.normal_(model.classifier.weight, std=1.0)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(minilm_dir)).save_pretrained(folder)
    return model


def test_model_as_a_hub_id_from_the_local_cache(tmp_path, monkeypatch, minilm_dir):
    import onnx
    import onnxruntime as ort
    import torch
    from onnxruntime_extensions import get_library_path
    from transformers import AutoTokenizer

    home = tmp_path / "hf"
    repo = home / "hub" / "models--acme--tiny-classifier"
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    original = _tiny_bert_classifier(snapshot, minilm_dir)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    out = tmp_path / "artifact"
    result = run_cli("recipe", "text_classifier", "--model", "acme/tiny-classifier", "--out", out)
    assert result.returncode == 0, result.stderr
    meta = {p.key: p.value for p in onnx.load(str(out / "model.onnx"), load_external_data=False).metadata_props}
    assert meta["exportable.source_model"] == "acme/tiny-classifier"

    # Fresh texts: the artifact (strings in) against the checkpoint in the cache, run by transformers.
    texts = samples.sentences(5, seed=99)
    options = ort.SessionOptions()
    options.register_custom_ops_library(get_library_path())
    got = ort.InferenceSession(str(out / "model.onnx"), options).run(None, {"text": np.array(texts, dtype=object)})
    enc = AutoTokenizer.from_pretrained(str(snapshot))(texts, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        probs = torch.softmax(original(**enc).logits, -1).numpy()
    np.testing.assert_array_equal(got[0], probs.argmax(-1))
    np.testing.assert_allclose(got[1], probs.max(-1), atol=1e-5)

    missing = run_cli("recipe", "text_classifier", "--model", "acme/not-cached", "--out", tmp_path / "none")
    assert missing.returncode == 2 and not (tmp_path / "none").exists()
    assert missing.stderr.strip().count("\n") == 0 and "not in the local Hugging Face cache" in missing.stderr


def _bpe_tokenizer(folder):
    """A RoBERTa byte-level BPE tokenizer trained here on sample text (ids in: no token types)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(samples.sentences(300, seed=1), vocab_size=400,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    folder.mkdir(parents=True)
    bpe.save_model(str(folder))
    return RobertaTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"), model_max_length=512)


def _wordpiece_tokenizer(model_type: str, minilm_dir):
    from transformers import AutoTokenizer, DistilBertTokenizerFast

    # DistilBERT's own tokenizer class: its model takes no token_type_ids.
    cls = DistilBertTokenizerFast if model_type == "distilbert" else AutoTokenizer
    return cls.from_pretrained(str(minilm_dir))


def _tiny_classifier(folder, model_type: str, minilm_dir):
    """A seeded 2-layer `model_type` sequence classifier (transformers' own class for that type)
    and a tokenizer it can read, saved as `--model` expects."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    roberta_like = model_type in support.POSITION_OFFSET
    tok = _bpe_tokenizer(folder) if roberta_like else _wordpiece_tokenizer(model_type, minilm_dir)
    sizes = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}
    if model_type == "distilbert":
        sizes = {"dim": 32, "n_layers": 2, "n_heads": 4, "hidden_dim": 64}
    if model_type == "albert":
        sizes["embedding_size"] = 16
    config = AutoConfig.for_model(model_type, vocab_size=len(tok), num_labels=3, pad_token_id=tok.pad_token_id,
                                  max_position_embeddings=514 if roberta_like else 512, **sizes)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("model_type", support.ENCODERS)
def test_every_listed_encoder_exports_with_ids_inputs_and_matches_transformers(model_type, tmp_path, minilm_dir):
    """Each model type the table lists, as transformers builds it, exported with --inputs ids
    (text inputs too where the table says the tokenizer is in the graph) and checked against
    transformers + softmax on the validation texts, the one over max length included."""
    folder = _tiny_classifier(tmp_path / model_type, model_type, minilm_dir)
    modes = ("ids", "text") if model_type in TEXT_MODE_PROVEN else ("ids",)
    for inputs in modes:
        result = api.export_recipe("text_classifier", out=tmp_path / f"artifact_{inputs}", model=str(folder),
                                   inputs=inputs, formats="onnx")
        results = result.report.parity["onnx"]
        assert results and all(r.passed for r in results), (model_type, inputs)
    recipe = registry.get("text_classifier")(model=str(folder), inputs="ids")
    longest = max(recipe.feed(case)["input_ids"].shape[1] for case in recipe.validation_cases())
    # the last position each model embeds: 512 (RoBERTa-style: 514 minus the padding offset of 2)
    assert longest == recipe.max_length == 512
