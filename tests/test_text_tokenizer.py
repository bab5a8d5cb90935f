"""The tokenizer graph against the real Hugging Face tokenizer of the bundled all-MiniLM-L6-v2.

Every expected value comes from `AutoTokenizer.from_pretrained(model_dir)` (or, for the
character table, from Python's unicodedata), never from exportable's own code.
"""

import json
import shutil
import unicodedata
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import onnxruntime_extensions
import pytest

from exportable.text import TokenizerSettings, build_tokenizer_graph
from exportable.text.corpus import tokenizer_corpus
from exportable.text.normalize import MAX_CODE_POINT, char_table

MAX_LENGTH = 256
OUTPUTS = ("input_ids", "attention_mask", "token_type_ids")


# --- fixtures and helpers ----------------------------------------------------------------------

def _runner(model):
    so = ort.SessionOptions()
    so.register_custom_ops_library(onnxruntime_extensions.get_library_path())
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])

    def run(texts):
        return dict(zip(OUTPUTS, sess.run(list(OUTPUTS), {"text": np.array(texts, dtype=object)})))

    return run


def _hf_runner(model_dir, max_length=MAX_LENGTH):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))

    def run(texts):
        enc = tok(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="np")
        return {name: enc[name].astype(np.int64) for name in OUTPUTS}

    run.tokenizer = tok
    return run


@pytest.fixture(scope="module")
def settings(minilm_dir):
    return TokenizerSettings.from_pretrained(minilm_dir, max_length=MAX_LENGTH)


@pytest.fixture(scope="module")
def graph(settings):
    return build_tokenizer_graph(settings, opset=17)


@pytest.fixture(scope="module")
def run(graph):
    return _runner(graph)


@pytest.fixture(scope="module")
def hf(minilm_dir):
    return _hf_runner(minilm_dir)


@pytest.fixture(scope="module")
def corpus():
    return tokenizer_corpus()


def _mismatches(run, hf, texts, batch_size):
    """(index, text, ours, theirs) for every text whose row differs from HF's."""
    bad = []
    for start in range(0, len(texts), batch_size):
        batch = texts[start:start + batch_size]
        ours, theirs = run(batch), hf(batch)
        for name in OUTPUTS:
            assert ours[name].dtype == np.int64
            assert ours[name].shape == theirs[name].shape, (name, start, ours[name].shape, theirs[name].shape)
        for i in range(len(batch)):
            if any(not np.array_equal(ours[n][i], theirs[n][i]) for n in OUTPUTS):
                bad.append((start + i, batch[i], ours["input_ids"][i].tolist(), theirs["input_ids"][i].tolist()))
    return bad


def _report(bad, total):
    lines = [f"{len(bad)} of {total} texts differ from the HF tokenizer"]
    lines += [f"  #{i} {text[:80]!r}\n    graph {ours[:24]}\n    hf    {theirs[:24]}"
              for i, text, ours, theirs in bad[:8]]
    return "\n".join(lines)


# --- the graph -----------------------------------------------------------------------------------

def test_graph_is_valid_onnx_with_the_documented_interface(graph):
    onnx.checker.check_model(graph, full_check=True)
    assert {o.domain: o.version for o in graph.opset_import}[""] == 17
    (text,) = graph.graph.input
    assert text.name == "text" and text.type.tensor_type.elem_type == onnx.TensorProto.STRING
    assert [d.dim_param for d in text.type.tensor_type.shape.dim] == ["batch"]
    for out, name in zip(graph.graph.output, OUTPUTS):
        assert out.name == name and out.type.tensor_type.elem_type == onnx.TensorProto.INT64
        assert [d.dim_param for d in out.type.tensor_type.shape.dim] == ["batch", "sequence"]
    meta = json.loads({p.key: p.value for p in graph.metadata_props}["exportable.tokenizer"])
    assert meta["max_length"] == MAX_LENGTH and meta["vocab_size"] == 30522


def test_build_is_deterministic_and_quiet(settings, graph):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. the combining-mark reordering warning
        again = build_tokenizer_graph(settings, opset=17)
    assert again.SerializeToString() == graph.SerializeToString()


@pytest.mark.parametrize("opset", [13, 20])
def test_opset_is_honored(settings, minilm_dir, opset):
    model = build_tokenizer_graph(settings, opset=opset)
    assert {o.domain: o.version for o in model.opset_import}[""] == opset
    texts = ["Ça\x00va? [SEP]", "a\x00\x00b", "[SE\x00P]", "\x00"]
    out = _runner(model)(texts)
    ref = _hf_runner(minilm_dir)(texts)
    for name in OUTPUTS:
        np.testing.assert_array_equal(out[name], ref[name])


