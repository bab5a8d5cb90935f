"""The detokenizer as one ONNX graph: ids [batch, steps] int64 -> text [batch] string, equal to
`tokenizer.batch_decode(ids, skip_special_tokens=True)` of the Hugging Face fast tokenizer.

    model = build_decode_graph(plan, opset=18)

Each id becomes the bytes its token stands for (a table built here from the pipeline's decoder,
special tokens empty when skipped); a row's bytes are then repaired as UTF-8 exactly as Rust's
String::from_utf8_lossy does inside the HF ByteLevel decoder: each maximal ill-formed subsequence
(Unicode 3-7: a lead byte with the continuation bytes that can still follow it, or one stray
byte) becomes one U+FFFD; then one string per row.

onnxruntime-extensions' BpeDecoder is not used: it is wrong on a [B > 1, L] input (rows run
together) and does no U+FFFD repair. Limits: the row join (ortx StringJoin) reads C strings, so
a decoded NUL byte is dropped; ids outside the vocabulary decode to nothing (HF skips them too).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..onnx_builder import GraphBuilder
from .bytelevel import byte_to_char
from .plan import TokenizerPlan
from .ragged import join_rows, row_index
from .sentencepiece import METASPACE
from .settings import TokenizerError

REPLACEMENT = "\ufffd".encode()
# Python's str.replace sequence of transformers' clean_up_tokenization, in its order.
CLEAN_UP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
            (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


@dataclass(frozen=True)
class DecodeTable:
    """What each id decodes to, as the pipeline's decoder says."""

    token_bytes: list[bytes]          # index = id; special tokens empty when skipped
    byte_token: list[bool]            # ByteFallback: a <0xNN> piece (groups of them decode together)
    strip_leading_space: bool = False  # Metaspace's first-token rule / Strip(' ', 1, 0) after Fuse
    first_bytes: list[bytes] | None = None  # WordPiece: a row's first token decodes differently


def decode_table(plan: TokenizerPlan, skip_special_tokens: bool = True) -> DecodeTable:
    """The table for `plan`'s decoder, or TokenizerError naming a decoder the graph cannot follow."""
    steps = _decoder_steps(plan.backend.get("decoder"))
    model = plan.backend["model"]
    vocab = model["vocab"]
    pieces = {i: entry[0] for i, entry in enumerate(vocab)} if isinstance(vocab, list) else \
        {int(i): t for t, i in vocab.items()}
    added = {int(t["id"]): t for t in plan.backend.get("added_tokens") or []}
    size = max([*pieces, *added]) + 1
    chars = {c: byte for byte, c in byte_to_char().items()}
    table, flags, first = [], [], []
    for i in range(size):
        token = added[i]["content"] if i in added else pieces.get(i)
        skipped = token is None or (i in added and added[i].get("special") and skip_special_tokens)
        data, is_byte = (b"", False) if skipped else _token(token, steps, chars)
        table.append(data)
        flags.append(is_byte)
        first.append(b"" if skipped else _wordpiece_first(token, steps))
    return DecodeTable(table, flags, "strip" in steps, first if "wordpiece" in steps else None)


def _decoder_steps(decoder: dict | None) -> set[str]:
    """The decoder as a set of the steps exportable reproduces, or TokenizerError with its path."""
    parts = decoder.get("decoders") if decoder and decoder.get("type") == "Sequence" else [decoder]
    steps = set()
    for i, part in enumerate(parts):
        where = "decoder" if len(parts) == 1 else f"decoder.decoders[{i}]"
        kind = (part or {}).get("type")
        if kind == "ByteLevel":
            steps.add("bytelevel")
        elif kind == "Metaspace" and part.get("replacement") == METASPACE:
            steps.add("metaspace")
            if part.get("prepend_scheme", "always") != "never":
                steps.add("strip")
        elif kind == "Replace" and part.get("pattern") == {"String": METASPACE} and part.get("content") == " ":
            steps.add("metaspace")
        elif kind == "ByteFallback":
            steps.add("bytefallback")
        elif kind == "Fuse":
            continue
        elif kind == "Strip" and part.get("content") == " " and part.get("start") == 1 and not part.get("stop"):
            steps.add("strip")
        elif kind == "WordPiece" and part.get("prefix") == "##":
            steps.update({"wordpiece", "cleanup"} if part.get("cleanup", True) else {"wordpiece"})
        else:
            raise TokenizerError(f"tokenizer.json {where}: {kind!r} {part} is not supported for decoding")
    return steps


