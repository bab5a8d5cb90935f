"""WordPiece over space-separated words, with HF's handling of words it cannot split.

The ortx WordpieceTokenizer op does the greedy longest-match search, but on a word it cannot
finish it keeps the pieces found so far and then appends [UNK] ("o𰄲b" -> o, [UNK]), where HF
emits a single [UNK] for the whole word. So each word goes to the op as its own row, and the
pieces of a word whose last piece is [UNK] are cut down to that [UNK].
"""

from __future__ import annotations

import json

import numpy as np
from onnx import TensorProto, helper

from ..onnx_builder import CONTRIB, ML, SPLIT_TYPES, GraphBuilder
from .ragged import split_bounds
from .settings import TokenizerSettings


def wordpiece_ids(b: GraphBuilder, texts: str, settings: TokenizerSettings) -> tuple[str, str]:
    """(ids [pieces], splits [len(texts) + 1]): the WordPiece ids of each space-separated text."""
    vocab = dict(sorted({**settings.vocab, **settings.added_tokens}.items()))
    words, text_splits = _split_words(b, texts)
    pieces, word_splits = _wordpiece(b, words, vocab, settings)
    # The op emits piece strings, not ids.
    ids = b.op("LabelEncoder", [pieces], "wordpiece/raw_ids", domain=ML, keys_strings=list(vocab),
               values_int64s=list(vocab.values()), default_int64=settings.unk_id)
    ids, word_splits = collapse_unknown_words(b, ids, word_splits, settings.unk_id)
    splits = b.op("Gather", [word_splits, text_splits], "wordpiece/splits", axis=0)
    return ids, splits


def _split_words(b: GraphBuilder, texts: str) -> tuple[str, str]:
    # The op drops empty pieces, so runs of spaces and leading/trailing spaces give no word.
    words, _, _, splits = b.op(
        "StringRegexSplitWithOffsets",
        [texts, b.const("wordpiece/space_pattern", "( +)"), b.const("wordpiece/space_keep", "")],
        ["wordpiece/words", "wordpiece/word_begins", "wordpiece/word_ends", "wordpiece/text_splits"], domain=CONTRIB,
        types=SPLIT_TYPES)
    return words, splits


def _wordpiece(b: GraphBuilder, words: str, vocab: dict[str, int], settings: TokenizerSettings) -> tuple[str, str]:
    # One word per row: the op's row_indices input cannot express an empty row (it compares each
    # text index with a single row start), and the [UNK] collapse needs word boundaries anyway.
    pieces, splits, _, _ = b.op(
        "WordpieceTokenizer", [words, b.const("wordpiece/no_rows", np.zeros(0, np.int64))],
        ["wordpiece/pieces", "wordpiece/word_splits_raw", "wordpiece/row_begins", "wordpiece/row_ends"],
        domain=CONTRIB, types=SPLIT_TYPES, vocab=json.dumps(vocab, ensure_ascii=False),
        suffix_indicator=settings.continuing_subword_prefix, unknown_token=settings.unk_token,
        max_input_chars_per_word=settings.max_input_chars_per_word)
    return pieces, splits


def collapse_unknown_words(b: GraphBuilder, ids: str, splits: str, unk_id: int) -> tuple[str, str]:
    """Keep only the final [UNK] of every word that ends in [UNK] (every word has >= 1 piece)."""
    p = "wordpiece/collapse"
    starts, ends, lengths = split_bounds(b, splits, p)
    lasts = b.op("Sub", [ends, b.const(f"{p}/one", 1)], f"{p}/lasts")
    ends_unknown = b.op("Equal", [b.op("Gather", [ids, lasts], f"{p}/last_ids", axis=0), b.const(f"{p}/unk", unk_id)],
                        f"{p}/ends_unknown")
    several = b.op("Greater", [lengths, b.const(f"{p}/one_piece", 1)], f"{p}/several")
    bad = b.op("And", [ends_unknown, several], f"{p}/bad")
    # Mark [start, last) of each bad word: +1 at its start, -1 at its last piece, running sum > 0.
    # Starts and lasts of words with >= 2 pieces are all distinct, so a plain scatter suffices
    # (ScatterElements has no "add" before opset 16).
    bad_starts = b.op("Compress", [starts, bad], f"{p}/bad_starts", axis=0)
    bad_lasts = b.op("Compress", [lasts, bad], f"{p}/bad_lasts", axis=0)
    at = b.op("Concat", [bad_starts, bad_lasts], f"{p}/marks_at", axis=0)
    plus = b.op("Expand", [b.const(f"{p}/plus", [1]), b.op("Shape", [bad_starts], f"{p}/n_bad")], f"{p}/plus_ones")
    minus = b.op("Neg", [plus], f"{p}/minus_ones")
    marks = b.op("ConstantOfShape", [b.op("Shape", [ids], f"{p}/n_ids")], f"{p}/zeros",
                 value=helper.make_tensor("zero", TensorProto.INT64, [1], [0]))
    marks = b.op("ScatterElements", [marks, at, b.op("Concat", [plus, minus], f"{p}/signs", axis=0)], f"{p}/marks",
                 axis=0)
    inside = b.op("Greater", [b.op("CumSum", [marks, b.const(f"{p}/axis", 0)], f"{p}/depth"),
                              b.const(f"{p}/zero", 0)], f"{p}/inside_bad")
    kept = b.op("Compress", [ids, b.op("Not", [inside], f"{p}/keep")], f"{p}/ids", axis=0)
    new_lengths = b.op("Where", [bad, b.const(f"{p}/unk_len", 1), lengths], f"{p}/new_lengths")
    new_splits = b.op("Concat", [b.const(f"{p}/first", [0]), b.op("CumSum", [new_lengths, b.const(f"{p}/axis0", 0)],
                                                                     f"{p}/new_ends")], f"{p}/splits", axis=0)
    return kept, new_splits