@pytest.mark.parametrize("opset", [12, 99, "17"])
def test_unsupported_opset_is_refused(settings, opset):
    with pytest.raises(ValueError, match="opset"):
        build_tokenizer_graph(settings, opset=opset)


# --- parity on the corpus ------------------------------------------------------------------------

def test_corpus_parity_in_batches_of_32(run, hf, corpus):
    bad = _mismatches(run, hf, corpus, 32)
    assert not bad, _report(bad, len(corpus))


def test_corpus_parity_one_text_at_a_time(run, hf, corpus):
    bad = _mismatches(run, hf, corpus, 1)
    assert not bad, _report(bad, len(corpus))


@pytest.mark.parametrize("size", [1, 7, 32])
def test_batch_sizes(run, hf, corpus, size):
    texts = corpus[-size:]  # the tail: generated texts, mixed lengths
    ours, theirs = run(texts), hf(texts)
    for name in OUTPUTS:
        np.testing.assert_array_equal(ours[name], theirs[name])


def test_empty_batch_gives_zero_rows_of_length_two(run):
    # HF cannot tokenize an empty list; the graph answers with the shape of a batch of empty
    # texts ([CLS] [SEP]) with no rows, so a model behind it returns [0, dim].
    out = run([])
    for name in OUTPUTS:
        assert out[name].shape == (0, 2) and out[name].dtype == np.int64


def test_long_texts_are_truncated_like_hf(run, hf, corpus):
    long = [t for t in corpus if len(hf.tokenizer(t)["input_ids"]) > MAX_LENGTH]
    assert len(long) >= 20
    out = run(long[:32])
    assert out["input_ids"].shape == (min(32, len(long)), MAX_LENGTH)
    assert (out["input_ids"][:, -1] == 102).all() and out["attention_mask"].all()
    assert not _mismatches(run, hf, long, 32)


def test_truncation_boundaries_at_a_small_max_length(settings, minilm_dir):
    # With max_length 8 there is room for 6 wordpieces: texts of 4..9 pieces straddle the limit.
    small = build_tokenizer_graph(TokenizerSettings.from_pretrained(minilm_dir, max_length=8))
    texts = [" ".join(["word"] * n) for n in range(0, 10)] + ["unbelievable internationalization", "[SEP] " * 9]
    bad = _mismatches(_runner(small), _hf_runner(minilm_dir, max_length=8), texts, len(texts))
    assert not bad, _report(bad, len(texts))


# --- the corpus itself ---------------------------------------------------------------------------

def test_corpus_is_seeded_and_covers_the_hard_cases(corpus, hf):
    assert len(corpus) >= 1000 and tokenizer_corpus() == corpus and tokenizer_corpus(seed=1) != corpus
    joined = "".join(corpus)
    required = {
        "empty": "" in corpus, "whitespace only": any(t and not t.strip() for t in corpus),
        "NFD text": any(not unicodedata.is_normalized("NFC", t) for t in corpus),
        "skin tone": "\U0001F3FD" in joined, "ZWJ sequence": "\u200d" in joined, "flag": "\U0001F1EB" in joined,
        "CJK": "中" in joined, "Arabic": "\u0627" in joined, "Hebrew": "\u05e9" in joined,
        "Devanagari": "\u0928" in joined, "Thai": "\u0e2a" in joined, "full-width": "\uff21" in joined,
        "ligature": "\ufb01" in joined, "NUL": "\x00" in joined, "NBSP": "\xa0" in joined,
        "line separator": "\u2028" in joined, "CRLF": "\r\n" in joined, "[CLS]": "[CLS]" in joined,
        "[UNK]": "[UNK]" in joined, "##x": "##x" in joined, "[PAD]": "[PAD]" in joined, "URL": "https://" in joined,
        "private use": "\ue000" in joined, "astral CJK": "\U00020000" <= max(joined),
    }
    assert all(required.values()), [k for k, ok in required.items() if not ok]
    assert sum(len(hf.tokenizer(t)["input_ids"]) > MAX_LENGTH for t in corpus) >= 20


# --- the character table -------------------------------------------------------------------------