def _byte_level(token: str, chars: dict[str, int]) -> bytes:
    # tokenizers' ByteLevel decoder: a token whose every character is in the byte table decodes to
    # those bytes; any other token (an added token such as "中文") passes as its UTF-8 bytes.
    if all(c in chars for c in token):
        return bytes(chars[c] for c in token)
    return token.encode()


def _wordpiece_cleanup(text: str, steps: set[str]) -> str:
    # tokenizers' WordPiece decoder cleans each token (its leading space included) on its own
    if "cleanup" in steps:
        for old, new in (*CLEAN_UP, (" do not", " don't")):
            text = text.replace(old, new)
    return text


def _wordpiece_first(token: str, steps: set[str]) -> bytes:
    """A row's first token: as it is (no space before it, its ## kept), cleaned."""
    return _wordpiece_cleanup(token, steps).encode() if "wordpiece" in steps else b""


def _token(token: str, steps: set[str], chars: dict[str, int]) -> tuple[bytes, bool]:
    if "wordpiece" in steps:  # "##ing" joins the token before it; any other token follows a space
        return _wordpiece_cleanup(token[2:] if token.startswith("##") else " " + token, steps).encode(), False
    if "bytefallback" in steps and len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
        return bytes([int(token[3:5], 16)]), True
    if "bytelevel" in steps:
        return _byte_level(token, chars), False
    if "metaspace" in steps:
        return token.replace(METASPACE, " ").encode(), False
    return token.encode(), False


def build_decode_graph(plan: TokenizerPlan, opset: int = 18, skip_special_tokens: bool = True,
                       clean_up_tokenization_spaces: bool = False, ids_name: str = "ids",
                       text_name: str = "text") -> onnx.ModelProto:
    b = GraphBuilder(opset)
    decode_into(b, ids_name, text_name, decode_table(plan, skip_special_tokens), clean_up_tokenization_spaces)
    model = b.model(
        "detokenizer",
        [helper.make_tensor_value_info(ids_name, TensorProto.INT64, ["batch", "steps"])],
        [helper.make_tensor_value_info(text_name, TensorProto.STRING, ["batch"])],
        doc=f"{plan.kind} detokenizer from {plan.source}: ids -> UTF-8 text, HF batch_decode parity")
    helper.set_model_props(model, {"exportable.detokenizer": json.dumps(
        {"source": plan.source, "skip_special_tokens": skip_special_tokens,
         "clean_up_tokenization_spaces": clean_up_tokenization_spaces}, sort_keys=True)})
    return model


def decode_into(b: GraphBuilder, ids: str, out: str, table: DecodeTable, clean_up: bool = False) -> str:
    """Nodes that decode `ids` [batch, steps] into the string tensor `out` [batch]."""
    byte_values, from_byte_token, row_splits = _row_bytes(b, ids, table)
    pieces = _repaired_pieces(b, byte_values, from_byte_token, row_splits, table.strip_leading_space)
    # One extra row of one piece, dropped after the join: ortx StringJoin crashes the process on an
    # input with no row or no column (ids [0, S] or [B, 0] gave a segfault).
    pieces = b.op("Concat", [pieces, b.const("decode/dummy_piece", ["-"])], "decode/pieces_dummy", axis=0)
    last = b.op("Slice", [row_splits, b.const("decode/last_s", [-1]), b.const("decode/last_e", [2**62])],
                "decode/last")
    row_splits = b.op("Concat", [row_splits, b.op("Add", [last, b.const("decode/one_piece", [1])], "decode/end")],
                      "decode/splits_dummy", axis=0)
    text = join_rows(b, pieces, row_splits, "decode/join")
    text = b.op("Slice", [text, b.const("decode/rows_s", [0]), b.const("decode/rows_e", [-1])], "decode/rows")
    if clean_up:
        text = _clean_up(b, text)
    return b.op("Identity", [text], out)


