"""RE2 patterns with their Unicode classes spelled out as code-point ranges.

TensorFlow and onnxruntime-extensions each link their own RE2, with different Unicode tables:
tensorflow-text's BERT split pattern [\\p{P}] matches 44 code points in TF that it does not in
ortx (U+061D, U+1B7D, U+2E53..U+2E5D, U+11B00, ... punctuation added in Unicode 14 and 15).
Replacing every \\p{..}/\\P{..} by the ranges TF's own RE2 matches makes the pattern mean the
same thing to both.
"""

from __future__ import annotations

import functools

from ..text.normalize import code_point_ranges, regex_class
from .chartable import all_code_points, run_in_graph
from .deps import import_tf


def pin_unicode_classes(pattern: str) -> str:
    """`pattern` with each Unicode property class replaced by explicit ranges (TF's meaning)."""
    out, i, in_class = [], 0, False
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            token = _property_token(pattern, i)
            if token:
                items = _class_items(token)
                out.append(items if in_class else f"[{items}]")
                i += len(token)
                continue
            out.append(pattern[i:i + 2])
            i += 2
            continue
        if ch == "[" and not in_class:
            in_class = True
        elif ch == "]" and in_class and not _opens_class(out):
            in_class = False
        out.append(ch)
        i += 1
    return "".join(out)


def _opens_class(out: list[str]) -> bool:
    """A ']' right after '[' or '[^' is a literal, not the end of the class."""
    return bool(out) and (out[-1] == "[" or (out[-1] == "^" and len(out) > 1 and out[-2] == "["))


def _property_token(pattern: str, i: int) -> str:
    """The \\p{Name} / \\P{Name} / \\pL token at i, or ''."""
    if pattern[i + 1] not in "pP":
        return ""
    if pattern[i + 2:i + 3] == "{":
        end = pattern.find("}", i + 3)
        return pattern[i:end + 1] if end != -1 else ""
    return pattern[i:i + 3]


@functools.lru_cache(maxsize=64)
def _class_items(token: str) -> str:
    tf, _ = import_tf()
    cps = all_code_points()
    matches = run_in_graph(lambda x: tf.strings.regex_full_match(x, f"[{token}]"), [chr(cp) for cp in cps])
    ranges = code_point_ranges([cp for cp, hit in zip(cps, matches) if hit])
    if not ranges:
        raise ValueError(f"RE2 class {token} matches no character")
    return regex_class(ranges)[1:-1]
