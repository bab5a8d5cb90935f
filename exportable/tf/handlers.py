"""tf2onnx rewrites and op handlers for tensorflow-text's BERT tokenizer, registered per
conversion from our code (no patching of tf2onnx or onnxruntime-extensions).

  rewrite_char_chains      CaseFoldUTF8 -> NormalizeUTF8 -> StaticRegexReplace... (any run of
                           per-character string ops) becomes the probed table F (chartable.py),
                           built from ONNX + ortx ops. Fixes "Tensorflow op CaseFoldUTF8 / NormalizeUTF8
                           is not supported" (onnx/tensorflow-onnx#1609), which left nodes that ONNX
                           Runtime refuses ("No Op registered for CaseFoldUTF8").
  rewrite_regex_patterns   RegexSplitWithOffsets / StaticRegexReplace patterns get their Unicode
                           classes (\\p{P}, ...) spelled out as the ranges TF's RE2 matches: ortx's
                           RE2 has older Unicode tables (44 code points split differently, regex.py).
  wordpiece_handler        WordpieceTokenizeWithOffsets -> ortx WordpieceTokenizer with the vocab
                           baked in, fixing four differences of tf2onnx's own handler (below).
  ragged_handler           RaggedRange / RaggedTensorToTensor / RaggedTensorToSparse: tf2onnx's own
                           conversion with its row widths guarded. It computes indices as i // width
                           and i % width, width = longest row: 0 for a batch of blank strings
                           ("Integer division by zero" in ONNX Runtime), INT64_MIN for no rows.
  erfc_handler             Erfc -> 1 - Erf. Keras 3's exact GELU is 0.5 * x * erfc(-x / sqrt(2)),
                           and tf2onnx 1.17 has no Erfc ("Tensorflow op [...: Erfc] is not supported").

Lookup tables (LookupTableFindV2 -> CategoryMapper, LookupTableSizeV2 -> constant) are left to
tf2onnx: they convert once the tables are captured, which convert.py ensures by loading a
SavedModel (tf2onnx's `from_function` passes no tables: "Could not determine table shared name").
"""

from __future__ import annotations

import json

import numpy as np
from onnx import helper

from ..errors import ExportError
from ..onnx_builder import CONTRIB, INT64, ML, SPLIT_TYPES, STRING
from ..text.bert_graph import NUL_STANDIN, replace_nul
from ..text.char_graph import apply_char_table
from ..text.wordpiece import collapse_unknown_words
from .builder import Tf2onnxBuilder
from .chartable import Step, absorbable, probe_table
from .regex import pin_unicode_classes

# ---- per-character chains -------------------------------------------------------------------

def rewrite_char_chains(g, ops):
    """tf2onnx custom rewriter (runs before op conversion, on TF-typed nodes)."""
    for chain in _chains(g):
        _replace_chain(g, chain)
    return g.get_nodes()


def _step(node) -> Step | None:
    if node is None:
        return None
    if node.type == "CaseFoldUTF8":
        return Step("CaseFoldUTF8")
    if node.type == "NormalizeUTF8":
        return Step("NormalizeUTF8", form=node.get_attr_str("normalization_form").upper())
    if node.type == "StaticRegexReplace":
        step = Step("StaticRegexReplace", pattern=node.get_attr_str("pattern"), rewrite=node.get_attr_str("rewrite"))
        return step if absorbable(step, bool(node.get_attr_value("replace_global", 1))) else None
    return None


def _next(g, node):
    """The one consumer that continues the chain, if the chain's value goes nowhere else."""
    consumers = g.find_output_consumers(node.output[0])
    if len(consumers) == 1 and _step(consumers[0]) is not None and consumers[0].input[0] == node.output[0]:
        return consumers[0]
    return None


def _chains(g) -> list[list]:
    nodes = [n for n in g.get_nodes() if _step(n) is not None]
    continued = {id(_next(g, n)) for n in nodes if _next(g, n) is not None}
    chains = []
    for head in (n for n in nodes if id(n) not in continued):
        chain = [head]
        while (nxt := _next(g, chain[-1])) is not None:
            chain.append(nxt)
        chains.append(chain)
    return chains


