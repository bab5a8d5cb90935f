"""The BERT (WordPiece) tokenizer as one ONNX graph: text [batch] -> input_ids, attention_mask,
token_type_ids [batch, sequence], equal to the Hugging Face fast tokenizer called with
padding=True, truncation=True, max_length=settings.max_length.

Stages, in graph order (each value is prefixed with its stage name):

  rows       append one "" row, so no string op below ever sees an empty tensor
             (ortx StringJoin writes out[0] on an empty result: a crash on batch 0)
  nul        NUL -> \\x01; ortx ops read strings as C strings, so "a\\x00b" would reach them as
             "a". Both are dropped by clean_text; \\x01 still blocks an added-token match across it
  added      split out added tokens ([CLS], [SEP], ...) verbatim, as HF does before normalising
  normalize  the per-character table F (normalize.py, char_graph.py): regex passes for
             whitespace and long ranges, split / StringMapping / join for the other characters
  wordpiece  split on ' ', ortx WordpieceTokenizer per word, piece -> id (ai.onnx.ml LabelEncoder:
             the op emits strings, not ids), unknown words collapsed to one [UNK] (wordpiece.py);
             added tokens skip normalisation and pass as one word
  pack       [CLS] ... [SEP], truncation, right padding (ragged.py, standard ops)

onnxruntime-extensions' own BertTokenizer is not used: it takes at most two strings ("only
support one or two query") and its normalisation differs from HF on accented text.
"""

from __future__ import annotations

import json
import warnings

import onnx
from onnx import TensorProto, helper

from ..onnx_builder import CONTRIB, ML, MS, SPLIT_TYPES, STRING, GraphBuilder
from .char_graph import apply_char_table
from .normalize import CharTable, char_table, reorderable_marks
from .ragged import pack_with_specials, split_bounds
from .settings import TokenizerError, TokenizerSettings
from .wordpiece import wordpiece_ids

MIN_OPSET = 13  # Unsqueeze/Slice with tensor inputs
STANDARD_STRING_SPLIT_OPSET = 20
NUL_STANDIN = "\x01"
OUTPUTS = ("input_ids", "attention_mask", "token_type_ids")


def build_tokenizer_graph(settings: TokenizerSettings, opset: int = 17) -> onnx.ModelProto:
    """The tokenizer graph for `settings`, importing ai.onnx at `opset` (13 or newer)."""
    newest = onnx.defs.onnx_opset_version()
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise TokenizerError(f"opset={opset!r} is not supported; use {MIN_OPSET}..{newest}")
    table = char_table(lowercase=settings.lowercase, strip_accents=settings.strip_accents,
                       handle_chinese_chars=settings.handle_chinese_chars, clean_text=settings.clean_text)
    _warn_if_reordering_matters(settings, table)
    b = GraphBuilder(opset)
    texts = b.op("Concat", ["text", b.const("rows/dummy", [""])], "rows/texts", axis=0)
    texts = replace_nul(b, texts)
    segments, segment_splits = _split_added(b, texts, settings)
    normalized = apply_char_table(b, segments, table)
    words = b.op("Where", [_is_added(b, segments, settings), segments, normalized], "wordpiece/texts")
    ids, piece_splits = wordpiece_ids(b, words, settings)
    starts, _, lengths = _row_spans(b, piece_splits, segment_splits)
    pack_with_specials(b, ids, starts, lengths, max_length=settings.max_length,
                       cls=(settings.cls.id, settings.cls.type_id), sep=(settings.sep.id, settings.sep.type_id),
                       pad=(settings.pad.id, settings.pad.type_id), text_type=0)
    model = b.model(
        "bert_tokenizer",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["batch"])],
        [helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"]) for name in OUTPUTS],
        doc=f"WordPiece tokenizer from {settings.source}: UTF-8 text -> BERT inputs, HF fast-tokenizer parity",
    )
    helper.set_model_props(model, {"exportable.tokenizer": json.dumps(settings.metadata(), sort_keys=True)})
    return model


