"""The SentencePiece kinds in the graph (Unigram as XLM-R, byte-fallback BPE as Llama) against
the Hugging Face fast tokenizer as transformers loads it, on the Unicode corpus.

Vocabularies are trained here with the sentencepiece trainer (seeded corpus, small vocab) and
loaded through transformers' own XLMRobertaTokenizer / LlamaTokenizer, saved, and reloaded with
AutoTokenizer, so every expected id comes from Hugging Face, never from exportable.
"""

import json
import random
import unicodedata

import numpy as np
import onnxruntime as ort
import onnxruntime_extensions
import pytest
from onnx import TensorProto, helper

from exportable.onnx_builder import GraphBuilder
from exportable.text.corpus import tokenizer_corpus
from exportable.text.sentencepiece import sentencepiece_problem, sentencepiece_segment_ids
from exportable.text.settings import TokenizerError

CORPUS = tokenizer_corpus()
KINDS = ("unigram", "bpe")


@pytest.fixture(scope="module")
def tokenizers(xlmr_dir, llama_dir):
    from transformers import AutoTokenizer

    return {"unigram": AutoTokenizer.from_pretrained(str(xlmr_dir)),
            "bpe": AutoTokenizer.from_pretrained(str(llama_dir))}


def _graph_runner(backend: dict):
    b = GraphBuilder(17)
    ids, splits = sentencepiece_segment_ids(b, "segments", "first", backend)
    b.op("Identity", [ids], "ids")
    b.op("Identity", [splits], "splits")
    model = b.model("spm_test", [helper.make_tensor_value_info("segments", TensorProto.STRING, ["n"]),
                                 helper.make_tensor_value_info("first", TensorProto.BOOL, ["n"])],
                    [helper.make_tensor_value_info("ids", TensorProto.INT64, ["total"]),
                     helper.make_tensor_value_info("splits", TensorProto.INT64, ["n1"])])
    options = ort.SessionOptions()
    options.register_custom_ops_library(onnxruntime_extensions.get_library_path())
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    def run(texts, first=None):
        first = np.ones(len(texts), bool) if first is None else np.array(first, bool)
        ids, splits = session.run(["ids", "splits"], {"segments": np.array(texts, dtype=object), "first": first})
        assert splits.shape == (len(texts) + 1,)
        return [ids[splits[i]:splits[i + 1]].tolist() for i in range(len(texts))]

    return run


@pytest.fixture(scope="module")
def runners(tokenizers):
    return {kind: _graph_runner(json.loads(tok.backend_tokenizer.to_str())) for kind, tok in tokenizers.items()}


def _without_added(tok) -> list[str]:
    # Texts with an added token written in them ("<s>") are cut by the shared stage before this one.
    added = [t.content for t in tok.added_tokens_decoder.values()]
    return [t for t in CORPUS if not any(a in t for a in added)]


@pytest.mark.parametrize("batch", [1, 7, 32])
@pytest.mark.parametrize("kind", KINDS)
def test_ids_equal_hf_on_the_corpus(tokenizers, runners, kind, batch):
    tok, run = tokenizers[kind], runners[kind]
    texts = _without_added(tok)
    assert len(texts) > 0.95 * len(CORPUS)
    assert any("\x00" in t for t in texts) and "" in texts
    want = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    got = [ids for i in range(0, len(texts), batch) for ids in run(texts[i:i + batch])]
    wrong = [(t, w, g) for t, w, g in zip(texts, want, got) if w != g]
    assert not wrong, f"{len(wrong)} of {len(texts)} differ, first: {wrong[0]!r}"


def _cluster_texts(n: int, seed: int) -> list[str]:
    """Short random strings built to stress grapheme clusters (HF's Precompiled normalizer maps
    a cluster under 6 bytes by its shortest key prefix): units of an optional Prepend character,
    a base (NFKC-changing, decomposable, ASCII, control, Hangul jamo, regional indicator, emoji,
    whitespace, NUL, ▁) and 0-3 marks of 2-4 bytes (combining, spacing, ZWJ, variation
    selectors, emoji modifiers)."""
    chars = [chr(c) for c in range(0x20, 0x20000) if not 0xD800 <= c <= 0xDFFF]
    compat = [c for c in chars if unicodedata.decomposition(c).startswith("<")]
    marks = [c for c in chars if unicodedata.category(c) in ("Mn", "Mc", "Me")]
    marks += ["\u200d", "\ufe0f", "🏽", "\U000e0101", "\U000e0041"]
    decomposed = [unicodedata.normalize("NFD", c) for c in chars if len(unicodedata.normalize("NFD", c)) == 2]
    bases = [compat, [d[0] for d in decomposed], decomposed, list("abcxyzé"),
             [chr(c) for c in (*range(1, 32), 0x7F, 0x85, 0x9F, 0xAD, 0x200B, 0x2060, 0xFEFF)],
             [chr(c) for c in range(0x1100, 0x1200)], [chr(c) for c in range(0x1F1E6, 0x1F200)],
             ["👍", "™", "\u3000", " ", "\t", "\n", "\u2028", "\x00", "▁"]]
    prepend = ["\u0600", "\u0601", "\u0d4e", "\U000110bd"]
    rng = random.Random(seed)

    def unit() -> str:
        head = rng.choice(prepend) if rng.random() < 0.1 else ""
        return head + rng.choice(rng.choice(bases)) + "".join(rng.choice(marks) for _ in range(rng.choice((0, 1, 1, 2, 3))))

    return ["".join(unit() for _ in range(rng.randrange(1, 6))) for _ in range(n)]