def _replace_chain(g, chain: list) -> None:
    steps = tuple(_step(n) for n in chain)
    table = probe_table(steps)
    _check_nul(steps, table)
    b = Tf2onnxBuilder(g, f"{chain[-1].name}/exportable_chartable")
    x = chain[0].input[0]
    flat = b.op("Reshape", [x, b.const("flat_shape", [-1], np.int64)], "flat")
    # One extra "" row: ortx StringJoin (inside the table stage) crashes on an empty batch.
    rows = b.op("Concat", [flat, b.const("dummy_row", [""])], "rows", axis=0)
    mapped = apply_char_table(b, replace_nul(b, rows), table)
    kept = b.op("Slice", [mapped, b.const("start", [0], np.int64), b.const("stop", [-1], np.int64)], "kept")
    out = b.op("Reshape", [kept, b.op("Shape", [x], "shape")], "out")
    g.replace_all_inputs(chain[-1].output[0], b.name(out))
    for node in reversed(chain):
        g.remove_node(node.name)


def _check_nul(steps: tuple[Step, ...], table) -> None:
    """ortx string ops read C strings: "a\x00b" reaches them as "a". exportable.text's replace_nul
    swaps NUL for \x01 with standard ops first, but it also drops empty parts and pads rows with
    trailing \x01s. That is exact when the chain maps both characters to nothing, and exact up to
    runs of whitespace (which the BERT split discards) when it maps both to whitespace, as
    BasicTokenizer's \\p{Cc} -> " " does."""
    nul, standin = table.apply("\x00"), table.apply(NUL_STANDIN)
    if nul != standin or nul.strip():
        raise ExportError(f"the TF string chain {' -> '.join(s.describe() for s in steps)} maps NUL to {nul!r} and "
                          f"\\x01 to {standin!r}; onnxruntime-extensions string ops cannot see NUL, so only chains "
                          "that turn both into the same whitespace (or nothing) can be converted")


# ---- regex patterns ------------------------------------------------------------------------

def rewrite_regex_patterns(g, ops):
    """tf2onnx custom rewriter: pin the Unicode classes of the patterns ortx will compile."""
    for node in list(g.get_nodes()):
        if node.type == "StaticRegexReplace":
            node.set_attr("pattern", pin_unicode_classes(node.get_attr_str("pattern")))
        elif node.type == "RegexSplitWithOffsets":
            for index in (1, 2):  # delim_regex_pattern, keep_delim_regex_pattern
                _pin_const_pattern(g, node, index)
    return g.get_nodes()


def _pin_const_pattern(g, node, index: int) -> None:
    source = node.inputs[index]
    if source is None or not source.is_const():
        return  # a pattern computed at run time reaches ortx as it is
    value = source.get_tensor_value(as_list=False)
    pattern = value.reshape(-1)[0]
    pattern = pattern.decode("utf-8") if isinstance(pattern, bytes) else str(pattern)
    pinned = pin_unicode_classes(pattern)
    if pinned != pattern:
        const = g.make_const(f"{node.name}/exportable_pattern_{index}",
                             np.array(pinned.encode("utf-8"), dtype=object).reshape(value.shape))
        g.replace_input(node, node.input[index], const.output[0], index)


# ---- ragged ops -----------------------------------------------------------------------------

RAGGED_OPS = ("RaggedRange", "RaggedTensorToTensor", "RaggedTensorToSparse")


def ragged_handler(op_type: str):
    """A custom-op handler that runs tf2onnx's own conversion of `op_type`, then guards the
    widths (ReduceMax over row lengths) it created:
      - width = Max(width, 0): over an empty batch ReduceMax gives INT64_MIN in ONNX Runtime, and
        the dense shape [0, INT64_MIN] fails ("Tensor shape.Size() must be >= 0"); TF gives [0, 0].
      - as a divisor, Max(width, 1): with width 0 there are no indices to divide, so any non-zero
        divisor gives the same empty result, without "Integer division by zero"."""
    from tf2onnx.onnx_opset import tensor  # noqa: PLC0415  # optional extra (tf)

    convert = getattr(tensor, op_type).version_11

    def handle(ctx, node, name, args):
        before = {id(n) for n in ctx.get_nodes()}
        convert(ctx, node)
        for width in [n for n in ctx.get_nodes() if id(n) not in before and n.type == "ReduceMax"]:
            _guard_width(ctx, width)

    return handle


def _guard_width(ctx, reduce_max) -> None:
    raw = reduce_max.output[0]
    users = ctx.find_output_consumers(raw)
    width = _max_with(ctx, raw, 0, f"{reduce_max.name}/exportable_nonnegative")
    ctx.replace_all_inputs(raw, width, ops=users)
    divisor = None
    for user in users:
        if user.type in ("Div", "Mod") and user.input[1] == width:
            divisor = divisor or _max_with(ctx, width, 1, f"{reduce_max.name}/exportable_nonzero")
            ctx.replace_input(user, width, divisor, 1)