def _row_bytes(b: GraphBuilder, ids: str, table: DecodeTable) -> tuple[str, str, str]:
    """(bytes [total] int32, from a byte token [total] bool, splits [batch + 1]) of each row's tokens."""
    size = len(table.token_bytes)
    # one extra entry: the empty token (ids outside the vocabulary); WordPiece's first-token table after it
    tokens = [*table.token_bytes, b""] + ([*table.first_bytes, b""] if table.first_bytes is not None else [])
    width = max(1, max(len(t) for t in tokens))
    padded = np.zeros((len(tokens), width), np.int32)
    lengths = np.zeros(len(tokens), np.int64)
    for i, token in enumerate(tokens):
        padded[i, :len(token)] = list(token)
        lengths[i] = len(token)
    known = b.op("And", [b.op("GreaterOrEqual", [ids, b.const("decode/zero", 0)], "decode/ge0"),
                         b.op("Less", [ids, b.const("decode/size", size)], "decode/lt_size")], "decode/known")
    safe = b.op("Where", [known, ids, b.const("decode/empty_id", size)], "decode/safe_ids")
    length_table = b.const("decode/length_table", lengths)
    if table.first_bytes is not None:
        safe = _first_token_ids(b, safe, length_table, size + 1)
    token_bytes_ = b.op("Gather", [b.const("decode/byte_table", padded), safe], "decode/token_bytes", axis=0)
    token_lengths = b.op("Gather", [length_table, safe], "decode/token_lengths", axis=0)
    byte_token_table = [*table.byte_token, False] * (2 if table.first_bytes is not None else 1)
    byte_token = b.op("Gather", [b.const("decode/byte_token_table", byte_token_table), safe],
                      "decode/byte_token", axis=0)
    cols = b.const("decode/cols", np.arange(width, dtype=np.int64))
    valid = b.op("Less", [cols, b.op("Unsqueeze", [token_lengths, b.const("decode/axis2", [2])], "decode/len3")],
                 "decode/valid")
    flat = b.const("decode/flat", [-1])
    valid_flat = b.op("Reshape", [valid, flat], "decode/valid_flat")
    values = b.op("Compress", [b.op("Reshape", [token_bytes_, flat], "decode/bytes_flat"), valid_flat],
                  "decode/bytes", axis=0)
    spread = b.op("Expand", [b.op("Unsqueeze", [byte_token, b.const("decode/axis2b", [2])], "decode/bt3"),
                             b.op("Shape", [valid], "decode/valid_shape")], "decode/byte_token_bytes")
    from_byte_token = b.op("Compress", [b.op("Reshape", [spread, flat], "decode/bt_flat"), valid_flat],
                           "decode/from_byte_token", axis=0)
    per_row = b.op("ReduceSum", [token_lengths, b.const("decode/axis1", [1])], "decode/row_bytes", keepdims=0)
    ends = b.op("CumSum", [per_row, b.const("decode/axis0", 0)], "decode/ends")
    return values, from_byte_token, b.op("Concat", [b.const("decode/start0", [0]), ends], "decode/splits", axis=0)


