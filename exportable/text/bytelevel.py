"""Byte-level BPE (GPT-2, RoBERTa, BART, GPT-Neo, Phi) as graph nodes: texts -> ragged content ids.

Added tokens (<s>, <|endoftext|>, ...) are cut out of the text first, as HF does (text/added.py);
each remaining run goes to onnxruntime-extensions' GPT2Tokenizer op (vocab + merges from the
pipeline's JSON; the op's GPT-2 regex pre-tokenizer and byte-level BPE). On the project's
1,200-string Unicode corpus that equals the Hugging Face fast tokenizer on every string but those
holding NUL: the op reads its input as C strings, so "a\\x00b" reaches it as "a". Specials,
truncation and padding are exportable's (standard ops), so truncation keeps the specials.

GPT2Tokenizer, not the newer HfJsonTokenizer (exact too): the Maven build of the extensions
(0.13.0, the native library the Java and Go consumers load) has no HfJsonTokenizer ("is not a
registered function/op").

The NUL repair: NUL and \\x01 are both single bytes of one regex class ([^\\s\\p{L}\\p{N}]), and a
vocabulary whose merges never touch either byte splits them identically, each always its own
token. So every NUL is sent as \\x01, and the k-th \\x01 token of the batch is turned back into the
NUL token when the k-th \\x00-or-\\x01 character of the batch was a NUL. Vocabularies with merges
on those bytes are refused (byte_level_problem) rather than tokenized differently.
"""

from __future__ import annotations

import json

from onnx import TensorProto

from ..onnx_builder import CONTRIB, INT64, ML, MS, STRING, GraphBuilder
from .added import added_tokens, split_added

NUL, STANDIN = "\x00", "\x01"
# ONNX Runtime's own Tokenizer op reads whole std::strings (NUL included); its padding must be a
# value no token can take: every token is one NUL, one \x01, or a run holding neither.
MARKER_PAD = "\x01\x01"
MARKER_PATTERN = "(?s)\x00|\x01|[^\x00\x01]+"
# ByteLevel's byte -> printable character table (GPT-2's bytes_to_unicode).
BYTE_CHARS = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]


def byte_to_char() -> dict[int, str]:
    table, extra = {}, 0
    for byte in range(256):
        if byte in BYTE_CHARS:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + extra)
            extra += 1
    return table