@pytest.mark.parametrize("kind", KINDS)
def test_ids_equal_hf_on_grapheme_clusters(tokenizers, runners, kind):
    tok, run = tokenizers[kind], runners[kind]
    texts = _cluster_texts(1500, seed=11)
    want = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    got = [ids for i in range(0, len(texts), 32) for ids in run(texts[i:i + 32])]
    wrong = [(t, w, g) for t, w, g in zip(texts, want, got) if w != g]
    assert not wrong, f"{len(wrong)} of {len(texts)} differ, first: {wrong[0]!r}"


def test_empty_batch(runners):
    for run in runners.values():
        assert run([]) == []


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("text", ["hello</s> world", "hello</s>world", "</s>world", "a </s> b</s>", "x</s>"])
def test_segments_around_an_added_token(tokenizers, runners, kind, text):
    """A row cut at an added token, as the shared stage cuts it: only the first segment is
    `first` (Metaspace prepend_scheme "first" prepends ▁ there only; "always" everywhere)."""
    tok, run = tokenizers[kind], runners[kind]
    segments = text.split("</s>")
    ids = run(segments, first=[True] + [False] * (len(segments) - 1))
    joined = ids[0]
    for more in ids[1:]:
        joined = joined + [tok.convert_tokens_to_ids("</s>")] + more
    assert joined == tok(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("kind", KINDS)
def test_unsupported_components_are_named(tokenizers, kind):
    backend = json.loads(tokenizers[kind].backend_tokenizer.to_str())
    assert sentencepiece_problem(backend) is None
    lowercase = {**backend, "normalizer": {"type": "Lowercase"}}
    assert sentencepiece_problem(lowercase).startswith("normalizer: Lowercase is not supported")
    split = {**backend, "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "x"}, "behavior": "Isolated"}}
    assert sentencepiece_problem(split).startswith("pre_tokenizer: Split is not supported")
    with pytest.raises(TokenizerError, match="normalizer: Lowercase"):
        sentencepiece_segment_ids(GraphBuilder(17), "segments", "first", lowercase)


def test_bpe_merges_sentencepiece_cannot_order_are_refused(tokenizers):
    backend = json.loads(tokenizers["bpe"].backend_tokenizer.to_str())
    merges = [tuple(m) for m in backend["model"]["merges"]]
    made = [left + right for left, right in merges]
    # Drop one of two merges that make the same piece: sentencepiece would still make it that way.
    rank = next(i for i in range(1, len(made)) if made[i] == made[i - 1])
    backend["model"]["merges"] = [list(m) for m in merges[:rank] + merges[rank + 1:]]
    assert sentencepiece_problem(backend).startswith("model.merges: ")


def test_unigram_normalizer_sequence_of_the_old_t5_converter(tokenizers):
    """Sequence[Precompiled, Replace(" {2,}" -> " ")] (tokenizer.json files from the old T5
    converter) is accepted and exact; checked against tokenizers running that same JSON."""
    from tokenizers import Tokenizer

    backend = json.loads(tokenizers["unigram"].backend_tokenizer.to_str())
    collapse = {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "}
    backend["normalizer"] = {"type": "Sequence", "normalizers": [backend["normalizer"], collapse]}
    assert sentencepiece_problem(backend) is None
    reference, run = Tokenizer.from_str(json.dumps(backend)), _graph_runner(backend)
    texts = _without_added(tokenizers["unigram"])[:300]
    assert run(texts) == [reference.encode(t, add_special_tokens=False).ids for t in texts]


def test_bpe_legacy_prepend_normalizer(tokenizers):
    """The older Llama tokenizer.json (normalizer Prepend ▁ + Replace ' ' -> ▁, no pre-tokenizer):
    every segment gets ▁, even before a space; checked against tokenizers running that JSON."""
    from tokenizers import Tokenizer

    backend = json.loads(tokenizers["bpe"].backend_tokenizer.to_str())
    backend["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
    backend["pre_tokenizer"] = None
    assert sentencepiece_problem(backend) is None
    reference, run = Tokenizer.from_str(json.dumps(backend)), _graph_runner(backend)
    texts = _without_added(tokenizers["bpe"])
    assert run(texts) == [reference.encode(t, add_special_tokens=False).ids for t in texts]
    eos = reference.token_to_id("</s>")
    for text in ("hello</s> world", "</s>world", " a</s> b"):
        segments = text.split("</s>")
        ids = run(segments, first=[True] + [False] * (len(segments) - 1))
        assert ids[0] + [eos] + ids[1] == reference.encode(text, add_special_tokens=False).ids