def _max_with(ctx, value: str, floor: int, name: str) -> str:
    dtype = helper.tensor_dtype_to_np_dtype(ctx.get_dtype(value))
    const = ctx.make_const(f"{name}/floor", np.array(floor, dtype)).output[0]
    return ctx.make_node("Max", [value, const], name=name).output[0]


# ---- Erfc ---------------------------------------------------------------------------------

def erfc_handler(ctx, node, name, args):
    """1 - erf(x) loses erfc's relative precision where erfc(x) is tiny (x > ~4), but only
    below 1e-7 absolute, which is what a GELU's output sees."""
    b = Tf2onnxBuilder(ctx, f"{node.name}/exportable_erfc")
    dtype = helper.tensor_dtype_to_np_dtype(ctx.get_dtype(node.input[0]))
    out = b.op("Sub", [b.const("one", 1, dtype), b.op("Erf", [node.input[0]], "erf")], "erfc")
    ctx.replace_all_inputs(node.output[0], b.name(out))
    ctx.remove_node(node.name)


# ---- WordPiece ------------------------------------------------------------------------------

def wordpiece_handler(tables: dict):
    """A tf2onnx custom-op handler for WordpieceTokenizeWithOffsets, bound to the captured tables
    (the custom-op handler API gets no `initialized_tables`, so they come in through here)."""

    def handle(ctx, node, name, args):
        _convert_wordpiece(ctx, node, tables)

    return handle


def _convert_wordpiece(ctx, node, tables: dict) -> None:
    """tf2onnx's own handler differs from TF in four ways, each fixed here:
      - ids: it numbers the vocab by the table's key order, which after SavedModel export is hash
        order, not the vocab ids; the real ids come from the table's values.
      - long words: TF emits [UNK] for a word over max_bytes_per_word UTF-8 *bytes*; ortx counts
        code points (max_input_chars_per_word), so "ж"*51 (102 bytes) would be split.
      - unknown words: TF emits one [UNK] for a word it cannot split; ortx keeps the pieces found
        so far and appends [UNK] ("unbelievable\U000301a2" -> unbelievable, [UNK]).
      - spaces: ortx splits its input on " " ("a b" -> a, b); for TF that is one word, [UNK]."""
    _check_wordpiece_options(ctx, node)
    vocab = _vocab(ctx, node, tables)
    unk = node.get_attr_str("unknown_token")
    max_bytes = node.get_attr_int("max_bytes_per_word")
    id_of = dict(vocab)
    id_of.setdefault(unk, min(vocab.values(), default=0) - 1)  # an [UNK] missing from the vocab still round-trips
    b = Tf2onnxBuilder(ctx, f"{node.name}/exportable_wordpiece")

    words = _unknown_up_front(b, node.input[0], unk, max_bytes)
    # One trailing [UNK] word, dropped below: collapse_unknown_words reads ids[start - 1] for a word
    # with no pieces (""), which must exist even when every word is "".
    words = b.op("Concat", [words, b.const("sentinel", [unk])], "with_sentinel", axis=0)
    # Every word that passed the byte test has at most max_bytes code points: ortx's own limit never cuts.
    pieces, splits, _, _ = b.op(
        "WordpieceTokenizer", [words, b.const("no_rows", np.zeros(0, np.int64))],
        ["pieces", "word_splits", "row_begins", "row_ends"], domain=CONTRIB, types=SPLIT_TYPES,
        vocab=json.dumps(vocab, ensure_ascii=False, sort_keys=True), unknown_token=unk,
        suffix_indicator=node.get_attr_str("suffix_indicator"), max_input_chars_per_word=max_bytes)
    keys = sorted(id_of)
    ids = b.op("LabelEncoder", [pieces], "ids", domain=ML, keys_strings=keys,
               values_int64s=[id_of[k] for k in keys], default_int64=id_of[unk])
    ids, splits = collapse_unknown_words(b, ids, splits, id_of[unk])
    ids = b.op("Slice", [ids, b.const("zero", [0], np.int64), b.const("last", [-1], np.int64)], "ids_kept")
    splits = b.op("Slice", [splits, "zero", "last"], "splits_kept")
    by_id = sorted(keys, key=id_of.get)
    tokens = b.op("LabelEncoder", [ids], "tokens", domain=ML, keys_int64s=[id_of[k] for k in by_id],
                  values_strings=by_id, default_string=unk)
    if (node.get_attr_value("output_row_partition_type") or b"row_lengths") == b"row_lengths":
        ends = b.op("Slice", [splits, b.const("one", [1], np.int64), b.const("end", [2**62], np.int64)], "ends")
        splits = b.op("Sub", [ends, b.op("Slice", [splits, "zero", "last"], "starts")], "row_lengths")
    ctx.replace_all_inputs(node.output[0], b.name(tokens))
    ctx.replace_all_inputs(node.output[1], b.name(splits))
    ctx.remove_node(node.name)