def _first_token_ids(b: GraphBuilder, safe: str, lengths: str, offset: int) -> str:
    """Ids moved to the first-token table where the token is its row's first that decodes to anything."""
    nonempty = b.op("Cast", [b.op("Greater", [b.op("Gather", [lengths, safe], "decode/rest_lengths", axis=0),
                                              b.const("decode/no_bytes", 0)], "decode/nonempty")],
                    "decode/nonempty_i", to=TensorProto.INT64)
    seen = b.op("CumSum", [nonempty, b.const("decode/axis1c", 1)], "decode/seen")
    first = b.op("And", [b.op("Cast", [nonempty], "decode/nonempty_b", to=TensorProto.BOOL),
                         b.op("Equal", [seen, b.const("decode/one_seen", 1)], "decode/seen_one")], "decode/first")
    return b.op("Where", [first, b.op("Add", [safe, b.const("decode/first_offset", offset)], "decode/first_ids"),
                          safe], "decode/table_ids")


def _repaired_pieces(b: GraphBuilder, x: str, from_byte_token: str, splits: str, strip_leading_space: bool) -> str:
    """One string per byte: the byte itself where it belongs to a well-formed sequence, U+FFFD where
    a maximal ill-formed subsequence starts, "" for the rest of that subsequence. Bytes of <0xNN>
    tokens (ByteFallback) decode by groups of consecutive such tokens: a group that is not all
    well-formed is one U+FFFD per byte, as tokenizers' ByteFallback decoder does."""
    p = "utf8"
    n = b.op("Shape", [x], f"{p}/n")
    positions = b.op("Range", [b.const(f"{p}/r0", 0), b.op("Squeeze", [n], f"{p}/n0"), b.const(f"{p}/r1", 1)],
                     f"{p}/positions")
    row = row_index(b, splits, n, f"{p}/row_of")
    row_start = b.op("Equal", [positions, b.op("Gather", [splits, row], f"{p}/row_start_at", axis=0)],
                     f"{p}/row_start")
    row_end = b.op("Gather", [splits, b.op("Add", [row, b.const(f"{p}/one_e", 1)], f"{p}/row1")], f"{p}/row_end",
                   axis=0)
    # x shifted by k within its row (-1 past the row's end: never a continuation byte)
    padded = b.op("Concat", [x, b.const(f"{p}/pad", [-1, -1, -1], np.int32)], f"{p}/x_padded", axis=0)

    def ahead(k: int) -> str:
        at = b.op("Add", [positions, b.const(f"{p}/k{k}", k)], f"{p}/at{k}")
        value = b.op("Gather", [padded, at], f"{p}/raw{k}", axis=0)
        inside = b.op("Less", [at, row_end], f"{p}/inside{k}")
        return b.op("Where", [inside, value, b.const(f"{p}/outside{k}", -1, np.int32)], f"{p}/x{k}")

    def between(v: str, lo: int, hi: int, name: str) -> str:
        return b.op("And", [b.op("GreaterOrEqual", [v, b.const(f"{p}/{name}_lo", lo, np.int32)], f"{p}/{name}_ge"),
                            b.op("LessOrEqual", [v, b.const(f"{p}/{name}_hi", hi, np.int32)], f"{p}/{name}_le")],
                     f"{p}/{name}")

    x1, x2, x3 = ahead(1), ahead(2), ahead(3)
    need, second_ok = _lead_rules(b, x, x1, between, p)
    cont2, cont3 = between(x2, 0x80, 0xBF, "c2"), between(x3, 0x80, 0xBF, "c3")
    # k: how many bytes from here still fit the sequence this lead starts (1..need)
    def as_int(v: str, name: str) -> str:
        return b.op("Cast", [v], f"{p}/{name}_i", to=TensorProto.INT64)

    got2 = b.op("And", [second_ok, b.op("Greater", [need, b.const(f"{p}/one_n", 1)], f"{p}/need2")], f"{p}/got2")
    got3 = b.op("And", [got2, b.op("And", [cont2, b.op("Greater", [need, b.const(f"{p}/two_n", 2)], f"{p}/need3")],
                                   f"{p}/c2n")], f"{p}/got3")
    got4 = b.op("And", [got3, b.op("And", [cont3, b.op("Greater", [need, b.const(f"{p}/three_n", 3)], f"{p}/need4")],
                                   f"{p}/c3n")], f"{p}/got4")
    k = b.op("Add", [b.op("Add", [as_int(got2, "g2"), as_int(got3, "g3")], f"{p}/k23"), as_int(got4, "g4")], f"{p}/k_more")
    k = b.op("Add", [k, b.const(f"{p}/one_k", 1)], f"{p}/k")
    is_lead = b.op("Greater", [need, b.const(f"{p}/zero_n", 0)], f"{p}/is_lead")
    complete = b.op("And", [is_lead, b.op("Equal", [k, need], f"{p}/k_eq_need")], f"{p}/complete")
    covered = _covered(b, complete, need, p)
    uncovered = b.op("Not", [covered], f"{p}/uncovered")
    # the rest of an ill-formed subsequence started by a lead 1 or 2 bytes back
    bad_lead = b.op("And", [uncovered, is_lead], f"{p}/bad_lead")
    absorbed = b.op("Or", [_back(b, bad_lead, k, 1, 2, p), _back(b, bad_lead, k, 2, 3, p)], f"{p}/absorbed_any")
    absorbed = b.op("And", [uncovered, absorbed], f"{p}/absorbed")
    code = b.op("Where", [absorbed, b.const(f"{p}/code_empty", 257), b.const(f"{p}/code_fffd", 256)], f"{p}/code_bad")
    code = b.op("Where", [covered, b.op("Cast", [x], f"{p}/x64", to=TensorProto.INT64), code], f"{p}/code")
    bad_group = _in_bad_group(b, from_byte_token, row_start, uncovered, n, p)
    code = b.op("Where", [bad_group, b.const(f"{p}/code_group_fffd", 256), code], f"{p}/code_groups")
    if strip_leading_space:
        space_first = b.op("And", [row_start, b.op("Equal", [code, b.const(f"{p}/space", 32)], f"{p}/is_space")],
                           f"{p}/space_first")
        code = b.op("Where", [space_first, b.const(f"{p}/code_stripped", 257), code], f"{p}/code_stripped_first")
    table = b.const(f"{p}/piece_table", [bytes([i]) for i in range(256)] + [REPLACEMENT, b""], object)
    return b.op("Gather", [table, code], f"{p}/pieces", axis=0)


