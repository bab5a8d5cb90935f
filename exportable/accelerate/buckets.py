"""The opset-23 attention of unpad.py's packed branch, per length bucket: the texts longer than
half the padded width, and the rest, each padded to its own longest text."""

from __future__ import annotations

import copy

import numpy as np
from onnx import TensorProto, helper

from ..graph import int64_constant

PREFIX = "exportable_unpad"  # every name unpad.py and this module add starts with it


def int_const(consts, value) -> str:
    return int64_constant(consts, PREFIX, value)



BUCKETS = ("long", "short")
MASKED = -1e9  # additive mask of a padding key: exp() of it is exactly 0, and never -inf (no NaN)


def bucket_nodes(keep, consts):
    """Once per call, for each bucket k: `k/slots` [n_k * S_k], each slot's row in [packed; zero
    row] (text by text, its real tokens first, then the zero row); `k/mask` [n_k, 1, S_k, S_k],
    the additive key mask; `k/lead` = [n_k, S_k]. And `bucket/back` [T]: each real token's row in
    the bucket contexts concatenated (long, then short). An empty bucket holds one dummy text of
    one zero row, because ORT's opset-23 kernel rejects a zero-row batch."""
    p, n = PREFIX, helper.make_node
    b = f"{p}/bucket"
    consts[f"{b}/masked"] = np.array(MASKED, np.float32)
    consts[f"{b}/open"] = np.array(0, np.float32)
    zero, one, two = int_const(consts, 0), int_const(consts, 1), int_const(consts, 2)
    nodes = [
        n("Cast", [keep], [f"{b}/keep_i"], name=f"{b}/keep_i", to=TensorProto.INT64),
        n("ReduceSum", [f"{b}/keep_i", int_const(consts, [1])], [f"{b}/lengths"], name=f"{b}/lengths", keepdims=0),
        n("CumSum", [f"{b}/lengths", zero], [f"{b}/ends"], name=f"{b}/ends"),
        n("Sub", [f"{b}/ends", f"{b}/lengths"], [f"{b}/starts"], name=f"{b}/starts"),  # first packed row of each text
        n("Gather", [f"{p}/lead", one], [f"{b}/width"], name=f"{b}/width", axis=0),
        n("Div", [f"{b}/width", two], [f"{b}/half"], name=f"{b}/half"),
        n("Greater", [f"{b}/lengths", f"{b}/half"], [f"{b}/in_long"], name=f"{b}/in_long"),
        n("Not", [f"{b}/in_long"], [f"{b}/in_short"], name=f"{b}/in_short"),
        n("Squeeze", [f"{p}/tokens"], [f"{b}/t"], name=f"{b}/t"),
    ]
    for k in BUCKETS:
        c = f"{b}/{k}"
        nodes += [
            n("NonZero", [f"{b}/in_{k}"], [f"{c}/nz"], name=f"{c}/nz"),
            n("Reshape", [f"{c}/nz", f"{p}/flat"], [f"{c}/members"], name=f"{c}/members"),
            n("Shape", [f"{c}/members"], [f"{c}/n"], name=f"{c}/n"),
            n("Max", [f"{c}/n", int_const(consts, [1])], [f"{c}/rows"], name=f"{c}/rows"),  # with the dummy if empty
            n("Gather", [f"{b}/lengths", f"{c}/members"], [f"{c}/len0"], name=f"{c}/len0", axis=0),
            n("Concat", [f"{c}/len0", int_const(consts, [1])], [f"{c}/len1"], name=f"{c}/len1", axis=0),
            n("Slice", [f"{c}/len1", int_const(consts, [0]), f"{c}/rows"], [f"{c}/len"], name=f"{c}/len"),
            n("Gather", [f"{b}/starts", f"{c}/members"], [f"{c}/start0"], name=f"{c}/start0", axis=0),
            # the dummy's one row is the zero row, T (`tokens` is [T])
            n("Concat", [f"{c}/start0", f"{p}/tokens"], [f"{c}/start1"], name=f"{c}/start1", axis=0),
            n("Slice", [f"{c}/start1", int_const(consts, [0]), f"{c}/rows"], [f"{c}/start"], name=f"{c}/start"),
            n("ReduceMax", [f"{c}/len"], [f"{c}/s"], name=f"{c}/s", keepdims=0),
            n("Range", [zero, f"{c}/s", one], [f"{c}/j"], name=f"{c}/j"),
            n("Unsqueeze", [f"{c}/len", int_const(consts, [1])], [f"{c}/len_col"], name=f"{c}/len_col"),
            n("Unsqueeze", [f"{c}/start", int_const(consts, [1])], [f"{c}/start_col"], name=f"{c}/start_col"),
            n("Less", [f"{c}/j", f"{c}/len_col"], [f"{c}/valid"], name=f"{c}/valid"),
            n("Add", [f"{c}/start_col", f"{c}/j"], [f"{c}/row"], name=f"{c}/row"),
            n("Where", [f"{c}/valid", f"{c}/row", f"{b}/t"], [f"{c}/slot_grid"], name=f"{c}/slot_grid"),
            n("Reshape", [f"{c}/slot_grid", f"{p}/flat"], [f"{c}/slots"], name=f"{c}/slots"),
            n("Unsqueeze", [f"{c}/s", int_const(consts, [0])], [f"{c}/s1"], name=f"{c}/s1"),
            n("Concat", [f"{c}/rows", f"{c}/s1"], [f"{c}/lead"], name=f"{c}/lead", axis=0),
            n("Where", [f"{c}/valid", f"{b}/open", f"{b}/masked"], [f"{c}/key_mask"], name=f"{c}/key_mask"),
            n("Unsqueeze", [f"{c}/key_mask", int_const(consts, [1, 2])], [f"{c}/key_mask4"], name=f"{c}/key_mask4"),
            # ORT's kernel wants the mask's query dim spelled out ("inconsistent q_sequence_length")
            n("Concat", [f"{c}/rows", int_const(consts, [1]), f"{c}/s1", f"{c}/s1"], [f"{c}/mask_shape"],
              name=f"{c}/mask_shape", axis=0),
            n("Expand", [f"{c}/key_mask4", f"{c}/mask_shape"], [f"{c}/mask"], name=f"{c}/mask"),
            # each text's first row in its bucket's layout: its rank in the bucket times S_k
            n("Cast", [f"{b}/in_{k}"], [f"{c}/in_i"], name=f"{c}/in_i", to=TensorProto.INT64),
            n("CumSum", [f"{c}/in_i", zero], [f"{c}/rank1"], name=f"{c}/rank1"),
            n("Sub", [f"{c}/rank1", f"{c}/in_i"], [f"{c}/rank"], name=f"{c}/rank"),
            n("Mul", [f"{c}/rank", f"{c}/s"], [f"{c}/first"], name=f"{c}/first"),
            n("Mul", [f"{c}/rows", f"{c}/s"], [f"{c}/size"], name=f"{c}/size"),
        ]
    nodes += [
        n("Squeeze", [f"{b}/long/size"], [f"{b}/long_size"], name=f"{b}/long_size"),
        n("Add", [f"{b}/short/first", f"{b}/long_size"], [f"{b}/short_first"], name=f"{b}/short_first"),
        n("Where", [f"{b}/in_long", f"{b}/long/first", f"{b}/short_first"], [f"{b}/text_first"], name=f"{b}/text_first"),
        # a real token's text (flat slot // S) and its place among that text's real tokens
        n("Div", [f"{p}/index", f"{b}/width"], [f"{b}/text"], name=f"{b}/text"),
        n("Range", [zero, f"{b}/t", one], [f"{b}/packed_row"], name=f"{b}/packed_row"),
        n("Gather", [f"{b}/starts", f"{b}/text"], [f"{b}/token_start"], name=f"{b}/token_start", axis=0),
        n("Sub", [f"{b}/packed_row", f"{b}/token_start"], [f"{b}/place"], name=f"{b}/place"),
        n("Gather", [f"{b}/text_first", f"{b}/text"], [f"{b}/token_first"], name=f"{b}/token_first", axis=0),
        n("Add", [f"{b}/token_first", f"{b}/place"], [f"{b}/back"], name=f"{b}/back"),
    ]
    return nodes