def byte_level_problem(backend: dict) -> str | None:
    """Why this byte-level BPE pipeline cannot be built exactly (one line with the JSON path), or None."""
    model = backend.get("model") or {}
    for key in ("dropout", "continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            return f"model.{key}={model[key]!r} is not supported for byte-level BPE"
    if backend.get("normalizer"):
        return f"normalizer {backend['normalizer'].get('type')!r} is not supported for byte-level BPE"
    chars = byte_to_char()
    nul, standin = chars[0], chars[1]
    vocab = model.get("vocab") or {}
    if nul not in vocab or standin not in vocab:
        return "model.vocab lacks the byte tokens of \\x00 or \\x01; not a complete byte-level vocabulary"
    for i, merge in enumerate(model.get("merges") or []):
        pair = merge.split(" ") if isinstance(merge, str) else merge
        if any(nul in part or standin in part for part in pair):
            return f"model.merges[{i}] merges the byte \\x00 or \\x01; not supported (NUL would tokenize differently)"
    for i, tok in enumerate(backend.get("added_tokens") or []):
        if NUL in tok["content"] or STANDIN in tok["content"]:
            return f"added_tokens[{i}] holds a \\x00 or \\x01 character; not supported"
    return None


def byte_level_ids(b: GraphBuilder, texts: str, backend: dict) -> tuple[str, str]:
    """(ids [total], splits [len(texts) + 1]): each text's content ids (no specials, no padding).
    `texts` must not be empty as a tensor (the caller appends a row)."""
    sent, marker_is_nul = nul_as_standin(b, texts)
    pieces = split_added(b, sent, added_tokens(backend), "bpe/added")
    runs = b.op("Where", [pieces.is_added, b.const("bpe/no_text", ""), pieces.segments], "bpe/runs")
    model = backend["model"]
    merges = "\n".join(m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or [])
    ids, mask = b.op("GPT2Tokenizer", [runs], ["bpe/ids", "bpe/mask"], domain=CONTRIB,
                     types=[(INT64, 2), (INT64, 2)], vocab=json.dumps(model["vocab"], ensure_ascii=False),
                     merges=merges, padding_length=-1)
    # One more column per segment: an added token's id (a text run's slot stays masked).
    ids = b.op("Concat", [ids, b.op("Unsqueeze", [pieces.added_ids, b.const("bpe/axis_u", [1])], "bpe/added_col")],
               "bpe/ids_added", axis=1)
    mask = b.op("Concat", [mask, b.op("Cast", [b.op("Unsqueeze", [pieces.is_added, b.const("bpe/axis_m", [1])],
                                                    "bpe/is_added_col")], "bpe/added_mask", to=TensorProto.INT64)],
                "bpe/mask_added", axis=1)
    values, segment_splits = _ragged(b, ids, mask)
    splits = b.op("Gather", [segment_splits, pieces.splits], "bpe/splits", axis=0)
    return _restore_nul(b, values, marker_is_nul, backend), splits


def nul_as_standin(b: GraphBuilder, texts: str) -> tuple[str, str]:
    """(texts with every NUL sent as \\x01, bool [markers]: for each \\x00-or-\\x01 character of the
    batch in order, whether it was a NUL)."""
    runs = b.op("Tokenizer", [texts], "bpe/nul_runs", domain=MS, types=[(STRING, 2)], mark=0, mincharnum=1,
                pad_value=MARKER_PAD, tokenexp=MARKER_PATTERN)
    # 1 NUL, 2 \x01, 3 padding, 0 anything else
    kind = b.op("LabelEncoder", [runs], "bpe/run_kind", domain=ML, keys_strings=[NUL, STANDIN, MARKER_PAD],
                values_int64s=[1, 2, 3], default_int64=0)
    is_nul = b.op("Equal", [kind, b.const("bpe/kind_nul", 1)], "bpe/is_nul")
    is_pad = b.op("Equal", [kind, b.const("bpe/kind_pad", 3)], "bpe/is_pad")
    is_marker = b.op("Or", [is_nul, b.op("Equal", [kind, b.const("bpe/kind_standin", 2)], "bpe/is_standin")],
                     "bpe/is_marker")
    clean = b.op("Where", [is_pad, b.const("bpe/empty", ""), runs], "bpe/runs_unpadded")
    clean = b.op("Where", [is_nul, b.const("bpe/standin", STANDIN), clean], "bpe/runs_clean")
    sent = b.op("StringJoin", [clean, b.const("bpe/sep", ""), b.const("bpe/axis", 1)], "bpe/texts", domain=CONTRIB,
                types=[(STRING, 1)])
    flat = b.const("bpe/flat", [-1])
    marker_is_nul = b.op("Compress", [b.op("Reshape", [is_nul, flat], "bpe/is_nul_flat"),
                                      b.op("Reshape", [is_marker, flat], "bpe/is_marker_flat")], "bpe/marker_is_nul",
                         axis=0)
    return sent, marker_is_nul


def _ragged(b: GraphBuilder, ids: str, mask: str) -> tuple[str, str]:
    flat = b.const("bpe/flat_ids", [-1])
    keep = b.op("Cast", [b.op("Reshape", [mask, flat], "bpe/mask_flat")], "bpe/keep", to=TensorProto.BOOL)
    values = b.op("Compress", [b.op("Reshape", [ids, flat], "bpe/ids_flat"), keep], "bpe/values", axis=0)
    lengths = b.op("ReduceSum", [mask, b.const("bpe/axis1", [1])], "bpe/lengths", keepdims=0)
    ends = b.op("CumSum", [lengths, b.const("bpe/axis0", 0)], "bpe/ends")
    return values, b.op("Concat", [b.const("bpe/zero", [0]), ends], "bpe/segment_splits", axis=0)


def _restore_nul(b: GraphBuilder, values: str, marker_is_nul: str, backend: dict) -> str:
    vocab = backend["model"]["vocab"]
    chars = byte_to_char()
    nul_id, standin_id = vocab[chars[0]], vocab[chars[1]]
    is_standin = b.op("Equal", [values, b.const("bpe/standin_id", standin_id)], "bpe/is_standin_id")
    rank = b.op("Sub", [b.op("CumSum", [b.op("Cast", [is_standin], "bpe/standin_int", to=TensorProto.INT64),
                                        b.const("bpe/axis0b", 0)], "bpe/standin_count"), b.const("bpe/one", 1)],
                "bpe/standin_rank")
    rank = b.op("Max", [rank, b.const("bpe/zero_rank", 0)], "bpe/standin_rank0")
    # One False appended: a batch with no marker still gathers at index 0.
    flags = b.op("Concat", [marker_is_nul, b.const("bpe/no_marker", [False])], "bpe/marker_flags", axis=0)
    was_nul = b.op("And", [is_standin, b.op("Gather", [flags, rank], "bpe/flag", axis=0)], "bpe/was_nul")
    return b.op("Where", [was_nul, b.const("bpe/nul_id", nul_id), values], "bpe/content_ids")