def _in_bad_group(b: GraphBuilder, from_byte_token: str, row_start: str, uncovered: str, n: str, p: str) -> str:
    """Bytes of a ByteFallback group (consecutive <0xNN> tokens) that holds an ill-formed byte."""
    before = _shift_back(b, from_byte_token, 1, False, p, "bt_before")
    starts = b.op("And", [from_byte_token, b.op("Or", [row_start, b.op("Not", [before], f"{p}/not_bt_before")],
                                                f"{p}/boundary")], f"{p}/group_start")
    group = b.op("Sub", [b.op("CumSum", [b.op("Cast", [starts], f"{p}/group_start_i", to=TensorProto.INT64),
                                         b.const(f"{p}/g_axis", 0)], f"{p}/group_count"), b.const(f"{p}/g1", 1)],
                 f"{p}/group_raw")
    slot = b.op("Where", [from_byte_token, group, b.op("Squeeze", [n], f"{p}/n_slot")], f"{p}/group")
    bad = b.op("ScatterElements", [
        b.op("ConstantOfShape", [b.op("Add", [n, b.const(f"{p}/g_more", [1])], f"{p}/g_n1")], f"{p}/g_zeros",
             value=helper.make_tensor("zero", TensorProto.INT64, [1], [0])),
        slot, b.op("Cast", [uncovered], f"{p}/uncovered_i", to=TensorProto.INT64)], f"{p}/group_bad", axis=0,
        reduction="max")
    hit = b.op("Greater", [b.op("Gather", [bad, slot], f"{p}/byte_group_bad", axis=0), b.const(f"{p}/g0", 0)],
               f"{p}/group_hit")
    return b.op("And", [from_byte_token, hit], f"{p}/in_bad_group")


