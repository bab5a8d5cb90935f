"""Tokenizer kinds in the graph, decided by the pipeline itself (exportable.text.plan), against the
Hugging Face fast tokenizer as loaded: byte-level BPE on the real GPT-2 vocabulary (from the
openai-whisper sdist, no hub) and on a RoBERTa tokenizer trained here; the detokenizer against
`batch_decode`; a RoBERTa sentence encoder exported strings-in through sentence_bert."""

from __future__ import annotations

import json
import random

import numpy as np
import onnx
import pytest

from exportable import api, samples
from exportable.errors import InputError
from exportable.text.corpus import tokenizer_corpus
from exportable.text.decode_graph import build_decode_graph
from exportable.text.encode_graph import build_text_graph
from exportable.text.plan import plan_from_hf
from exportable.text.settings import TokenizerError

MAX_LENGTH = 64  # short, so that many corpus texts are truncated


def session(model):
    import onnxruntime as ort
    from onnxruntime_extensions import get_library_path

    options = ort.SessionOptions()
    options.register_custom_ops_library(get_library_path())
    return ort.InferenceSession(model.SerializeToString(), options)


@pytest.fixture(scope="session")
def roberta_dir(tmp_path_factory):
    """A RoBERTa byte-level BPE tokenizer trained here (its post-processor adds <s> ... </s>)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizer

    folder = tmp_path_factory.mktemp("roberta_tok")
    bpe = ByteLevelBPETokenizer()
    text = samples.sentences(400, seed=3) + [t.replace("\x00", "") for t in tokenizer_corpus(seed=5, size=300)]
    bpe.train_from_iterator(text, vocab_size=1200, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(folder))
    RobertaTokenizer.from_pretrained(str(folder), model_max_length=512).save_pretrained(folder)
    return folder


def load(folder, **kwargs):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), **kwargs)
    if tokenizer.pad_token is None:  # GPT-2: pad with end-of-text, as generation does
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def batches(texts, size):
    return [texts[i:i + size] for i in range(0, len(texts), size)]


KINDS = {"gpt2": "bytelevel-bpe", "roberta": "bytelevel-bpe", "xlmr": "unigram", "llama": "sentencepiece-bpe"}


@pytest.mark.parametrize("name", list(KINDS))
@pytest.mark.parametrize("side", ["right", "left"])
def test_ids_equal_hf_on_the_corpus(name, side, request):
    """Every corpus text (NUL, emoji, combining marks, "<s>" look-alikes, texts far over the
    limit) at batch 0, 1, 7 and 32, truncated at 64, padded on both sides, for each kind: the real
    GPT-2 vocabulary, and RoBERTa, XLM-R and Llama tokenizers trained here."""
    hf = load(request.getfixturevalue(f"{name}_dir"), padding_side=side, truncation_side=side)
    plan = plan_from_hf(hf, max_length=MAX_LENGTH)
    assert plan.kind == KINDS[name]
    run = session(build_text_graph(plan, opset=18))
    texts = tokenizer_corpus()
    assert any(len(hf(t)["input_ids"]) > MAX_LENGTH for t in texts) and any("\x00" in t for t in texts)
    for size in (1, 7, 32):
        for chunk in batches(texts, size):
            got = dict(zip(plan.outputs, run.run(None, {"text": np.array(chunk, dtype=object)})))
            want = hf(chunk, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="np")
            for output in plan.outputs:
                np.testing.assert_array_equal(got[output], want[output], err_msg=f"{output} of {chunk[:2]!r}")
    empty = run.run(None, {"text": np.zeros(0, dtype=object)})
    assert all(o.shape == (0, len(plan.prefix) + len(plan.suffix)) for o in empty)


def byte_ids(hf, kind: str) -> list[int]:
    """Tokens that stand for a lone byte >= 0x80 (continuation or lead bytes: invalid alone)."""
    if kind == "bytelevel-bpe":
        return [hf.convert_tokens_to_ids(c) for c in "ĢģĤĥ¢£¤¥¦§¨©ª«¬®¯°±²³´µ¶·¸¹º»¼½¾¿ÀÁÂÃÄÅÆÇÈÉÊËÌÍÎÏÐñòóôõö÷øùú"]
    if kind == "sentencepiece-bpe":
        return [hf.convert_tokens_to_ids(f"<0x{i:02X}>") for i in range(0x80, 0x100)]
    return list(range(len(hf)))  # Unigram and WordPiece pieces are whole characters


def nul_byte_id(hf, kind: str) -> int | None:
    token = {"bytelevel-bpe": "Ā", "sentencepiece-bpe": "<0x00>"}.get(kind)  # the token of byte 0
    return None if token is None else hf.convert_tokens_to_ids(token)


DECODERS = {**KINDS, "minilm": "wordpiece"}  # the bundled all-MiniLM-L6-v2's WordPiece


@pytest.mark.parametrize("name", list(DECODERS))
def test_detokenizer_equals_batch_decode(name, request):
    """Corpus round trips and random ids (lone bytes and broken sequences, special tokens,
    padding) at several batch sizes: `batch_decode(ids, skip_special_tokens=True)`, U+FFFD repair
    included (ByteLevel: one per maximal ill-formed run; ByteFallback: one per byte of a broken
    group). A decoded NUL byte is the one known difference: ortx StringJoin reads C strings."""
    hf = load(request.getfixturevalue(f"{name}_dir"))
    run = session(build_decode_graph(plan_from_hf(hf, max_length=MAX_LENGTH), opset=18,
                                     clean_up_tokenization_spaces=hf.clean_up_tokenization_spaces))
    nul_id = nul_byte_id(hf, DECODERS[name])

    def check(ids):
        got = run.run(None, {"ids": np.asarray(ids, np.int64).reshape(len(ids), -1)})[0].tolist()
        want = hf.batch_decode(ids, skip_special_tokens=True)
        assert got == [w.replace("\x00", "") for w in want]
        return sum("\x00" in w for w in want)

    texts = tokenizer_corpus()
    nul_rows = sum(check(hf(chunk, padding=True)["input_ids"]) for chunk in batches(texts, 32))
    assert nul_rows <= sum("\x00" in t for t in texts)  # the only rows whose text may differ
    rng = random.Random(0)
    invalid_bytes = byte_ids(hf, DECODERS[name])
    pool = [i for i in range(len(hf)) if i != nul_id]
    for _ in range(200):
        rows, width = rng.choice([1, 2, 7]), rng.choice([0, 1, 3, 17])
        check([[rng.choice(invalid_bytes) if rng.random() < 0.5 else rng.choice(pool) for _ in range(width)]
               for _ in range(rows)])


def test_detokenizer_takes_no_rows_and_no_columns(roberta_dir):
    run = session(build_decode_graph(plan_from_hf(load(roberta_dir), max_length=MAX_LENGTH), opset=18))
    assert run.run(None, {"ids": np.zeros((0, 3), np.int64)})[0].shape == (0,)
    assert run.run(None, {"ids": np.zeros((2, 0), np.int64)})[0].tolist() == ["", ""]


def test_an_unsupported_component_is_refused_naming_its_path(roberta_dir, tmp_path):
    """A pipeline piece the graph does not reproduce is one line naming it in tokenizer.json,
    never a silently different tokenization; the text recipes then ask for --inputs ids."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    hf = load(roberta_dir)
    backend = json.loads(hf.backend_tokenizer.to_str())
    backend["normalizer"] = {"type": "Lowercase"}
    hf._tokenizer = Tokenizer.from_str(json.dumps(backend))
    with pytest.raises(TokenizerError, match=r"tokenizer\.json normalizer 'Lowercase' is not supported"):
        build_text_graph(plan_from_hf(hf, max_length=MAX_LENGTH))

    word_level = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({"a": 0, "[UNK]": 1}, "[UNK]")))
    with pytest.raises(TokenizerError, match=r"model\.type 'WordLevel' .* is not supported; supported kinds"):
        plan_from_hf(word_level, max_length=8)

    folder = tmp_path / "wordlevel"
    word_level.save_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "roberta"}))
    (folder / "crf.safetensors").write_bytes(b"")
    from exportable import registry

    for name in ("sentence_bert", "text_classifier", "token_tagger"):
        with pytest.raises(InputError) as err:
            registry.get(name)(model=str(folder))
        assert "\n" not in str(err.value) and "WordLevel" in str(err.value)
        assert str(err.value).endswith("pass --inputs ids to export the ids-in graph")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["roberta", "xlmr", "llama"])
