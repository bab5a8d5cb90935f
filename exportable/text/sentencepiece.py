"""SentencePiece-style tokenizers in the graph: Unigram (XLM-R, T5, CamemBERT, mBART,
multilingual-e5) and byte-fallback BPE (Llama, Mistral), equal to the Hugging Face fast
tokenizer as transformers loads it (read from `tok.backend_tokenizer.to_str()`, not
tokenizer.json on disk: transformers rebuilds these pipelines from class code).

    sentencepiece_segment_ids(b, segments, first, backend) -> (ids [total], splits [N + 1])
    sentencepiece_problem(backend) -> None, or one line naming the unsupported component

The ortx SentencepieceTokenizer op is the sentencepiece library; it runs a ModelProto built
from the backend JSON (spm_model.py), so its ids are HF's ids. Around it:

  NUL      ORT's contrib Tokenizer (standard ORT, keeps NUL bytes) cuts each segment into NULs and
           the runs between them: the ortx ops read C strings, so "a\x00b" would reach them as "a"
  Unigram  NUL -> an unknown stand-in character (HF: NUL is an unknown piece, fused with its
           unknown neighbours); the grapheme-cluster part of HF's Precompiled normalizer in the
           graph, the rest compiled into the model's normalizer (precompiled.py); words cut at
           whatever normalizes to whitespace, sentencepiece per word, as HF's WhitespaceSplit +
           Metaspace(always) + Viterbi per word
  BPE      each run through sentencepiece, <0x00> after each NUL (no piece holds NUL, so no
           merge crosses it); ' ' prepended to the first run of a row's first segment unless it
           is empty or starts with ' ' / ▁ (Metaspace prepend_scheme "first": sentencepiece's
           add_dummy_prefix would also prepend before a leading space)
"""

from __future__ import annotations

import functools
import json

import numpy as np
from onnx import TensorProto, helper
from tokenizers import Tokenizer

from ..onnx_builder import CONTRIB, INT64, ML, MS, SPLIT_TYPES, STRING, GraphBuilder
from .precompiled import charsmap_of, precompiled_normalize, word_separators
from .ragged import split_bounds
from .settings import TokenizerError
from .spm_model import bpe_proto, merges_problem, unigram_proto

METASPACE = "\u2581"
NUL_STANDINS = ("\ufffe", "\ufdd0", "\U0010ffff")  # noncharacters: unknown to any real vocabulary


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
    vocab = backend["model"]["vocab"]
    pieces = [entry[0] for entry in vocab] if isinstance(vocab, list) else list(vocab)
    holding = next((piece for piece in pieces if "\x00" in piece or "\x01" in piece), None)
    if holding is not None:  # \x01 stands in for NUL on the way through the ortx regex op
        return f"model.vocab: the piece {holding!r} holds a \\x00 or \\x01 character; not supported"
    return _unigram_problem(backend) if kind == "unigram" else _bpe_problem(backend)


def _unigram_problem(backend: dict) -> str | None:
    model, normalizer = backend["model"], backend.get("normalizer")
    if model.get("byte_fallback"):
        return "model.byte_fallback: Unigram with byte fallback is not supported"
    if model.get("unk_id") is None:
        return "model.unk_id: a Unigram model without an unknown piece is not supported"
    problem = _unigram_normalizer_problem(normalizer)
    if problem is not None:
        return problem
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


def _legacy_metaspace(backend: dict) -> bool:
    """The older Llama/Mistral tokenizer.json: ▁ prepended to every segment, even before a
    space, by the normalizer, and no pre-tokenizer."""
    legacy = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": METASPACE},
        {"type": "Replace", "pattern": {"String": " "}, "content": METASPACE}]}
    return backend.get("normalizer") == legacy and backend.get("pre_tokenizer") is None


def _unigram_normalizer_problem(normalizer: dict | None) -> str | None:
    """Precompiled, alone or in a Sequence, optionally with Replace(" {2,}" -> " ") (the old T5
    converter's: a no-op before WhitespaceSplit)."""
    if normalizer is None or normalizer.get("type") == "Precompiled":
        return None
    if normalizer.get("type") != "Sequence":
        return f"normalizer: {normalizer.get('type')} is not supported (only Precompiled)"
    steps = normalizer.get("normalizers", [])
    for i, step in enumerate(steps):
        collapse = (step.get("type") == "Replace" and step.get("pattern") == {"Regex": " {2,}"}
                    and step.get("content") == " ")
        if step.get("type") != "Precompiled" and not collapse:
            return f"normalizer.normalizers[{i}]: {step.get('type')} is not supported (only Precompiled)"
    if [step.get("type") for step in steps].count("Precompiled") > 1:
        return "normalizer: more than one Precompiled step is not supported"
    return None


