"""SentencePiece-style tokenizers in the graph: Unigram (XLM-R, T5, ALBERT, multilingual-e5) and
byte-fallback BPE (Llama, Mistral), equal to the Hugging Face fast tokenizer as transformers
loads it (read from `tok.backend_tokenizer.to_str()`, not tokenizer.json on disk: transformers
rebuilds these pipelines from class code).

The ortx SentencepieceTokenizer op is the sentencepiece library; it runs a ModelProto built
from the backend JSON (spm_model.py), so its ids are HF's ids. Around it, standard and ortx ops
make the input what HF's pre-tokenizer would see:

  Unigram  Unicode whitespace the charsmap keeps -> ' ' (HF's WhitespaceSplit splits on every
           Unicode White_Space character, sentencepiece only on ' '); NUL dropped (see below)
  BPE      ▁ prepended to the first segment of a row unless it is empty or starts with ' ' / ▁
           (Metaspace prepend_scheme "first"; sentencepiece's add_dummy_prefix would prepend
           even before a leading space)

NUL: the ortx ops read their input as C strings, so "a\\x00b" would reach them as "a". HF's
charsmap drops NUL (checked below), so Unigram texts are cut at NUL with a standard op and
joined again without it. Byte-fallback BPE emits <0x00> for it, which the graph does not do yet:
sentencepiece_problem() says so only through `nul_exact`.
"""

from __future__ import annotations

import functools
import json

import numpy as np
from onnx import TensorProto, helper
from tokenizers import Tokenizer

from ..onnx_builder import CONTRIB, INT64, MS, STRING, GraphBuilder
from .spm_model import bpe_proto, merges_problem, unigram_proto

STANDARD_STRING_SPLIT_OPSET = 20
METASPACE = "\u2581"
NUL_STANDINS = ("\ufffe", "\ufdd0", "\U0010ffff")  # noncharacters: unknown to any real vocabulary
# Rust's char::is_whitespace (Unicode White_Space), which WhitespaceSplit splits on.
UNICODE_WHITESPACE = ("\t\n\x0b\x0c\r \x85\xa0\u1680" + "".join(chr(c) for c in range(0x2000, 0x200B))
                      + "\u2028\u2029\u202f\u205f\u3000")


def sentencepiece_kind(backend: dict) -> str | None:
    """"unigram", "bpe" (byte fallback) or None when the model is neither."""
    model_type = backend.get("model", {}).get("type")
    if model_type == "Unigram":
        return "unigram"
    if model_type == "BPE" and backend["model"].get("byte_fallback"):
        return "bpe"
    return None


def sentencepiece_problem(backend: dict) -> str | None:
    """None if the graph reproduces this backend tokenizer, else one line naming the component."""
    kind = sentencepiece_kind(backend)
    if kind is None:
        return "model: only Unigram and BPE with byte_fallback are SentencePiece kinds"
    return _unigram_problem(backend) if kind == "unigram" else _bpe_problem(backend)


def _unigram_problem(backend: dict) -> str | None:
    model, normalizer = backend["model"], backend.get("normalizer")
    if model.get("byte_fallback"):
        return "model.byte_fallback: Unigram with byte fallback is not supported"
    if model.get("unk_id") is None:
        return "model.unk_id: a Unigram model without an unknown piece is not supported"
    if normalizer is not None and normalizer.get("type") != "Precompiled":
        return f"normalizer: {normalizer.get('type')} is not supported (only Precompiled)"
    pre = backend.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    if [s.get("type") for s in steps] != ["WhitespaceSplit", "Metaspace"]:
        return f"pre_tokenizer: {pre.get('type')} is not supported (only Sequence[WhitespaceSplit, Metaspace])"
    meta = steps[1]
    path = "pre_tokenizer.pretokenizers[1]" if pre.get("type") == "Sequence" else "pre_tokenizer"
    if (meta.get("replacement"), meta.get("prepend_scheme"), meta.get("split")) != (METASPACE, "always", True):
        return f"{path}: Metaspace must be replacement ▁, prepend_scheme always, split true"
    if _nul_standin(backend) is None:
        return "model.vocab: no stand-in for NUL (U+FFFE, U+FDD0 or U+10FFFF kept unknown) is available"
    return None


