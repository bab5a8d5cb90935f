"""Added tokens (<s>, </s>, <|endoftext|>, <mask>, ...) cut out of the text before the model's
tokenizer sees it, as Hugging Face does: each becomes its own segment with its id, the text
between them is tokenized run by run.

RE2's alternation is leftmost-first; listing longer tokens first gives HF's leftmost-longest
match. `lstrip`/`rstrip` tokens also take the whitespace (Rust's char::is_whitespace) beside them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from onnx import TensorProto, helper

from ..onnx_builder import CONTRIB, ML, SPLIT_TYPES, STRING, GraphBuilder
from .settings import TokenizerError

# Rust's char::is_whitespace (Unicode White_Space), which tokenizers' lstrip/rstrip use.
WHITESPACE = r"[\t-\r \x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000}]"


@dataclass(frozen=True)
class AddedToken:
    content: str
    id: int
    lstrip: bool = False
    rstrip: bool = False


class Segments(NamedTuple):
    segments: str    # string [segments]: text runs and added tokens, in order
    splits: str      # int64 [rows + 1]: row r is segments[splits[r]:splits[r + 1]]
    is_added: str    # bool [segments]
    added_ids: str   # int64 [segments]: the added token's id (-1 for a text run)
    first: str       # bool [segments]: the segment starts its row

def added_tokens(backend: dict) -> list[AddedToken]:
    """The pipeline's added tokens, or TokenizerError naming one the graph cannot match exactly."""
    tokens = []
    for i, tok in enumerate(backend.get("added_tokens") or []):
        where = f"tokenizer.json added_tokens[{i}] ({tok['content']!r})"
        if tok.get("single_word"):
            raise TokenizerError(f"{where}: single_word=true is not supported")
        if tok.get("normalized") and backend.get("normalizer"):
            raise TokenizerError(f"{where}: normalized=true with a normalizer is not supported")
        if not tok["content"]:
            raise TokenizerError(f"{where}: an empty added token is not supported")
        tokens.append(AddedToken(tok["content"], int(tok["id"]), bool(tok.get("lstrip")), bool(tok.get("rstrip"))))
    return tokens


def split_added(b: GraphBuilder, texts: str, tokens: list[AddedToken], p: str) -> Segments:
    if not tokens:  # one segment per row, the row itself
        rows = b.op("Shape", [texts], f"{p}/rows")
        splits = b.op("Range", [b.const(f"{p}/r0", 0), b.op("Add", [b.op("Squeeze", [rows], f"{p}/n"),
                                                                   b.const(f"{p}/one", 1)], f"{p}/n1"),
                                b.const(f"{p}/r1", 1)], f"{p}/splits")
        none = b.op("ConstantOfShape", [rows], f"{p}/none",
                    value=helper.make_tensor("value", TensorProto.INT64, [1], [-1]))
        never = b.op("Equal", [none, b.const(f"{p}/zero_n", 0)], f"{p}/is_added")
        return Segments(texts, splits, never, none, b.op("Not", [never], f"{p}/first"))
    ordered = sorted(tokens, key=lambda t: (-len(t.content), t.content))
    alternation = "|".join(_pattern(t) for t in ordered)
    # Every delimiter is an added token, so keep them all: "(?s).+" compiles faster than the
    # alternation again (the op compiles both patterns on every run).
    segments, begins, _, splits = b.op(
        "StringRegexSplitWithOffsets",
        [texts, b.const(f"{p}/pattern", f"({alternation})"), b.const(f"{p}/keep", "(?s).+")],
        [f"{p}/segments", f"{p}/begins", f"{p}/ends", f"{p}/splits"], domain=CONTRIB, types=SPLIT_TYPES)
    key = segments
    if any(t.lstrip or t.rstrip for t in tokens):  # look up " <mask>" as "<mask>"
        key = b.op("StringRegexReplace", [segments, b.const(f"{p}/strip", f"^{WHITESPACE}+|{WHITESPACE}+$"),
                                          b.const(f"{p}/nothing", "")], f"{p}/stripped", domain=CONTRIB,
                   types=[(STRING, 1)])
    ids = b.op("LabelEncoder", [key], f"{p}/ids", domain=ML, keys_strings=[t.content for t in ordered],
               values_int64s=[t.id for t in ordered], default_int64=-1)
    is_added = b.op("GreaterOrEqual", [ids, b.const(f"{p}/zero", 0)], f"{p}/is_added")
    first = b.op("Equal", [begins, b.const(f"{p}/offset0", 0)], f"{p}/first")  # pieces are never empty
    return Segments(segments, splits, is_added, ids, first)


def _pattern(token: AddedToken) -> str:
    # Every character as \x{..}: no RE2 metacharacter can slip through.
    literal = "".join(f"\\x{{{ord(ch):X}}}" for ch in token.content)
    return f"{WHITESPACE + '*' if token.lstrip else ''}{literal}{WHITESPACE + '*' if token.rstrip else ''}"