def _bpe_problem(backend: dict) -> str | None:
    model = backend["model"]
    if not _legacy_metaspace(backend):
        if backend.get("normalizer") is not None:
            return (f"normalizer: {backend['normalizer'].get('type')} is not supported with byte-fallback BPE "
                    "(only none, or Sequence[Prepend ▁, Replace ' ' -> ▁] without a pre_tokenizer)")
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
    return merges_problem(model)


def sentencepiece_segment_ids(b: GraphBuilder, segments: str, first: str, backend: dict,
                              marker_is_nul: str | None = None) -> tuple[str, str]:
    """(ids int64 [total], splits int64 [N+1]): the content ids of each segment [N] (no specials);
    `first` [N] bool marks the first segment of each row (Metaspace prepend_scheme "first").
    `marker_is_nul`: when the caller has sent every NUL as \x01 (the ortx regex op that cut the
    segments reads C strings), for each \x00-or-\x01 character of the segments in order, whether
    it was a NUL (exportable.text.bytelevel.nul_as_standin)."""
    problem = sentencepiece_problem(backend)
    if problem is not None:
        raise TokenizerError(problem)
    kind = sentencepiece_kind(backend)
    p = f"spm_{kind}"
    # One extra "" segment: the NUL split below returns a rank-1 tensor for an empty batch.
    segments = b.op("Concat", [segments, b.const(f"{p}/dummy_segment", [""])], f"{p}/segments", axis=0)
    first = b.op("Concat", [first, b.const(f"{p}/dummy_first", [False])], f"{p}/first", axis=0)
    parts, is_nul = _split_nul(b, segments, p, marker_is_nul)
    if kind == "unigram":
        ids, splits = _unigram_ids(b, parts, is_nul, backend, p)
    else:
        ids, splits = _bpe_ids(b, parts, is_nul, first, backend, p)
    real = b.op("Slice", [splits, b.const(f"{p}/0", [0]), b.const(f"{p}/-1", [-1])], f"{p}/splits")
    return ids, real


def _split_nul(b: GraphBuilder, segments: str, p: str, marker_is_nul: str | None = None) -> tuple[str, str]:
    """parts [N, K]: each segment cut into its NUL characters and the runs between them, padded
    with "" (ORT's contrib Tokenizer keeps NUL bytes; ortx ops would stop reading at NUL);
    is_nul [N, K]. With `marker_is_nul`, \x01 characters are cut out too and the ones that
    stood for a NUL count as NUL (\x01 is in no piece: checked by sentencepiece_problem)."""
    if marker_is_nul is not None:
        return _split_markers(b, segments, p, marker_is_nul)
    parts = b.op("Tokenizer", [segments], f"{p}/raw_parts", domain=MS, types=[(STRING, 2)], mark=0, mincharnum=1,
                 pad_value="", tokenexp="\x00|[^\x00]+")
    # One more "" column: a batch of empty segments would give K = 0, which Reshape cannot express.
    rows = b.op("Concat", [_dim(b, segments, 0, f"{p}/n"), b.const(f"{p}/one_col", [1])], f"{p}/pad_shape", axis=0)
    pad = b.op("Expand", [b.const(f"{p}/empty", [[""]]), rows], f"{p}/pad_col")
    parts = b.op("Concat", [parts, pad], f"{p}/parts_padded", axis=1)
    flag = b.op("LabelEncoder", [parts], f"{p}/is_nul_int", domain=ML, keys_strings=["\x00"], values_int64s=[1],
                default_int64=0)
    return parts, b.op("Cast", [flag], f"{p}/is_nul", to=TensorProto.BOOL)


def _split_markers(b: GraphBuilder, segments: str, p: str, marker_is_nul: str) -> tuple[str, str]:
    parts = b.op("Tokenizer", [segments], f"{p}/raw_parts", domain=MS, types=[(STRING, 2)], mark=0, mincharnum=1,
                 pad_value="", tokenexp="\x00|\x01|[^\x00\x01]+")
    rows = b.op("Concat", [_dim(b, segments, 0, f"{p}/n"), b.const(f"{p}/one_col", [1])], f"{p}/pad_shape", axis=0)
    pad = b.op("Expand", [b.const(f"{p}/empty", [[""]]), rows], f"{p}/pad_col")
    parts = b.op("Concat", [parts, pad], f"{p}/parts_padded", axis=1)
    kind = b.op("LabelEncoder", [parts], f"{p}/marker_kind", domain=ML, keys_strings=["\x00", "\x01"],
                values_int64s=[1, 1], default_int64=0)
    is_marker = b.op("Cast", [kind], f"{p}/is_marker", to=TensorProto.BOOL)
    flat = b.op("Reshape", [kind, b.const(f"{p}/flat", [-1])], f"{p}/marker_flat")
    rank = b.op("Sub", [b.op("CumSum", [flat, b.const(f"{p}/cum0", 0)], f"{p}/marker_count"),
                        b.const(f"{p}/one_rank", 1)], f"{p}/marker_rank")
    rank = b.op("Max", [rank, b.const(f"{p}/zero_rank", 0)], f"{p}/marker_rank0")
    flags = b.op("Concat", [marker_is_nul, b.const(f"{p}/no_marker", [False])], f"{p}/marker_flags", axis=0)
    was_nul = b.op("Reshape", [b.op("Gather", [flags, rank], f"{p}/flag_flat", axis=0), b.op("Shape", [parts],
                                                                                            f"{p}/parts_shape")],
                   f"{p}/was_nul")
    return parts, b.op("And", [is_marker, was_nul], f"{p}/is_nul")


