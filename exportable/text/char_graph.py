"""Apply a per-character table (normalize.CharTable) to a string tensor with ortx ops.

Works with any builder that has GraphBuilder's verbs (`op`, `const`), so other front-ends reuse it.
"""

from __future__ import annotations

from .graph_builder import CONTRIB, SPLIT_TYPES, STRING, GraphBuilder
from .normalize import CharTable, code_point_ranges, regex_class
from .ragged import join_rows
from .settings import TokenizerError


def apply_char_table(b: GraphBuilder, texts: str, table: CharTable) -> str:
    """Apply F: drop (regex -> ''), space (-> ' '), isolate (-> ' c '), then map the rest one
    character at a time. The passes touch disjoint sets of input characters and the regex passes
    only emit characters that later passes leave alone, so their order cannot change the result."""
    text = texts
    for name, ranges, rewrite in (("drop", table.drop, ""), ("space", table.space, " "),
                                  ("isolate", table.isolate, " \\0 ")):
        if ranges:
            text = b.op("StringRegexReplace", [text, b.const(f"normalize/{name}_pattern", regex_class(ranges)),
                                               b.const(f"normalize/{name}_rewrite", rewrite)],
                        f"normalize/{name}", domain=CONTRIB, types=[(STRING, 1)])
    if not table.mapping:
        return text
    clashes = [k for k, v in table.mapping.items() if any(sep in k + v for sep in "\t\n")]
    if clashes:  # StringMapping's attribute is "key\tvalue" lines
        raise TokenizerError(f"character table maps {clashes[:5]!r}: tab/newline cannot go through StringMapping")
    # The ops compile their pattern on every run, so a short class matters (about 1.5 ms saved per
    # call): split on a superset of the keys (close ranges merged); a split-off character that
    # is not a key passes StringMapping unchanged.
    keys = regex_class(_merge_close(code_point_ranges(sorted(ord(k) for k in table.mapping)), gap=4))
    # A capture group is required: the op extracts the delimiter with RE2::FindAndConsume, which
    # finds nothing in a pattern without one. Every delimiter is one character, hence keep = ".".
    pattern, keep = b.const("normalize/map_pattern", f"({keys})"), b.const("normalize/map_keep", "(?s).")
    runs, _, _, splits = b.op("StringRegexSplitWithOffsets", [text, pattern, keep],
                              ["normalize/runs", "normalize/begins", "normalize/ends", "normalize/splits"],
                              domain=CONTRIB, types=SPLIT_TYPES)
    mapped = b.op("StringMapping", [runs], "normalize/mapped", domain=CONTRIB, types=[(STRING, 1)],
                  map="\n".join(f"{k}\t{v}" for k, v in sorted(table.mapping.items())))
    return join_rows(b, mapped, splits, "normalize/join")


def _merge_close(ranges, gap: int):
    merged: list[tuple[int, int]] = []
    for lo, hi in ranges:
        if merged and lo - merged[-1][1] <= gap:
            merged[-1] = (merged[-1][0], hi)
        else:
            merged.append((lo, hi))
    return tuple(merged)
