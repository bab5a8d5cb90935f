"""Ragged -> dense with standard ONNX ops.

A ragged batch is a flat `values` tensor plus `splits` (row i is values[splits[i]:splits[i+1]]),
the layout the onnxruntime-extensions string ops produce.
"""

from __future__ import annotations

from functools import partial

import numpy as np
from onnx import TensorProto, helper

from ..onnx_builder import CONTRIB, STRING, GraphBuilder


def split_bounds(b: GraphBuilder, splits: str, prefix: str) -> tuple[str, str, str]:
    """(starts, ends, lengths) of each row from its splits."""
    starts = b.op("Slice", [splits, b.const(f"{prefix}/0", [0]), b.const(f"{prefix}/-1", [-1])], f"{prefix}/starts")
    ends = b.op("Slice", [splits, b.const(f"{prefix}/1", [1]), b.const(f"{prefix}/big", [2**62])], f"{prefix}/ends")
    return starts, ends, b.op("Sub", [ends, starts], f"{prefix}/lengths")


def dense_gather_index(b: GraphBuilder, starts: str, lengths: str, fill: str, prefix: str) -> tuple[str, str]:
    """([rows, width] index of each row's j-th value or `fill` past its end, [rows, width] validity)."""
    width = b.op("ReduceMax", [b.op("Concat", [lengths, b.const(f"{prefix}/zero", [0])], f"{prefix}/lengths0",
                                    axis=0)], f"{prefix}/width", keepdims=0)
    cols = b.op("Range", [b.const(f"{prefix}/start", 0), width, b.const(f"{prefix}/step", 1)], f"{prefix}/cols")
    axis1 = b.const(f"{prefix}/axis1", [1])
    starts2 = b.op("Unsqueeze", [starts, axis1], f"{prefix}/starts2")
    lengths2 = b.op("Unsqueeze", [lengths, axis1], f"{prefix}/lengths2")
    valid = b.op("Less", [cols, lengths2], f"{prefix}/valid")
    index = b.op("Add", [starts2, cols], f"{prefix}/index_raw")
    return b.op("Where", [valid, index, fill], f"{prefix}/index"), valid


def join_rows(b: GraphBuilder, values: str, splits: str, prefix: str) -> str:
    """Concatenate each row's strings into one string (separator '')."""
    starts, _, lengths = split_bounds(b, splits, prefix)
    # Past-the-end slots point at an appended "", which joins to nothing.
    padded = b.op("Concat", [values, b.const(f"{prefix}/empty", [""])], f"{prefix}/values_plus_empty", axis=0)
    fill = b.op("Shape", [values], f"{prefix}/fill")
    index, _ = dense_gather_index(b, starts, lengths, fill, prefix)
    dense = b.op("Gather", [padded, index], f"{prefix}/dense", axis=0)
    return b.op("StringJoin", [dense, b.const(f"{prefix}/sep", ""), b.const(f"{prefix}/join_axis", 1)],
                f"{prefix}/joined", domain=CONTRIB, types=[(STRING, 1)])


def pack_with_specials(b: GraphBuilder, ids: str, starts: str, lengths: str, *, max_length: int,
                       cls: tuple[int, int], sep: tuple[int, int], pad: tuple[int, int], text_type: int,
                       prefix: str = "pack") -> tuple[str, str, str]:
    """[CLS] ids[:max_length-2] [SEP] per row, right-padded to the longest row.

    Returns (input_ids, attention_mask, token_type_ids), int64 [batch, sequence]. An empty
    batch gives sequence length 2 (the length of an empty text), so shape [0, 2].
    """
    kept = b.op("Min", [lengths, b.const(f"{prefix}/room", [max_length - 2], np.int64)], f"{prefix}/kept")
    cols = b.op("Range", [b.const(f"{prefix}/start", 0), _seq_len(b, kept, prefix), b.const(f"{prefix}/step", 1)],
                f"{prefix}/cols")
    axis1 = b.const(f"{prefix}/axis1", [1])
    kept2 = b.op("Unsqueeze", [kept, axis1], f"{prefix}/kept2")
    starts2 = b.op("Unsqueeze", [starts, axis1], f"{prefix}/starts2")
    one = b.const(f"{prefix}/one", 1)
    is_cls = b.op("Equal", [cols, b.const(f"{prefix}/zero", 0)], f"{prefix}/is_cls")
    sep_col = b.op("Add", [kept2, one], f"{prefix}/sep_col")
    is_sep = b.op("Equal", [cols, sep_col], f"{prefix}/is_sep")
    is_text = b.op("And", [b.op("Not", [is_cls], f"{prefix}/not_cls"),
                           b.op("LessOrEqual", [cols, kept2], f"{prefix}/le_kept")], f"{prefix}/is_text")
    # slot: 0 [CLS], 1 [SEP], 2 padding, 3 text; lookup tables hold one entry per slot.
    slot = b.op("Where", [is_text, b.const(f"{prefix}/slot_text", 3), b.const(f"{prefix}/slot_pad", 2)],
                f"{prefix}/slot_text_or_pad")
    slot = b.op("Where", [is_sep, one, slot], f"{prefix}/slot_sep")
    slot = b.op("Where", [is_cls, b.const(f"{prefix}/slot_cls", 0), slot], f"{prefix}/slot")
    table = b.op("Concat", [b.const(f"{prefix}/special_ids", [cls[0], sep[0], pad[0]], np.int64), ids],
                 f"{prefix}/id_table", axis=0)
    # Text slot j reads ids[start + j - 1], which sits at table[start + j + 2].
    text_pos = b.op("Add", [starts2, b.op("Add", [cols, b.const(f"{prefix}/two", 2)], f"{prefix}/cols2")],
                    f"{prefix}/text_pos")
    pos = b.op("Where", [is_text, text_pos, slot], f"{prefix}/pos")
    input_ids = b.op("Gather", [table, pos], "input_ids", axis=0)
    mask = b.op("Cast", [b.op("Less", [cols, b.op("Add", [sep_col, one], f"{prefix}/end")], f"{prefix}/in_row")],
                "attention_mask", to=TensorProto.INT64)
    types = b.const(f"{prefix}/type_ids", [cls[1], sep[1], pad[1], text_type], np.int64)
    token_type_ids = b.op("Gather", [types, slot], "token_type_ids", axis=0)
    return input_ids, mask, token_type_ids