def _unknown_up_front(b, words: str, unk: str, max_bytes: int) -> str:
    """Words TF makes [UNK] outright but ortx would split become the unknown token: longer than
    max_bytes UTF-8 bytes, or holding a space (no vocab piece holds one, checked in _vocab, so
    TF's greedy match cannot cross it)."""
    widened = _widen_to_bytes(b, words)
    n_bytes = b.op("StringLength", [widened], "n_bytes", domain=CONTRIB, types=[(INT64, 1)])
    spaceless = b.op("StringRegexReplace", [widened, b.const("space", " "), b.const("nothing", "")], "spaceless",
                     domain=CONTRIB, types=[(STRING, 1)])
    n_spaceless = b.op("StringLength", [spaceless], "n_spaceless", domain=CONTRIB, types=[(INT64, 1)])
    unknown = b.op("Or", [b.op("Greater", [n_bytes, b.const("max_bytes", max_bytes, np.int64)], "too_long"),
                          b.op("Less", [n_spaceless, n_bytes], "has_space")], "unknown")
    return b.op("Where", [unknown, b.const("unk", unk), words], "checked_words")


def _check_wordpiece_options(ctx, node) -> None:
    unsupported = []
    if not node.get_attr_value("use_unknown_token", 1):
        unsupported.append("use_unknown_token=False")
    if node.get_attr_value("split_unknown_characters", 0):
        unsupported.append("split_unknown_characters=True")
    if node.get_attr_value("max_chars_per_token", 0):
        unsupported.append(f"max_chars_per_token={node.get_attr_value('max_chars_per_token')}")
    if unsupported:
        raise ExportError(f"WordpieceTokenizeWithOffsets {node.name}: {', '.join(unsupported)} is not supported by "
                          "the ONNX WordpieceTokenizer; use the tensorflow-text defaults")
    for out in node.output[2:]:
        if ctx.find_output_consumers(out):
            raise ExportError(f"WordpieceTokenizeWithOffsets {node.name}: the model uses the word-piece offsets "
                              "(tokenize_with_offsets), which the ONNX WordpieceTokenizer does not produce; "
                              "export a signature built on tokenize()")


def _vocab(ctx, node, tables: dict) -> dict[str, int]:
    table = ctx.get_node_by_output(node.input[1])
    while table is not None and table.type == "Identity":
        table = table.inputs[0]
    shared = table.get_attr_value("shared_name") if table is not None else None
    if shared not in tables:
        raise ExportError(f"WordpieceTokenizeWithOffsets {node.name}: its vocabulary table ({shared!r}) was not "
                          "captured; convert from a SavedModel (tf2onnx's from_function collects no tables: "
                          "'Could not determine table shared name')")
    keys, values = tables[shared]
    vocab = {(k.decode("utf-8") if isinstance(k, bytes) else str(k)): int(v) for k, v in zip(keys, values)}
    if len(set(vocab.values())) != len(vocab):
        raise ExportError(f"WordpieceTokenizeWithOffsets {node.name}: the vocabulary maps several tokens to one id; "
                          "not supported")
    spaced = [k for k in vocab if " " in k]
    if spaced:  # the ONNX op splits its input on spaces, so such a token could never match
        raise ExportError(f"WordpieceTokenizeWithOffsets {node.name}: vocabulary tokens {spaced[:3]!r} hold a space; "
                          "the ONNX WordpieceTokenizer cannot match them")
    return vocab


def _widen_to_bytes(b, words: str) -> str:
    """Each multi-byte character replaced by one '.' per UTF-8 byte (RE2 classes by code-point
    range), so that ortx StringLength, which counts code points, counts bytes."""
    text = words
    for n, (lo, hi) in ((2, (0x80, 0x7FF)), (3, (0x800, 0xFFFF)), (4, (0x10000, 0x10FFFF))):
        text = b.op("StringRegexReplace", [text, b.const(f"bytes{n}/pattern", f"[\\x{{{lo:X}}}-\\x{{{hi:X}}}]"),
                                           b.const(f"bytes{n}/rewrite", "." * n)],
                    f"bytes{n}/widened", domain=CONTRIB, types=[(STRING, 1)])
    return text
