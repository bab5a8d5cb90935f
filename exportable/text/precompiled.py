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

So the graph does the cluster part with regex passes, and sentencepiece's own normalizer (a
charsmap of rules compiled into the synthesised model, spm_rules) does the rest:
  tag       each extender gets a control character after it naming its UTF-8 size (2, 3, 4), so
            the passes below use small patterns (ortx compiles every pattern on every run)
  protect   MARK after the character that starts a cluster of 6 bytes or more, or a Prepend
            character's cluster: those clusters go character by character
  drop      the extenders still after a single-character key, or a 1-byte-base pair, go (their
            cluster is under 6 bytes, so it becomes the key's or the pair's value)
  spm       longest rule first: single-character keys, tagged pairs (only whole clusters are
            still adjacent), MARK and tags deleted, kept Unicode whitespace -> ' '
"""

from __future__ import annotations

import base64
import functools
import struct
from dataclasses import dataclass

import numpy as np

from ..onnx_builder import CONTRIB, STRING, GraphBuilder
from .normalize import code_point_ranges, regex_class
from .settings import TokenizerError

CONTROLS = "".join(chr(c) for c in range(1, 32) if chr(c) not in "\t\n\r")
MAX_CLUSTER = 6  # tokenizers' Precompiled: "if grapheme.len() < 6"
# Rust's char::is_whitespace (Unicode White_Space), which WhitespaceSplit splits on.
UNICODE_WHITESPACE = ("\t\n\x0b\x0c\r \x85\xa0\u1680" + "".join(chr(c) for c in range(0x2000, 0x200B))
                      + "\u2028\u2029\u202f\u205f\u3000")


@dataclass(frozen=True)
class Charsmap:
    single: dict[str, str]  # one-character key -> value
    pairs: dict[str, str]  # two-character key under 6 bytes whose first character is no key -> value
    blob: bytes = b""  # the charsmap itself


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
    return Charsmap(single, pairs, blob)


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


def confirmed_extenders(charsmap: Charsmap) -> frozenset[str]:
    """extenders() as the installed tokenizers sees them: the `regex` module may know a newer
    Unicode than tokenizers' segmentation tables (U+11DF0, U+10ECF extend in one, not the other).
    Each one is tried after a key (2, 3 bytes: an extender is dropped with the rest of the key's
    cluster) or a 1-byte-base pair (4 bytes: an extender stops the composition)."""
    from tokenizers.normalizers import Precompiled  # noqa: PLC0415  # only Unigram exports need it

    normalize = Precompiled(charsmap.blob).normalize_str
    heads = [k for k, v in charsmap.single.items() if len(k.encode()) == 2 and v and k not in breakers()
             and k not in extenders()]
    pairs = [k for k in charsmap.pairs if len(k.encode()) == 3 and k[0] not in breakers()]
    kept = set()
    for c in extenders():
        size = len(c.encode())
        if size < 4 and heads:
            extends = normalize(heads[0] + c) == charsmap.single[heads[0]]
        elif size == 4 and pairs:
            extends = normalize(pairs[0] + c) != charsmap.pairs[pairs[0]] + normalize(c)
        else:
            extends = True
        if extends:
            kept.add(c)
    return frozenset(kept)


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

    return frozenset(regex.findall(pattern, _ALL_CHARACTERS()))


@functools.lru_cache(maxsize=1)
def _ALL_CHARACTERS() -> str:  # noqa: N802  # a constant, built on first use
    return "".join(chr(cp) for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF)


def precompiled_normalize(b: GraphBuilder, text: str, charsmap: Charsmap, p: str) -> tuple[str, dict[str, str]]:
    """(`text` [N] with tokenizers' cluster rule applied, the rules that sentencepiece's
    normalizer applies to finish the job: `text` normalized as tokenizers' Precompiled
    normalizer does, with Unicode whitespace as ' ')."""
    ext = confirmed_extenders(charsmap)
    mark, *tags = _controls(charsmap, 4)
    # tag: each extender gets a control character after it that says its UTF-8 size (2, 3, 4),
    # so the rules below test a few characters instead of the large extender class (RE2
    # compiles every pattern on every run: ~1.5 ms per copy of that class). Controls the
    # charsmap deletes, so the table below drops them; those already in the text become MARK
    # (also deleted, also a cluster boundary: the same result).
    rules = [(_cls(tags), mark)]
    rules += [(f"({_cls(c for c in ext if len(c.encode()) == n)})", f"\\1{tag}") for n, tag in zip((2, 3, 4), tags)]
    t2, t3, t4 = (f"(?s:.{tag})" for tag in tags)
    x, x34 = f"(?s:.{_cls(tags)})", f"(?s:.{_cls(tags[1:])})"
    alone = ext | breakers()
    heads = [c for c in charsmap.single if len(c.encode()) in (2, 3) and c not in alone]
    prepend = prepends()
    if any(c in charsmap.single for c in prepend):
        raise TokenizerError("normalizer.precompiled_charsmap: maps a Prepend character; not supported")
    # protect: a cluster that reaches 6 bytes, or that a Prepend character starts (GB9b), keeps
    # every character: MARK after the character that starts it stops the rules below. Any
    # character of that size will do (MARK inside a cluster of 6 bytes or more changes nothing).
    # Extenders longer than the bytes left (5 - head): 1-byte head > 4, 2-byte > 3, 3-byte > 2,
    # 4-byte > 1.
    protect = "|".join([
        f"([\\x{{20}}-\\x{{7E}}])({t2}{t2}{x}|{x34}{x}|{t2}{x34})",
        f"([\\x{{80}}-\\x{{7FF}}])({t4}|{x}{x})",
        f"([\\x{{800}}-\\x{{FFFF}}])({x34}|{x}{x})",
    ])
    rules.append((protect, f"\\1\\3\\5{mark}\\2\\4\\6"))
    # 4-byte heads too: the table may turn one into a pair base ("𝖞" -> "y") that sentencepiece's
    # late rules would compose with the mark that follows. (A rewrite has groups \\1..\\9 only.)
    protect = f"([\\x{{10000}}-\\x{{10FFFF}}])({x})|({_cls(prepend)}{_not(breakers())})({x})"
    rules.append((protect, f"\\1\\3{mark}\\2\\4"))
    # drop: what still follows a head is the rest of a cluster under 6 bytes, which becomes the
    # head's value alone (a pair's too).
    if heads:
        rules.append((f"({_cls(heads)}){x}+", "\\1"))
    tag_of = dict(zip((2, 3, 4), tags))
    tagged = {k[0] + k[1] + tag_of[len(k[1].encode())]: v for k, v in charsmap.pairs.items()}
    # Only a 1-byte base with a 2-byte mark leaves room (1 extender of 2 bytes) after protect.
    short = {k: v for k, v in tagged.items() if len(k[0].encode()) == 1 and len(k[1].encode()) == 2}
    if short:
        rules.append((f"({_pairs_pattern(short)}){t2}", "\\1"))
    for i, (pattern, rewrite) in enumerate(rules):
        text = b.op("StringRegexReplace", [text, b.const(f"{p}/cluster{i}_pattern", pattern),
                                           b.const(f"{p}/cluster{i}_rewrite", rewrite)],
                    f"{p}/cluster{i}", domain=CONTRIB, types=[(STRING, 1)])
    return text, spm_rules(charsmap, tagged, [mark, *tags])


def spm_rules(charsmap: Charsmap, tagged: dict[str, str], controls: list[str]) -> dict[str, str]:
    """What sentencepiece's own normalizer (longest rule first) must do after the cluster rules:
    map every character by its single-character key, compose the pairs left whole (tagged:
    base, mark, size tag), delete MARK and the tags, and turn the Unicode whitespace the
    charsmap keeps into ' '. One pass in the op, no split/lookup/join in the graph."""
    rules = dict(charsmap.single)
    rules.update(tagged)
    rules.update({c: "" for c in controls})
    rules.update({c: " " for c in UNICODE_WHITESPACE if c != " " and c not in charsmap.single})
    return rules


def word_separators(charsmap: Charsmap | None) -> str:
    """A regex class of the characters that normalize to whitespace only: HF's WhitespaceSplit
    cuts there, so sentencepiece can take one word at a time."""
    chars = set(UNICODE_WHITESPACE)
    if charsmap is not None:
        chars = {c for c in chars if c not in charsmap.single}
        chars |= {c for c, v in charsmap.single.items() if v and not v.strip()}
    return _cls(chars)


def _controls(charsmap: Charsmap, count: int) -> list[str]:
    """`count` control characters the charsmap deletes (MARK and the size tags)."""
    found = [c for c in CONTROLS if charsmap.single.get(c) == ""][:count]
    if len(found) < count:
        raise TokenizerError("normalizer.precompiled_charsmap: deletes fewer than 4 control characters; not supported")
    return found


def _cls(chars) -> str:
    return regex_class(code_point_ranges(sorted(ord(c) for c in set(chars))))


def _pairs_pattern(pairs) -> str:
    """Exactly the pairs (base, then a tagged mark), grouped by mark: [bases]mark|... RE2
    compiles a few dozen classes much faster than hundreds of literal alternatives."""
    bases: dict[str, list[str]] = {}
    for pair in pairs:
        bases.setdefault(pair[1:], []).append(pair[0])
    return "|".join(f"{_cls(chars)}{_escape(mark)}" for mark, chars in sorted(bases.items()))


def _not(chars) -> str:
    return "[^" + _cls(chars)[1:]


def _escape(s: str) -> str:
    return "".join(f"\\x{{{ord(c):X}}}" for c in s)


def charsmap_of(backend: dict) -> Charsmap | None:
    """The charsmap of the (only) Precompiled step of the backend's normalizer, if any."""
    normalizer = backend.get("normalizer") or {}
    steps = normalizer.get("normalizers", []) if normalizer.get("type") == "Sequence" else [normalizer]
    for step in steps:
        if step.get("type") == "Precompiled" and step.get("precompiled_charsmap"):
            return _parse_cached(step["precompiled_charsmap"])
    return None


@functools.lru_cache(maxsize=2)
def _parse_cached(encoded: str) -> Charsmap:
    return parse_charsmap(base64.b64decode(encoded))