def test_sentence_encoder_exports_strings_in(name, request, tmp_path):
    """sentence_bert --model DIR with an encoder and each kind's tokenizer: strings in, every
    validation text (the whole Unicode corpus included) at cosine >= 0.99999 against
    SentenceTransformer.encode, in the export's own verify stage. (The Llama-style tokenizer
    sits on a RoBERTa-architecture encoder: what matters here is its pipeline in the graph.)"""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoConfig, AutoModel

    tokenizer = load(request.getfixturevalue(f"{name}_dir"))
    if tokenizer.pad_token is None or tokenizer.pad_token == tokenizer.eos_token:
        tokenizer.pad_token = tokenizer.unk_token
    torch.manual_seed(0)
    config = AutoConfig.for_model("xlm-roberta" if name == "xlmr" else "roberta", vocab_size=len(tokenizer),
                                  hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                  max_position_embeddings=130, pad_token_id=tokenizer.pad_token_id)
    encoder_dir = tmp_path / "encoder"
    AutoModel.from_config(config).eval().save_pretrained(encoder_dir)
    tokenizer.save_pretrained(encoder_dir)
    transformer = models.Transformer(str(encoder_dir), max_seq_length=128)
    st = SentenceTransformer(modules=[transformer, models.Pooling(32, "mean"), models.Normalize()], device="cpu")
    st.save(str(tmp_path / "st"))

    out = tmp_path / "artifact"
    result = api.export_recipe("sentence_bert", out=out, model=str(tmp_path / "st"))
    assert result.passed
    report = json.loads((out / "report.json").read_text())["parity"]["onnx"]
    assert report["passed"] and report["summary"][0]["min_cosine"] >= 0.99999
    assert sum(case["case"].startswith("corpus_") for case in report["cases"]) >= 38  # 1,200 texts at 7 and 32
    meta = {p.key: p.value for p in onnx.load(str(out / "model.onnx"), load_external_data=False).metadata_props}
    assert json.loads(meta["exportable.tokenizer"])["tokenizer"] == KINDS[name]


