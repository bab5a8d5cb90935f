"""Hugging Face's Precompiled normalizer (the sentencepiece charsmap of XLM-R, T5, ALBERT) as
ONNX string ops, exactly as `tokenizers` applies it, which is not how sentencepiece does.

sentencepiece replaces the longest charsmap key at each position. `tokenizers` walks extended
grapheme clusters instead: a cluster under 6 UTF-8 bytes is replaced whole by the value of the
SHORTEST key that is a prefix of it, if any ("ｚ́" -> "z": the acute is dropped, because "ｚ"
alone is a key); every other cluster is mapped character by character, so multi-character keys
never apply inside a longer cluster ("ﾊﾟ", 6 bytes, stays "ハ" + U+309A where sentencepiece
writes "パ"). The keys that matter besides single characters are "base + combining mark"
pairs (NFC compositions, no shorter key), and the clusters under 6 bytes with two or more
characters are a base of 1-3 bytes plus one or two extenders (GCB Extend, ZWJ, SpacingMark).

So, in graph order:
  protect   insert MARK (a character the table drops) between a key or pair base and extenders
            that make its cluster 6 bytes or longer: those clusters go character by character
  drop      a single-character key's remaining extenders are removed (its cluster is < 6 bytes)
  compose   what is left of a pair is a whole cluster: split it off, StringMapping, join
  table     every other character through the single-character map (char_graph.apply_char_table),
            MARK dropped; Unicode whitespace the map keeps becomes ' ' (WhitespaceSplit's set)
"""

from __future__ import annotations

import base64
import functools
import struct
from dataclasses import dataclass

import numpy as np

from ..onnx_builder import CONTRIB, SPLIT_TYPES, STRING, GraphBuilder
from .char_graph import apply_char_table
from .normalize import CharTable, code_point_ranges, regex_class
from .ragged import join_rows
from .settings import TokenizerError

MAX_CLUSTER = 6  # tokenizers' Precompiled: "if grapheme.len() < 6"
# Rust's char::is_whitespace (Unicode White_Space), which WhitespaceSplit splits on.
UNICODE_WHITESPACE = ("\t\n\x0b\x0c\r \x85\xa0\u1680" + "".join(chr(c) for c in range(0x2000, 0x200B))
                      + "\u2028\u2029\u202f\u205f\u3000")


@dataclass(frozen=True)
class Charsmap:
    single: dict[str, str]  # one-character key -> value
    pairs: dict[str, str]  # two-character key under 6 bytes whose first character is no key -> value


def parse_charsmap(blob: bytes) -> Charsmap:
    """The keys of a sentencepiece precompiled charsmap (darts-clone double array + values)
    that can ever apply in tokenizers' walk: single characters and pairs under 6 bytes."""
    size = struct.unpack("<I", blob[:4])[0]
    units = np.frombuffer(blob[4:4 + size], dtype="<u4").astype(np.int64)
    values = blob[4 + size:]
    keys = _trie_keys(units, values, max_bytes=MAX_CLUSTER - 1)
    text = {k.decode("utf-8"): v.decode("utf-8") for k, v in keys.items() if _utf8(k)}
    single = {k: v for k, v in text.items() if len(k) == 1}
    pairs = {k: v for k, v in text.items() if len(k) == 2 and k[0] not in single}
    return Charsmap(single, pairs)


def _utf8(key: bytes) -> bool:
    try:
        key.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _trie_keys(units: np.ndarray, values: bytes, max_bytes: int) -> dict[bytes, bytes]:
    def offset(unit):
        return (unit >> 10) << ((unit & (1 << 9)) >> 6)

    labels = np.arange(1, 256, dtype=np.int64)
    keys: dict[bytes, bytes] = {}
    stack = [(int(offset(units[0])), b"")]
    while stack:
        pos, key = stack.pop()
        if len(key) >= max_bytes:
            continue
        child = pos ^ labels
        inside = child < len(units)
        found = inside.copy()
        found[inside] = (units[child[inside]] & ((1 << 31) | 0xFF)) == labels[inside]
        for label, at in zip(labels[found].tolist(), child[found].tolist()):
            unit = int(units[at])
            nxt = at ^ int(offset(unit))
            if (unit >> 8) & 1:
                start = int(units[nxt]) & ((1 << 31) - 1)
                keys[key + bytes([label])] = values[start:values.index(b"\0", start)]
            stack.append((nxt, key + bytes([label])))
    return keys


def extenders() -> frozenset[str]:
    """Characters that continue an extended grapheme cluster (GB9, GB9a)."""
    return _grapheme_class(r"[\p{Grapheme_Cluster_Break=Extend}\p{Grapheme_Cluster_Break=ZWJ}"
                           r"\p{Grapheme_Cluster_Break=SpacingMark}]")


def prepends() -> frozenset[str]:
    """Characters that the next character extends (GB9b)."""
    return _grapheme_class(r"\p{Grapheme_Cluster_Break=Prepend}")


def breakers() -> frozenset[str]:
    """Characters with a cluster boundary on both sides (GB4, GB5): nothing extends them."""
    return _grapheme_class(r"[\p{Grapheme_Cluster_Break=Control}\p{Grapheme_Cluster_Break=CR}"
                           r"\p{Grapheme_Cluster_Break=LF}]")


@functools.lru_cache(maxsize=4)
def _grapheme_class(pattern: str) -> frozenset[str]:
    import regex  # noqa: PLC0415  # a transformers dependency; only exports with a charsmap need it

    compiled = regex.compile(pattern)
    return frozenset(chr(cp) for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF and compiled.match(chr(cp)))