def bucketed_attention(clone, inputs, node, widths, consts):
    """The opset-23 attention `clone` on packed Q, K, V (`inputs`), once per length bucket; the
    contexts concatenated and gathered back to packed rows."""


    p, q, n = PREFIX, f"{PREFIX}/packed", helper.make_node
    b = f"{p}/bucket"
    nodes, contexts = [], []
    for x in dict.fromkeys(inputs[:3]):  # Q, K and V may be one tensor
        nodes.append(n("Pad", [x, f"{p}/pad_row"], [f"{x}/with_zero_row"], name=f"{x}/zero_row"))
    for k in BUCKETS:
        c = f"{b}/{k}"
        padded = []
        for j in range(3):
            x, width = inputs[j], widths[node.input[j]]
            to = f"{x}/{k}"
            if to not in padded:  # constant widths: see _packed_branch's pad()
                nodes += [
                    n("Gather", [f"{x}/with_zero_row", f"{c}/slots"], [f"{to}/slots"], name=f"{to}/scatter", axis=0),
                    n("Concat", [f"{c}/lead", int_const(consts, [width])], [f"{to}/shape"], name=f"{to}/shape", axis=0),
                    n("Reshape", [f"{to}/slots", f"{to}/shape"], [to], name=f"{to}/reshape"),
                ]
            padded.append(to)
        context = f"{q}/{node.output[0]}/{k}"
        attention = copy.deepcopy(clone)
        attention.name = f"{clone.name}/{k}"
        attention.input[:] = [*padded, f"{c}/mask"]
        attention.output[:] = [context]
        nodes += [attention,
                  n("Reshape", [context, int_const(consts, [-1, widths[node.output[0]]])], [f"{context}/rows"],
                    name=f"{context}/rows")]
        contexts.append(f"{context}/rows")
    out = f"{q}/{node.output[0]}"
    nodes += [n("Concat", contexts, [f"{out}/buckets"], name=f"{out}/buckets", axis=0),
              n("Gather", [f"{out}/buckets", f"{b}/back"], [out], name=f"{out}/gather", axis=0)]
    return nodes