def _bert_reference(ch: str) -> str:
    """BERT's uncased rules written from the Unicode data (as the original BasicTokenizer)."""
    cp = ord(ch)
    cat = unicodedata.category(ch)
    if cp in (0, 0xFFFD) or (cat in ("Cc", "Cf", "Co") and ch not in "\t\n\r"):
        return ""
    if ch in "\t\n\r " or cat in ("Zs", "Zl", "Zp"):
        return " "
    if 0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0xF900 <= cp <= 0xFAFF:
        ch = f" {ch} "
    text = "".join(c for c in unicodedata.normalize("NFD", ch) if unicodedata.category(c) != "Mn").lower()

    def punct(c):
        return 33 <= ord(c) <= 47 or 58 <= ord(c) <= 64 or 91 <= ord(c) <= 96 or 123 <= ord(c) <= 126 or \
            unicodedata.category(c).startswith("P")

    return "".join(f" {c} " if punct(c) else c for c in text)


def test_unicode_table_matches_the_bert_rules_on_long_stable_blocks():
    table = char_table(lowercase=True, strip_accents=None, handle_chinese_chars=True, clean_text=True)
    # Blocks whose Unicode data has not changed in the versions HF and Python use.
    stable = [*range(0x0000, 0x0530), *range(0x2000, 0x2070), *range(0x3000, 0x3040), *range(0x4E00, 0x4F00),
              *range(0xFF00, 0xFFF0)]
    wrong = {hex(cp): (table.apply(chr(cp)), _bert_reference(chr(cp))) for cp in stable
             if table.apply(chr(cp)) != _bert_reference(chr(cp))}
    assert not wrong
    assert table.apply("Café İstanbul ﬁ Ω\u2126 x\u200by\xa0z") == "cafe istanbul ﬁ ωω xy z"
    assert table.apply("中!") == " 中  ! "


def _code_point_parity(run, hf, cps, batch=8192):
    texts = [f"x{chr(cp)}y" for cp in cps]  # in context: a mark or a space must act inside a word
    return _mismatches(run, hf, texts, batch)


def test_every_table_entry_and_a_sample_of_all_code_points(run, hf):
    table = char_table(lowercase=True, strip_accents=None, handle_chinese_chars=True, clean_text=True)
    cps = {ord(k) for k in table.mapping}
    cps |= {bound for lo_hi in table.drop + table.space + table.isolate for bound in lo_hi}  # first and last
    cps |= set(range(0, MAX_CODE_POINT + 1, 97))
    cps -= set(range(0xD800, 0xE000))
    bad = _code_point_parity(run, hf, sorted(cps))
    assert not bad, _report(bad, len(cps))


def test_canonical_reordering_cannot_change_ids_for_this_vocab(run, hf):
    # HF's NFD swaps these two marks (ccc 230, then 9); the table maps each on its own. Neither
    # is in the vocabulary, so the word is [UNK] either way.
    normalizer = hf.tokenizer.backend_tokenizer.normalizer
    table = char_table(lowercase=True, strip_accents=None, handle_chinese_chars=True, clean_text=True)
    assert normalizer.normalize_str("\u08d4\u1b44") != table.apply("\u08d4\u1b44")
    texts = ["x\u08d4\u1b44y", "a \u08d4\u1b44\u08d4 b"]
    assert not _mismatches(run, hf, texts, 2)


@pytest.mark.slow
def test_every_code_point_alone(run, hf):
    cps = [cp for cp in range(MAX_CODE_POINT + 1) if not 0xD800 <= cp < 0xE000]
    bad = _code_point_parity(run, hf, cps, batch=65536)
    assert not bad, _report(bad, len(cps))


# --- settings from other files --------------------------------------------------------------------

def _variant(tmp_path, minilm_dir, **config):
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(minilm_dir / name, tmp_path / name)
    path = tmp_path / "tokenizer_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **config}))
    return tmp_path


@pytest.mark.parametrize("config", [
    {"do_lower_case": False},  # cased: no lowercasing, no accent stripping
    {"do_lower_case": True, "strip_accents": False},
    {"do_lower_case": False, "strip_accents": True, "tokenize_chinese_chars": False},
], ids=["cased", "keep-accents", "strip-only-no-cjk"])
def test_normalizer_settings_come_from_the_files(tmp_path, minilm_dir, corpus, config):
    folder = _variant(tmp_path, minilm_dir, **config)
    settings = TokenizerSettings.from_pretrained(folder, max_length=128)
    texts = corpus[::4]
    bad = _mismatches(_runner(build_tokenizer_graph(settings)), _hf_runner(folder, max_length=128), texts, 64)
    assert not bad, _report(bad, len(texts))