def _lead_rules(b, x, x1, between, p) -> tuple[str, str]:
    """(bytes the sequence at x needs, 0 for a byte that cannot start one; whether x1 may follow x)."""
    rules = [  # (lead range, length, allowed second byte) from Unicode Table 3-7
        ((0x00, 0x7F), 1, None), ((0xC2, 0xDF), 2, (0x80, 0xBF)), ((0xE0, 0xE0), 3, (0xA0, 0xBF)),
        ((0xE1, 0xEC), 3, (0x80, 0xBF)), ((0xED, 0xED), 3, (0x80, 0x9F)), ((0xEE, 0xEF), 3, (0x80, 0xBF)),
        ((0xF0, 0xF0), 4, (0x90, 0xBF)), ((0xF1, 0xF3), 4, (0x80, 0xBF)), ((0xF4, 0xF4), 4, (0x80, 0x8F)),
    ]
    need = b.const(f"{p}/need0", 0)
    second_ok = b.const(f"{p}/second0", False)
    for i, ((lo, hi), length, second) in enumerate(rules):
        is_rule = between(x, lo, hi, f"lead{i}")
        need = b.op("Where", [is_rule, b.const(f"{p}/len{i}", length), need], f"{p}/need_{i}")
        if second:
            ok = b.op("And", [is_rule, between(x1, second[0], second[1], f"second{i}")], f"{p}/second_ok{i}")
            second_ok = b.op("Or", [second_ok, ok], f"{p}/second_{i}")
    return need, second_ok


def _covered(b, complete, need, p) -> str:
    """Whether each byte lies inside a well-formed sequence (one that starts 0..3 bytes back)."""
    covered = complete
    for back in (1, 2, 3):
        starts_back = _shift_back(b, complete, back, False, p, f"complete{back}")
        long_enough = b.op("Greater", [_shift_back(b, need, back, 0, p, f"need{back}"), b.const(f"{p}/b{back}", back)],
                           f"{p}/long{back}")
        covered = b.op("Or", [covered, b.op("And", [starts_back, long_enough], f"{p}/cov_and{back}")],
                       f"{p}/covered{back}")
    return covered


def _back(b, bad_lead, k, back, min_k, p) -> str:
    lead = _shift_back(b, bad_lead, back, False, p, f"bad{back}")
    reach = _shift_back(b, k, back, 0, p, f"k{back}")
    return b.op("And", [lead, b.op("GreaterOrEqual", [reach, b.const(f"{p}/mink{back}", min_k)], f"{p}/reach{back}")],
                f"{p}/from{back}")


def _shift_back(b, value: str, back: int, fill, p: str, name: str) -> str:
    """value[i - back] (fill for i < back). Sequences never span rows: a row ends before a byte a
    lead there would need, so the lead's `need`/`k` already stop at the row's end."""
    dtype = bool if isinstance(fill, bool) else np.int64
    pad = b.const(f"{p}/{name}_fill", [fill] * back, dtype)
    joined = b.op("Concat", [pad, value], f"{p}/{name}_joined", axis=0)
    end = b.op("Shape", [value], f"{p}/{name}_n")
    return b.op("Slice", [joined, b.const(f"{p}/{name}_s", [0]), end], f"{p}/{name}_shift")


def _clean_up(b: GraphBuilder, text: str) -> str:
    for i, (old, new) in enumerate(CLEAN_UP):
        text = b.op("StringRegexReplace", [text, b.const(f"clean/pattern{i}", _re2_literal(old)),
                                           b.const(f"clean/rewrite{i}", new.replace("\\", "\\\\"))],
                    f"clean/text{i}", domain="ai.onnx.contrib", types=[(TensorProto.STRING, 1)])
    return text


def _re2_literal(text: str) -> str:
    return "".join(f"\\x{{{ord(ch):X}}}" for ch in text)