def charsmap_table(charsmap: Charsmap, mark: str) -> CharTable:
    """The per-character map, whitespace included: every Unicode whitespace character that the
    map keeps or maps to ' ' becomes ' ' (HF splits words at all of them)."""
    drop, space, mapping = [], [], {}
    for ch, value in charsmap.single.items():
        if value == "":
            drop.append(ord(ch))
        elif value == " " or (not value.strip() and len(value) == 1):
            space.append(ord(ch))
        else:
            mapping[ch] = value
    space += [ord(c) for c in UNICODE_WHITESPACE if c != " " and c not in charsmap.single]
    drop.append(ord(mark))
    return CharTable(drop=code_point_ranges(sorted(set(drop))), space=code_point_ranges(sorted(set(space))),
                     isolate=(), mapping=mapping)


def precompiled_normalize(b: GraphBuilder, text: str, charsmap: Charsmap, mark: str, p: str) -> str:
    """`text` [N] normalized as tokenizers' Precompiled normalizer does, Unicode whitespace as ' '."""
    ext = extenders()
    by_size = {n: _cls(c for c in ext if len(c.encode()) == n) for n in (2, 3, 4)}
    anyx = _cls(ext)
    # A cluster starts at a key unless the key extends the one before; controls stand alone.
    alone = ext | breakers()
    keys = {n: [c for c in charsmap.single if len(c.encode()) == n and c not in alone] for n in (2, 3)}
    pair_groups: dict[tuple[int, int], list[str]] = {}
    for pair in charsmap.pairs:
        pair_groups.setdefault((len(pair[0].encode()), len(pair[1].encode())), []).append(pair)
    m = mark  # a rewrite takes the character itself (RE2: "invalid rewrite pattern: \\1\\x{1}\\2")
    prepend = prepends()
    if any(c in charsmap.single for c in prepend):
        raise TokenizerError("normalizer.precompiled_charsmap: maps a Prepend character; not supported")
    # protect: a cluster that a Prepend character starts (GB9b) or that reaches 6 bytes keeps
    # every character: MARK after its head stops the rules below.
    rules = [(f"({_cls(prepend)})({_not(breakers())})({anyx})", f"\\1\\2{m}\\3")]
    for size, chars in keys.items():
        if chars:
            rules.append((f"({_cls(chars)})({_too_long(MAX_CLUSTER - 1 - size, by_size, anyx)})", f"\\1{m}\\2"))
    for (base, mark_size), pairs in sorted(pair_groups.items()):
        tail = _too_long(MAX_CLUSTER - 1 - base - mark_size, by_size, anyx)
        rules.append((f"({_cls(p[0] for p in pairs)})({_cls(p[1] for p in pairs)}(?:{tail}))", f"\\1{m}\\2"))
    # drop: what still follows a head is the rest of a cluster under 6 bytes, which becomes the
    # head's value alone.
    heads = [c for chars in keys.values() for c in chars]
    if heads:
        rules.append((f"({_cls(heads)}){anyx}+", "\\1"))
    if charsmap.pairs:
        alternation = "|".join(_escape(k) for k in sorted(charsmap.pairs))
        rules.append((f"({alternation}){anyx}+", "\\1"))
    for i, (pattern, rewrite) in enumerate(rules):
        text = b.op("StringRegexReplace", [text, b.const(f"{p}/cluster{i}_pattern", pattern),
                                           b.const(f"{p}/cluster{i}_rewrite", rewrite)],
                    f"{p}/cluster{i}", domain=CONTRIB, types=[(STRING, 1)])
    if charsmap.pairs:
        text = _compose_pairs(b, text, charsmap.pairs, p)
    return apply_char_table(b, text, charsmap_table(charsmap, mark))


def _compose_pairs(b: GraphBuilder, text: str, pairs: dict[str, str], p: str) -> str:
    alternation = "|".join(_escape(k) for k in sorted(pairs, key=lambda k: (-len(k.encode()), k)))
    runs, _, _, splits = b.op("StringRegexSplitWithOffsets",
                              [text, b.const(f"{p}/pair_pattern", f"({alternation})"),
                               b.const(f"{p}/pair_keep", "(?s).+")],
                              [f"{p}/pair_runs", f"{p}/pair_begins", f"{p}/pair_ends", f"{p}/pair_splits"],
                              domain=CONTRIB, types=SPLIT_TYPES)
    mapped = b.op("StringMapping", [runs], f"{p}/pair_mapped", domain=CONTRIB, types=[(STRING, 1)],
                  map="\n".join(f"{k}\t{v}" for k, v in sorted(pairs.items())))
    return join_rows(b, mapped, splits, f"{p}/pair_join")


def _cls(chars) -> str:
    return regex_class(code_point_ranges(sorted(ord(c) for c in set(chars))))


def _too_long(budget: int, by_size: dict[int, str], anyx: str) -> str:
    """Regex for the shortest runs of extenders longer than `budget` bytes."""
    options = [by_size[n] for n in by_size if n > budget]
    options += [by_size[n] + f"(?:{_too_long(budget - n, by_size, anyx)})" for n in by_size if n <= budget]
    return "|".join(options)


def _not(chars) -> str:
    return "[^" + _cls(chars)[1:]


def _escape(s: str) -> str:
    return "".join(f"\\x{{{ord(c):X}}}" for c in s)


def charsmap_of(backend: dict) -> Charsmap | None:
    normalizer = backend.get("normalizer")
    if normalizer is None:
        return None
    return _parse_cached(normalizer["precompiled_charsmap"])


@functools.lru_cache(maxsize=2)
def _parse_cached(encoded: str) -> Charsmap:
    return parse_charsmap(base64.b64decode(encoded))