def _bpe_problem(backend: dict) -> str | None:
    model = backend["model"]
    if backend.get("normalizer") is not None:
        return f"normalizer: {backend['normalizer'].get('type')} is not supported with byte-fallback BPE"
    pre = backend.get("pre_tokenizer") or {}
    if pre.get("type") != "Metaspace":
        return f"pre_tokenizer: {pre.get('type')} is not supported (only Metaspace)"
    if (pre.get("replacement"), pre.get("prepend_scheme"), pre.get("split")) != (METASPACE, "first", False):
        return "pre_tokenizer: Metaspace must be replacement ▁, prepend_scheme first, split false"
    for key in ("dropout", "continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            return f"model.{key}: {model[key]!r} is not supported"
    if model.get("ignore_merges"):
        return "model.ignore_merges: true is not supported"
    if (model.get("unk_token") or "<unk>") not in model["vocab"]:
        return "model.unk_token: the vocabulary has no unknown piece"
    missing = [f"<0x{i:02X}>" for i in range(256) if f"<0x{i:02X}>" not in model["vocab"]]
    if missing:
        return f"model.vocab: byte fallback without the piece {missing[0]}"
    if any(METASPACE in piece[1:] for piece in model["vocab"]):
        pass  # ▁ inside a piece is fine: split false keeps the whole text one word
    return merges_problem(model)


def sentencepiece_segment_ids(b: GraphBuilder, segments: str, first: str, backend: dict) -> tuple[str, str]:
    """(ids int64 [total], splits int64 [N+1]): the content ids of each segment [N] (no specials);
    `first` [N] bool marks the first segment of each row (Metaspace prepend_scheme "first")."""
    kind = sentencepiece_kind(backend)
    problem = sentencepiece_problem(backend)
    if problem is not None:
        raise ValueError(problem)
    p = f"spm_{kind}"
    if kind == "unigram":
        text = _replace_nul(b, segments, _nul_standin(backend), p)
        text = _whitespace_to_space(b, text, backend, p)
        proto = unigram_proto(backend)
    else:
        text = _prepend_metaspace(b, segments, first, p)
        proto = bpe_proto(backend)
    return _spm_ids(b, text, proto, p)


def _spm_ids(b: GraphBuilder, text: str, proto: bytes, p: str) -> tuple[str, str]:
    inputs = [text, b.const(f"{p}/nbest", np.int64(0)), b.const(f"{p}/alpha", np.float32(0)),
              b.const(f"{p}/add_bos", np.bool_(False)), b.const(f"{p}/add_eos", np.bool_(False)),
              b.const(f"{p}/reverse", np.bool_(False))]
    ids32, splits = b.op("SentencepieceTokenizer", inputs, [f"{p}/ids32", f"{p}/splits"], domain=CONTRIB,
                         types=[(TensorProto.INT32, 1), (INT64, 1)], model=proto)
    return b.op("Cast", [ids32], f"{p}/ids", to=INT64), splits


def _nul_standin(backend: dict) -> str | None:
    """A character that tokenizes as NUL does: kept by the normalizer, no whitespace, in no
    piece, so an unknown piece fused with its unknown neighbours exactly as NUL is."""
    if _normalize(backend, "\x00") != "\x00":
        return None
    pieces = [piece for piece, _ in backend["model"]["vocab"]]
    for standin in NUL_STANDINS:
        if _normalize(backend, standin) == standin and not any(standin in piece for piece in pieces):
            return standin
    return None


def _replace_nul(b: GraphBuilder, text: str, standin: str, p: str) -> str:
    """NUL -> `standin` with standard ops (ortx ops would stop reading at NUL)."""
    if b.opset >= STANDARD_STRING_SPLIT_OPSET:
        parts, _ = b.op("StringSplit", [text], [f"{p}/nul_parts", f"{p}/nul_counts"], delimiter="\x00")
    else:
        # No standard string op before opset 20; ORT's own contrib Tokenizer splits on a separator.
        parts = b.op("Tokenizer", [text], f"{p}/nul_parts", domain=MS, types=[(STRING, 2)], mark=0, mincharnum=1,
                     pad_value="", separators=["\x00"])
    return b.op("StringJoin", [parts, b.const(f"{p}/nul_join", standin), b.const(f"{p}/nul_axis", 1)],
                f"{p}/no_nul", domain=CONTRIB, types=[(STRING, 1)])


def _whitespace_to_space(b: GraphBuilder, text: str, backend: dict, p: str) -> str:
    """HF splits normalized text at every Unicode whitespace character; sentencepiece only at
    ' '. Characters the charsmap maps to whitespace become ' ' either way; those it keeps
    (U+0085, U+1680, U+2028, ...) are made ' ' here."""
    normalized = {c: _normalize(backend, c) for c in UNICODE_WHITESPACE if c != " "}
    kept = [c for c, n in normalized.items() if n and not n.strip()]
    if not kept:
        return text
    pattern = "[" + "".join(f"\\x{{{ord(c):04X}}}" for c in kept) + "]"
    return b.op("StringRegexReplace", [text, b.const(f"{p}/ws_pattern", pattern), b.const(f"{p}/ws_space", " ")],
                f"{p}/ws_text", domain=CONTRIB, types=[(STRING, 1)])


def _prepend_metaspace(b: GraphBuilder, text: str, first: str, p: str) -> str:
    prefixed = b.op("StringRegexReplace", [text, b.const(f"{p}/lead_pattern", f"^([^ {METASPACE}])"),
                                           b.const(f"{p}/lead_rewrite", " \\1")],
                    f"{p}/prefixed", domain=CONTRIB, types=[(STRING, 1)], global_replace=0)
    return b.op("Where", [first, prefixed, text], f"{p}/metaspaced")


def _normalize(backend: dict, text: str) -> str | None:
    normalizer = backend.get("normalizer")
    if normalizer is None:
        return text
    return _backend_tokenizer(json.dumps(backend, sort_keys=True)).normalizer.normalize_str(text)


@functools.lru_cache(maxsize=4)
def _backend_tokenizer(backend_json: str) -> Tokenizer:
    return Tokenizer.from_str(backend_json)