def _unigram_ids(b: GraphBuilder, parts: str, is_nul: str, backend: dict, p: str) -> tuple[str, str]:
    parts = b.op("Where", [is_nul, b.const(f"{p}/nul_standin", _nul_standin(backend)), parts], f"{p}/standin_parts")
    text = b.op("StringJoin", [parts, b.const(f"{p}/join_sep", ""), b.const(f"{p}/join_axis", 1)], f"{p}/text",
                domain=CONTRIB, types=[(STRING, 1)])
    charsmap, late = charsmap_of(backend), {}
    if charsmap is not None:
        text, late = precompiled_normalize(b, text, charsmap, f"{p}/normalize")
    return _per_word(b, text, unigram_proto(backend, late), word_separators(charsmap), p)


def _per_word(b: GraphBuilder, text: str, proto: bytes, separators: str, p: str) -> tuple[str, str]:
    """sentencepiece on each word (HF's Viterbi runs per word too): its float32 path scores stay
    small enough for the quantized piece scores to add up exactly (spm_model)."""
    words, _, _, text_splits = b.op(
        "StringRegexSplitWithOffsets",
        [text, b.const(f"{p}/space_pattern", f"({separators}+)"), b.const(f"{p}/space_keep", "")],
        [f"{p}/words", f"{p}/word_begins", f"{p}/word_ends", f"{p}/text_splits"], domain=CONTRIB, types=SPLIT_TYPES)
    ids, word_splits = _spm_ids(b, words, proto, p)
    return ids, b.op("Gather", [word_splits, text_splits], f"{p}/text_piece_splits", axis=0)


def _bpe_ids(b: GraphBuilder, parts: str, is_nul: str, first: str, backend: dict, p: str) -> tuple[str, str]:
    """Each part through sentencepiece on its own (NUL is a barrier: no piece contains it, so
    no merge crosses it), a NUL part giving <0x00>; ▁ prepended to the first part of a row's
    first segment (before a leading NUL too: HF prepends to the whole segment)."""
    cols = b.op("Range", [b.const(f"{p}/c0", 0), b.op("Squeeze", [_dim(b, parts, 1, p), b.const(f"{p}/ax0", [0])],
                                                       f"{p}/k"), b.const(f"{p}/c1", 1)], f"{p}/cols")
    at_start = b.op("Equal", [cols, b.const(f"{p}/zero", 0)], f"{p}/col0")
    # Metaspace "first": only a row's first segment, and not before a space or ▁ (the legacy
    # Prepend normalizer: every non-empty segment, whatever it starts with).
    legacy = _legacy_metaspace(backend)
    if not legacy:
        at_start = b.op("And", [b.op("Unsqueeze", [first, b.const(f"{p}/ax1", [1])], f"{p}/first2"), at_start],
                        f"{p}/at_start")
    # A NUL part keeps "" for sentencepiece (its id is added below), or "▁" where ▁ goes first.
    text = b.op("Where", [is_nul, b.const(f"{p}/nothing", ""), parts], f"{p}/text_parts")
    lead = "^((?s).)" if legacy else f"^([^ {METASPACE}])"
    prefixed = b.op("StringRegexReplace", [text, b.const(f"{p}/lead_pattern", lead),
                                           b.const(f"{p}/lead_rewrite", " \\1")],
                    f"{p}/prefixed", domain=CONTRIB, types=[(STRING, 2)], global_replace=0)
    before_nul = b.op("And", [at_start, is_nul], f"{p}/before_nul")
    prefixed = b.op("Where", [before_nul, b.const(f"{p}/metaspace", METASPACE), prefixed], f"{p}/prefixed_nul")
    text = b.op("Where", [at_start, prefixed, text], f"{p}/metaspaced")
    flat = b.op("Reshape", [text, b.const(f"{p}/flat_shape", [-1])], f"{p}/flat_parts")
    ids, part_splits = _spm_ids(b, flat, bpe_proto(backend), p)
    nul_id = backend["model"]["vocab"]["<0x00>"]
    nul_flat = b.op("Reshape", [is_nul, b.const(f"{p}/flat_shape2", [-1])], f"{p}/flat_is_nul")
    return _append_after(b, ids, part_splits, nul_flat, nul_id, _dim(b, parts, 1, f"{p}/k2"), p)