def test_bench_tokenizer_only_times_both_after_checking_ids(tmp_path):
    """`bench NAME --tokenizer-only`: the in-graph tokenizer and the HF fast tokenizer on the same
    texts at batch 1 and 32, timed only once their ids agree."""
    from conftest import run_cli

    done = run_cli("bench", "sentence_bert", "--tokenizer-only", "--seconds", "0.5", "--out", tmp_path)
    assert done.returncode == 0, done.stderr
    data = json.loads((tmp_path / "bench-tokenizer.json").read_text())
    assert [r["batch"] for r in data["rows"]] == [1, 32] and all(r["status"] == "ok" for r in data["rows"])
    assert all(r["hf_ms"] > 0 and r["graph_ms"] > 0 and r["speedup"] > 0 for r in data["rows"])
    assert "wordpiece" in done.stdout and "x hf" in done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("name", ["roberta", "xlmr"])
def test_token_tagger_strings_in_with_byte_level_and_metaspace_pieces(name, request, tmp_path):
    """token_tagger --model DIR with a RoBERTa (Ġ pieces) and an XLM-R (▁ pieces) tagger: every
    validation case has exactly the sequence length it is named for (the sweep's words are one
    token wherever they stand), and the export passes against transformers + Viterbi."""
    import torch
    from transformers import AutoConfig, AutoModelForTokenClassification

    from exportable import registry
    from exportable.blocks.crf import CRF, CRF_FILE

    tokenizer = load(request.getfixturevalue(f"{name}_dir"))
    tags = ["O", "B-X", "I-X"]
    torch.manual_seed(0)
    config = AutoConfig.for_model("xlm-roberta" if name == "xlmr" else "roberta", vocab_size=len(tokenizer),
                                  hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                  max_position_embeddings=130, pad_token_id=tokenizer.pad_token_id, num_labels=3,
                                  id2label=dict(enumerate(tags)), label2id={t: i for i, t in enumerate(tags)})
    folder = tmp_path / "tagger"
    AutoModelForTokenClassification.from_config(config).eval().save_pretrained(folder)
    tokenizer.model_max_length = 128
    tokenizer.save_pretrained(folder)
    crf = CRF(len(tags))
    torch.nn.init.normal_(crf.transitions)
    crf.save(folder / CRF_FILE)

    recipe = registry.get("token_tagger")(model=str(folder), inputs="ids")
    for case in recipe.validation_cases():
        if case.name.startswith("len") and case.name.endswith("batch1"):
            assert recipe.feed(case)["input_ids"].shape[1] == int(case.name[3:6]), case.name
    result = api.export_recipe("token_tagger", out=tmp_path / "artifact", model=str(folder))
    assert result.passed and all(r.passed for r in result.report.parity["onnx"])