def _row_spans(b: GraphBuilder, piece_splits: str, segment_splits: str) -> tuple[str, str, str]:
    """(starts, ends, lengths) in `ids` of each input row. Row r spans segments
    segment_splits[r]..[r+1], hence pieces piece_splits[segment_splits[r]]..; the last row is
    the appended dummy and is dropped."""
    bounds = b.op("Gather", [piece_splits, segment_splits], "rows/piece_bounds", axis=0)
    real = b.op("Slice", [bounds, b.const("rows/0", [0]), b.const("rows/-1", [-1])], "rows/real_bounds")
    return split_bounds(b, real, "rows/span")


def _warn_if_reordering_matters(settings: TokenizerSettings, table: CharTable) -> None:
    """NFD reorders adjacent combining marks, the one step of HF's normaliser that is not per
    character. It cannot change ids unless the vocabulary holds a mark that survives
    normalisation (a word holding any other such mark is [UNK] in any order)."""
    if not settings.strips_accents:
        return  # no NFD at all
    marks = reorderable_marks(table) & {ch for token in settings.vocab for ch in token}
    if marks:
        warnings.warn(f"{settings.source}: the vocabulary holds combining marks {sorted(marks)} that survive "
                      "normalisation; HF's NFD may reorder them next to other marks, which this graph does not",
                      stacklevel=3)


def replace_nul(b: GraphBuilder, texts: str) -> str:
    """Split on NUL with standard ops (which keep NUL bytes) and join with a stand-in."""
    if b.opset >= STANDARD_STRING_SPLIT_OPSET:
        parts, _ = b.op("StringSplit", [texts], ["nul/parts", "nul/counts"], delimiter="\x00")
    else:
        # No standard string op before opset 20; ORT's own contrib Tokenizer splits on a separator.
        parts = b.op("Tokenizer", [texts], "nul/parts", domain=MS, types=[(STRING, 2)], mark=0, mincharnum=1,
                     pad_value="", separators=["\x00"])
    return b.op("StringJoin", [parts, b.const("nul/standin", NUL_STANDIN), b.const("nul/axis", 1)], "nul/texts",
                domain=CONTRIB, types=[(STRING, 1)])


def _split_added(b: GraphBuilder, texts: str, settings: TokenizerSettings) -> tuple[str, str]:
    """(segments, splits): each row cut into text runs and verbatim added tokens; one extra ""
    segment is appended so that the segment tensor is never empty."""
    # RE2 alternation is leftmost-first; longest-first ordering gives HF's leftmost-longest match.
    tokens = sorted(settings.added_tokens, key=lambda t: (-len(t), t))
    alternation = "|".join(_re2_literal(t) for t in tokens)
    # Every delimiter is an added token, so keep them all: "(?s).+" compiles faster than the
    # alternation again (the op compiles both patterns on every run).
    segments, _, _, splits = b.op(
        "StringRegexSplitWithOffsets",
        [texts, b.const("added/pattern", f"({alternation})"), b.const("added/keep", "(?s).+")],
        ["added/runs", "added/begins", "added/ends", "added/splits"], domain=CONTRIB, types=SPLIT_TYPES)
    segments = b.op("Concat", [segments, b.const("added/dummy", [""])], "added/segments", axis=0)
    return segments, splits


def _is_added(b: GraphBuilder, segments: str, settings: TokenizerSettings) -> str:
    flags = b.op("LabelEncoder", [segments], "added/is_added_int", domain=ML,
                 keys_strings=sorted(settings.added_tokens), values_int64s=[1] * len(settings.added_tokens),
                 default_int64=0)
    return b.op("Cast", [flags], "added/is_added", to=TensorProto.BOOL)


def _re2_literal(text: str) -> str:
    # Every character as \x{..}: no RE2 metacharacter can slip through.
    return "".join(f"\\x{{{ord(ch):X}}}" for ch in text)
