"""The per-character table behind BERT normalisation and pre-tokenisation.

Hugging Face's BertNormalizer (clean_text, Chinese-char padding, NFD + drop Mn, lowercase) and
BertPreTokenizer (split on whitespace, isolate punctuation) both act on one character at a time,
so their composition is a function F from a character to a short string in which ' ' marks a word
boundary: F('É') = 'e', F('!') = ' ! ', F('\\u200b') = '', F('\\xa0') = ' '. The graph applies F
and then splits on ' '.

F is *probed* from the `tokenizers` components themselves rather than re-derived from Python's
`unicodedata`: HF mixes Unicode versions (Rust's std for lowercase and whitespace, an old
`unicode_categories` table for Mn/punctuation/control, an old NFD table), so a re-derivation
disagrees on hundreds of code points (e.g. marks added after Unicode 8 are not stripped by HF).

The one thing that is not per-character is NFD's canonical reordering of adjacent combining
marks. It only matters for marks that survive stripping (HF's old Mn table misses 181 of them,
e.g. U+08D4 before U+1B44 comes out swapped), and only changes ids if the vocabulary holds such
a mark: any other word holding one is [UNK] in either order. `reorderable_marks` lets the graph
builder warn when that is the case.
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass

from tokenizers import normalizers, pre_tokenizers

MAX_CODE_POINT = 0x10FFFF
_SURROGATES = range(0xD800, 0xE000)  # not encodable as UTF-8, so never in a text tensor
_CHUNK = 4096
# Separates probed characters in one normalize_str call; a starter (ccc 0) so NFD cannot
# reorder across it. A chunk whose output does not split back into one piece per character
# is probed again one character at a time.
_PROBE_SEPARATOR = "\U0001F600"

Ranges = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class CharTable:
    """F split by kind (char_graph.py picks a regex pass or the lookup table for each).

    drop: inclusive code-point ranges with F(c) == ''.
    space: ranges with F(c) == ' ' (whitespace).
    isolate: ranges with F(c) == ' c ' (punctuation and CJK ideographs).
    mapping: every other character whose F differs from itself (split, look up, join). Keys and
        values never hold a tab or newline, which the StringMapping op uses as its separators.
    """

    drop: Ranges
    space: Ranges
    isolate: Ranges
    mapping: Mapping[str, str]

    def apply(self, text: str) -> str:
        """Pure-Python F over a text: the reference for the graph's normalisation stage."""
        return "".join(self._one(ch) for ch in text)

    def _one(self, ch: str) -> str:
        cp = ord(ch)
        if _in_ranges(cp, self.drop):
            return ""
        if _in_ranges(cp, self.space):
            return " "
        if _in_ranges(cp, self.isolate):
            return f" {ch} "
        return self.mapping.get(ch, ch)


def reorderable_marks(table: CharTable) -> set[str]:
    """Characters with a non-zero canonical combining class (Python's Unicode data) that F can
    output: the ones HF's NFD may reorder when they stand next to each other."""
    out = {ch for ch in _combining_chars() if table.apply(ch) == ch}
    out.update(ch for value in table.mapping.values() for ch in value if unicodedata.combining(ch))
    return out


@functools.lru_cache(maxsize=1)
def _combining_chars() -> tuple[str, ...]:
    return tuple(chr(cp) for cp in _code_points() if unicodedata.combining(chr(cp)))


def _in_ranges(cp: int, ranges: Ranges) -> bool:
    return any(lo <= cp <= hi for lo, hi in ranges)


def regex_class(ranges: Ranges) -> str:
    """An RE2 character class for inclusive code-point ranges, every bound as \\x{...}."""
    parts = [f"\\x{{{lo:X}}}" if lo == hi else f"\\x{{{lo:X}}}-\\x{{{hi:X}}}" for lo, hi in ranges]
    return "[" + "".join(parts) + "]"


def _code_points() -> list[int]:
    return [cp for cp in range(MAX_CODE_POINT + 1) if cp not in _SURROGATES]


def _probe_normalizer(normalizer, cps: list[int]) -> list[str]:
    out: list[str] = []
    for start in range(0, len(cps), _CHUNK):
        chars = [chr(cp) for cp in cps[start:start + _CHUNK]]
        pieces = normalizer.normalize_str(_PROBE_SEPARATOR.join(chars)).split(_PROBE_SEPARATOR)
        if len(pieces) != len(chars):
            pieces = [normalizer.normalize_str(ch) for ch in chars]
        out.extend(pieces)
    return out


def _probe_pretokenizer(pre_tokenizer, cps: list[int]) -> tuple[set[str], set[str]]:
    """(whitespace, punctuation) per BertPreTokenizer, found by splitting 'a' c 'a' c 'a' ...:
    a removed character is whitespace, one standing alone as a piece is punctuation."""
    spaces: set[str] = set()
    puncts: set[str] = set()
    for start in range(0, len(cps), _CHUNK):
        chars = [chr(cp) for cp in cps[start:start + _CHUNK]]
        text = "a" + "a".join(chars) + "a"
        covered = bytearray(len(text))
        for piece, (lo, hi) in pre_tokenizer.pre_tokenize_str(text):
            covered[lo:hi] = b"\x01" * (hi - lo)
            if hi - lo == 1 and lo % 2 == 1:
                puncts.add(piece)
        spaces.update(ch for i, ch in enumerate(chars) if not covered[2 * i + 1])
    return spaces, puncts


def code_point_ranges(cps) -> Ranges:
    """Sorted code points -> inclusive (first, last) runs."""
    out: list[tuple[int, int]] = []
    for cp in cps:
        if out and out[-1][1] == cp - 1:
            out[-1] = (out[-1][0], cp)
        else:
            out.append((cp, cp))
    return tuple(out)


@functools.lru_cache(maxsize=8)
def char_table(*, lowercase: bool, strip_accents: bool | None, handle_chinese_chars: bool,
               clean_text: bool) -> CharTable:
    """Probe HF's BertNormalizer + BertPreTokenizer over every code point (about 3 s, cached)."""
    normalizer = normalizers.BertNormalizer(clean_text=clean_text, handle_chinese_chars=handle_chinese_chars,
                                            strip_accents=strip_accents, lowercase=lowercase)
    cps = _code_points()
    normalized = _probe_normalizer(normalizer, cps)
    spaces, puncts = _probe_pretokenizer(pre_tokenizers.BertPreTokenizer(), cps)

    def word_view(s: str) -> str:
        return "".join(" " if x in spaces else f" {x} " if x in puncts else x for x in s)

    drop, space, isolate, mapping = [], [], [], {}
    boundary = spaces | puncts
    for cp, norm in zip(cps, normalized):
        ch = chr(cp)
        if norm == ch and ch not in boundary:
            continue  # the common case, kept off the slow path
        f = word_view(norm)
        if f == ch:
            continue
        if f == "":
            drop.append(cp)
        elif f == " ":
            space.append(cp)
        elif f == f" {ch} ":
            isolate.append(cp)
        else:
            mapping[ch] = f
    return CharTable(drop=code_point_ranges(drop), space=code_point_ranges(space),
                     isolate=code_point_ranges(isolate), mapping=mapping)