def _append_after(b: GraphBuilder, ids: str, splits: str, flags: str, value: int, per_row: str,
                  p: str) -> tuple[str, str]:
    """ids with `value` appended to each part whose flag is set, and the splits of rows made of
    `per_row` consecutive parts. Each id moves right by the number of flagged parts that end at
    or before it (a [ids, flagged] comparison: flagged parts, i.e. NULs, are rare)."""
    p = f"{p}/append"
    _, ends, lengths = split_bounds(b, splits, f"{p}/parts")
    flagged_ends = b.op("Compress", [ends, flags], f"{p}/flagged_ends", axis=0)
    n_flagged = b.op("Shape", [flagged_ends], f"{p}/n_flagged")
    n_ids = b.op("Shape", [ids], f"{p}/n_ids")
    zero, one = b.const(f"{p}/zero", 0), b.const(f"{p}/one", 1)
    positions = b.op("Range", [zero, b.op("Squeeze", [n_ids], f"{p}/n_ids0"), one], f"{p}/positions")
    before = b.op("LessOrEqual", [b.op("Unsqueeze", [flagged_ends, b.const(f"{p}/ax0", [0])], f"{p}/ends_row"),
                                  b.op("Unsqueeze", [positions, b.const(f"{p}/ax1", [1])], f"{p}/pos_col")],
                  f"{p}/flag_before")
    shift = b.op("ReduceSum", [b.op("Cast", [before], f"{p}/flag_before_int", to=INT64),
                               b.const(f"{p}/sum1", [1])], f"{p}/shift", keepdims=0)
    id_at = b.op("Add", [positions, shift], f"{p}/id_at")
    rank = b.op("Range", [zero, b.op("Squeeze", [n_flagged], f"{p}/n_flagged0"), one], f"{p}/flag_rank")
    value_at = b.op("Add", [flagged_ends, rank], f"{p}/value_at")
    values = b.op("Expand", [b.const(f"{p}/value", [value]), n_flagged], f"{p}/values")
    total = b.op("Add", [n_ids, n_flagged], f"{p}/total")
    out = b.op("ScatterElements", [b.op("ConstantOfShape", [total], f"{p}/blank",
                                        value=helper.make_tensor("zero", TensorProto.INT64, [1], [0])),
                                   b.op("Concat", [id_at, value_at], f"{p}/at", axis=0),
                                   b.op("Concat", [ids, values], f"{p}/scattered", axis=0)],
               f"{p}/with_values", axis=0)
    new_lengths = b.op("Add", [lengths, b.op("Cast", [flags], f"{p}/extra", to=INT64)], f"{p}/new_lengths")
    rows = b.op("Reshape", [new_lengths, b.op("Concat", [b.const(f"{p}/rows", [-1]), per_row], f"{p}/row_shape",
                                                axis=0)], f"{p}/row_lengths")
    row_lengths = b.op("ReduceSum", [rows, b.const(f"{p}/sum_axis", [1])], f"{p}/row_total", keepdims=0)
    row_ends = b.op("CumSum", [row_lengths, b.const(f"{p}/cum_axis", 0)], f"{p}/row_ends")
    return out, b.op("Concat", [b.const(f"{p}/split0", [0]), row_ends], f"{p}/row_splits", axis=0)


def _dim(b: GraphBuilder, value: str, axis: int, p: str) -> str:
    """[size of `value` along `axis`] (Shape's start/end attributes need opset 15)."""
    return b.op("Gather", [b.op("Shape", [value], f"{p}/shape{axis}"), b.const(f"{p}/axis{axis}", [axis])],
                f"{p}/dim{axis}", axis=0)


def _spm_ids(b: GraphBuilder, text: str, proto: bytes, p: str) -> tuple[str, str]:
    inputs = [text, b.const(f"{p}/nbest", np.int64(0)), b.const(f"{p}/alpha", np.float32(0)),
              b.const(f"{p}/add_bos", np.bool_(False)), b.const(f"{p}/add_eos", np.bool_(False)),
              b.const(f"{p}/reverse", np.bool_(False))]
    ids32, splits = b.op("SentencepieceTokenizer", inputs, [f"{p}/ids32", f"{p}/spm_splits"], domain=CONTRIB,
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


def _normalize(backend: dict, text: str) -> str | None:
    normalizer = backend.get("normalizer")
    if normalizer is None:
        return text
    return _backend_tokenizer(json.dumps(backend, sort_keys=True)).normalizer.normalize_str(text)


@functools.lru_cache(maxsize=4)
def _backend_tokenizer(backend_json: str) -> Tokenizer:
    return Tokenizer.from_str(backend_json)