def _seq_len(b: GraphBuilder, kept: str, prefix: str) -> str:
    # The appended 0 keeps ReduceMax defined for an empty batch.
    longest = b.op("ReduceMax", [b.op("Concat", [kept, b.const(f"{prefix}/no_rows", [0])], f"{prefix}/kept0",
                                      axis=0)], f"{prefix}/longest", keepdims=0)
    return b.op("Add", [longest, b.const(f"{prefix}/specials", 2)], f"{prefix}/seq_len")


def pack_template(b: GraphBuilder, ids: str, starts: str, lengths: str, *, max_length: int,
                  prefix: tuple[tuple[int, int], ...], suffix: tuple[tuple[int, int], ...], pad: tuple[int, int],
                  text_type: int, padding_side: str = "right", truncation_side: str = "right",
                  outputs: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids"),
                  p: str = "pack") -> list[str]:
    """prefix + content (truncated to fit max_length) + suffix per row, padded to the longest row on
    `padding_side`: what a HF tokenizer's post-processor, truncation and padding=True produce.

    Each (id, type_id) pair is one special token. Returns the `outputs` asked for, int64
    [batch, sequence]; an empty batch has the length of an empty text.
    """
    n_pre, n_suf = len(prefix), len(suffix)
    room = max_length - n_pre - n_suf
    kept = b.op("Min", [lengths, b.const(f"{p}/room", [room], np.int64)], f"{p}/kept")
    if truncation_side == "left":  # keep the end of the text
        starts = b.op("Add", [starts, b.op("Sub", [lengths, kept], f"{p}/cut")], f"{p}/starts_left")
    total = b.op("Add", [kept, b.const(f"{p}/specials", [n_pre + n_suf], np.int64)], f"{p}/total")
    seq_len = b.op("ReduceMax", [b.op("Concat", [total, b.const(f"{p}/empty_row", [n_pre + n_suf], np.int64)],
                                      f"{p}/total0", axis=0)], f"{p}/seq_len", keepdims=0)
    cols = b.op("Range", [b.const(f"{p}/start", 0), seq_len, b.const(f"{p}/step", 1)], f"{p}/cols")
    axis1 = b.const(f"{p}/axis1", [1])
    column = partial(_column, b, axis1, p)
    kept2, total2, starts2 = column(kept, "kept"), column(total, "total"), column(starts, "starts")
    c = cols if padding_side == "right" else b.op(
        "Sub", [cols, b.op("Sub", [seq_len, total2], f"{p}/left_pad")], f"{p}/c")
    in_row = b.op("And", [b.op("GreaterOrEqual", [c, b.const(f"{p}/zero", 0)], f"{p}/c_ge0"),
                          b.op("Less", [c, total2], f"{p}/c_lt_total")], f"{p}/in_row")
    content_end = b.op("Add", [kept2, b.const(f"{p}/n_pre", n_pre)], f"{p}/content_end")
    is_pre = b.op("Less", [c, b.const(f"{p}/n_pre_c", n_pre)], f"{p}/is_pre")
    is_content = b.op("And", [b.op("Not", [is_pre], f"{p}/not_pre"), b.op("Less", [c, content_end], f"{p}/lt_end")],
                      f"{p}/is_content")
    # table: prefix ids, suffix ids, pad id, then the content ids
    pad_slot = n_pre + n_suf
    suffix_slot = b.op("Add", [b.op("Sub", [c, content_end], f"{p}/after"), b.const(f"{p}/suf0", n_pre)],
                       f"{p}/suffix_slot")
    content_slot = b.op("Add", [starts2, b.op("Sub", [c, b.const(f"{p}/n_pre_s", n_pre)], f"{p}/into")],
                        f"{p}/content_rel")
    content_slot = b.op("Add", [content_slot, b.const(f"{p}/content0", pad_slot + 1)], f"{p}/content_slot")
    slot = b.op("Where", [is_content, content_slot, suffix_slot], f"{p}/slot_content")
    slot = b.op("Where", [is_pre, c, slot], f"{p}/slot_pre")
    slot = b.op("Where", [in_row, slot, b.const(f"{p}/pad_slot", pad_slot)], f"{p}/slot")
    fixed = [i for i, _ in prefix] + [i for i, _ in suffix] + [pad[0]]
    table = b.op("Concat", [b.const(f"{p}/fixed_ids", fixed, np.int64), ids], f"{p}/id_table", axis=0)
    results = {"input_ids": b.op("Gather", [table, slot], "input_ids", axis=0)}
    if "attention_mask" in outputs:
        results["attention_mask"] = b.op("Cast", [in_row], "attention_mask", to=TensorProto.INT64)
    if "token_type_ids" in outputs:
        kinds = b.op("Where", [is_content, b.const(f"{p}/content_kind", pad_slot + 1), slot], f"{p}/type_slot")
        types = [t for _, t in prefix] + [t for _, t in suffix] + [pad[1], text_type]
        results["token_type_ids"] = b.op("Gather", [b.const(f"{p}/type_table", types, np.int64), kinds],
                                         "token_type_ids", axis=0)
    return [results[name] for name in outputs]