def test_a_folder_with_only_vocab_txt(tmp_path, minilm_dir, corpus):
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(minilm_dir / name, tmp_path / name)
    settings = TokenizerSettings.from_pretrained(tmp_path, max_length=128)
    texts = corpus[1::4]
    bad = _mismatches(_runner(build_tokenizer_graph(settings)), _hf_runner(tmp_path, max_length=128), texts, 64)
    assert not bad, _report(bad, len(texts))


def test_metadata_describes_the_tokenizer(settings):
    meta = settings.metadata()
    assert json.loads(json.dumps(meta)) == meta
    assert meta["vocab_size"] == 30522 and meta["lowercase"] and meta["strip_accents"]
    assert meta["max_length"] == MAX_LENGTH and meta["max_input_chars_per_word"] == 100
    assert meta["special_tokens"]["cls"] == ["[CLS]", 101] and meta["special_tokens"]["pad"] == ["[PAD]", 0]


def test_default_max_length_is_the_model_max_length(minilm_dir):
    assert TokenizerSettings.from_pretrained(minilm_dir).max_length == 512


@pytest.mark.parametrize("change, file", [
    ({"tokenizer.json": {"model": {"type": "BPE", "vocab": {}, "merges": []}}}, "tokenizer.json"),
    ({"tokenizer.json": {"normalizer": {"type": "NFKC"}}}, "tokenizer.json"),
    # (tokenizer_class is not checked: the pipeline decides the kind, tests/test_families_text.py)
    ({"tokenizer_config.json": {"padding_side": "left"}}, "tokenizer_config.json"),
])
def test_unsupported_tokenizers_are_refused_naming_the_file(tmp_path, minilm_dir, change, file):
    folder = _variant(tmp_path, minilm_dir)
    for name, patch in change.items():
        data = json.loads((folder / name).read_text())
        (folder / name).write_text(json.dumps({**data, **patch}))
    with pytest.raises(ValueError, match=file.replace(".", r"\.")):
        TokenizerSettings.from_pretrained(folder, max_length=128)


def test_missing_folder_is_refused_as_an_input_error(tmp_path):
    from exportable.errors import InputError

    with pytest.raises(ValueError, match="not a folder") as info:
        TokenizerSettings.from_pretrained(tmp_path / "nope")
    assert isinstance(info.value, InputError)  # the CLI prints one line and exits 2


# --- the character-table stage on its own ----------------------------------------------------------

def _char_table_runner(table):
    from onnx import TensorProto, helper

    from exportable.onnx_builder import GraphBuilder
    from exportable.text.char_graph import apply_char_table

    b = GraphBuilder(17)
    out = apply_char_table(b, "text", table)
    model = b.model("chars", [helper.make_tensor_value_info("text", TensorProto.STRING, ["n"])],
                    [helper.make_tensor_value_info(out, TensorProto.STRING, ["n"])])
    so = ort.SessionOptions()
    so.register_custom_ops_library(onnxruntime_extensions.get_library_path())
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return lambda texts: [str(s) for s in sess.run(None, {"text": np.array(texts, dtype=object)})[0]]


def test_char_table_stage_equals_the_table_on_the_corpus(corpus):
    table = char_table(lowercase=True, strip_accents=None, handle_chinese_chars=True, clean_text=True)
    texts = [t.replace("\x00", "\x01") for t in corpus]  # the graph swaps NUL before this stage
    run = _char_table_runner(table)
    got = run(texts)
    assert [i for i, (g, t) in enumerate(zip(got, texts)) if g != table.apply(t)] == []


@pytest.mark.parametrize("space_dropped", [False, True])
def test_char_table_stage_on_a_table_whose_outputs_hold_drop_characters(space_dropped):
    # ' ' and '\x02' are dropped, yet the space pass and the mapping emit them: the drop pass
    # must then run first, and the lookup's own drop marks must still go.
    from exportable.text.normalize import CharTable

    drop = ((0x01, 0x02), (0x7F, 0x7F), (0x200B, 0x200D), (0xE000, 0xF8FF)) + (((0x20, 0x20),) if space_dropped else ())
    table = CharTable(drop=tuple(sorted(drop)), space=((0x09, 0x0A), (0xA0, 0xA0)),
                      isolate=((0x21, 0x21), (0x4E00, 0x9FFF)), mapping={"A": "a", "É": "e\x02", "ﬁ": "f i"})
    texts = ["A b\u200bc\x7fd", "É!中\ue000x", "\tﬁ\xa0 \x01", "", "plain ascii", "\u200c\u200d\x02"]
    assert _char_table_runner(table)(texts) == [table.apply(t) for t in texts]