def _column(b: GraphBuilder, axis1: str, p: str, value: str, name: str) -> str:
    return b.op("Unsqueeze", [value, axis1], f"{p}/{name}2")


def append_optional(b: GraphBuilder, values: str, splits: str, extra: str, has_extra: str,
                    p: str) -> tuple[str, str]:
    """Row r of (values, splits) followed by extra[r] where has_extra[r]: new (values, splits).
    Each value moves right by the number of extras in the rows before its own."""
    starts, ends, lengths = split_bounds(b, splits, f"{p}/rows")
    added = b.op("Cast", [has_extra], f"{p}/added", to=TensorProto.INT64)
    new_ends = b.op("CumSum", [b.op("Add", [lengths, added], f"{p}/new_lengths"), b.const(f"{p}/axis0", 0)],
                    f"{p}/new_ends")
    new_splits = b.op("Concat", [b.const(f"{p}/zero", [0]), new_ends], f"{p}/new_splits", axis=0)
    # shift of row r = extras in rows < r; spread over its values with the row index of each value
    shift = b.op("Sub", [b.op("CumSum", [added, b.const(f"{p}/axis0s", 0)], f"{p}/added_through"), added],
                 f"{p}/shift")
    n = b.op("Shape", [values], f"{p}/n")
    row_of = row_index(b, splits, n, f"{p}/row_of")
    at = b.op("Add", [b.op("Range", [b.const(f"{p}/r0", 0), b.op("Squeeze", [n], f"{p}/n0"),
                                     b.const(f"{p}/r1", 1)], f"{p}/positions"),
                      b.op("Gather", [shift, row_of], f"{p}/value_shift", axis=0)], f"{p}/value_at")
    extra_at = b.op("Compress", [b.op("Sub", [new_ends, b.const(f"{p}/one", 1)], f"{p}/last"), has_extra],
                    f"{p}/extra_at", axis=0)
    total = b.op("Slice", [new_splits, b.const(f"{p}/last_s", [-1]), b.const(f"{p}/last_e", [2**62])], f"{p}/total")
    blank = b.op("ConstantOfShape", [total], f"{p}/blank", value=helper.make_tensor("z", TensorProto.INT64, [1], [0]))
    out = b.op("ScatterElements", [blank, b.op("Concat", [at, extra_at], f"{p}/at", axis=0),
                                   b.op("Concat", [values, b.op("Compress", [extra, has_extra], f"{p}/extras",
                                                                axis=0)], f"{p}/scattered", axis=0)],
               f"{p}/values", axis=0)
    return out, new_splits


def row_index(b: GraphBuilder, splits: str, n: str, p: str) -> str:
    """int64 [n]: the row each of n ragged values belongs to (empty rows hold none)."""
    marks = b.op("ScatterElements", [
        b.op("ConstantOfShape", [b.op("Add", [n, b.const(f"{p}/one_more", [1])], f"{p}/n1")], f"{p}/zeros",
             value=helper.make_tensor("z", TensorProto.INT64, [1], [0])),
        splits, b.op("Expand", [b.const(f"{p}/one", 1), b.op("Shape", [splits], f"{p}/ns")], f"{p}/ones")],
        f"{p}/starts_marked", axis=0, reduction="add")
    rows = b.op("Sub", [b.op("CumSum", [marks, b.const(f"{p}/axis0", 0)], f"{p}/count"), b.const(f"{p}/one_r", 1)],
                f"{p}/rows_all")
    return b.op("Slice", [rows, b.const(f"{p}/s0", [0]), n], f"{p}/rows")
