"""Apply a per-character table (normalize.CharTable) to a string tensor with ortx ops.

Works with any builder that has GraphBuilder's verbs (`op`, `const`), so other front-ends reuse it.

Why the work is split this way: StringRegexReplace and StringRegexSplitWithOffsets take their
pattern as an input and build a new RE2 object on every run, and compiling a character class costs
about 1-3 us per range (twice once a match is found: RE2 then also compiles the reversed program).
The full drop/isolate/mapping classes have 100-300 ranges each, about 1 ms per call in all,
whatever the input. StringMapping builds its hash map once, at session start. So every short run
of characters goes through the lookup table, only long ranges (private use, CJK blocks) stay in
regex classes, and the split feeding the table uses a coarse class of a few ranges.
"""

from __future__ import annotations

from ..onnx_builder import CONTRIB, SPLIT_TYPES, STRING, GraphBuilder
from .normalize import MAX_CODE_POINT, CharTable, Ranges, code_point_ranges, regex_class
from .ragged import join_rows
from .settings import TokenizerError

# Ranges at least this long stay in a regex class; shorter ones become lookup-table entries.
TABLE_MAX_RANGE = 256
# NUL ends a C string (the ops read them so); tab and newline separate StringMapping's entries;
# ' ' is what the regex passes emit, so the lookup after them must not touch it.
_NOT_IN_TABLE = frozenset("\x00\t\n ")


def apply_char_table(b: GraphBuilder, texts: str, table: CharTable) -> str:
    """Apply F. The passes act on disjoint sets of input characters: space (regex -> ' '),
    isolate (long ranges, regex -> ' c '), lookup (the mapping plus short drop and isolate
    ranges: split off every key, StringMapping, join) and drop (regex -> ''). The lookup writes
    `mark`, itself a drop character, for a dropped one, and a drop pass after it removes the
    marks. Each pass only emits characters that later passes leave alone, so the order of the
    passes cannot change the result."""
    clashes = [k for k, v in table.mapping.items() if any(sep in k + v for sep in "\t\n")]
    if clashes:  # StringMapping's attribute is "key\tvalue" lines
        raise TokenizerError(f"character table maps {clashes[:5]!r}: tab/newline cannot go through StringMapping")
    drop_re, drop_tab = _regex_or_table(table.drop)
    isolate_re, isolate_tab = _regex_or_table(table.isolate)
    lookup: dict[str, str] = {}
    mark = None
    if drop_tab:
        mark = _mark(table)
        drop_re = _union(drop_re, ((ord(mark), ord(mark)),))
        lookup.update((ch, mark) for ch in drop_tab if ch != mark)
    lookup.update((ch, f" {ch} ") for ch in isolate_tab)
    lookup.update(table.mapping)

    # The drop pass goes last (one pass removes marks and drop characters) unless something an
    # earlier pass emits is itself a drop character; then drop first and remove marks last.
    emitted = {ch for value in lookup.values() for ch in value} - {mark}
    if table.space or table.isolate:
        emitted.add(" ")
    drop_last = not any(_in(ord(ch), drop_re) for ch in emitted)

    text = texts
    if drop_re and not drop_last:
        text = _replace(b, text, "drop", drop_re, "")
    if table.space:
        text = _replace(b, text, "space", table.space, " ")
    if isolate_re:
        text = _replace(b, text, "isolate", isolate_re, " \\0 ")
    if lookup:
        text = _lookup(b, text, table, lookup, isolate_re)
    if drop_re and drop_last:
        text = _replace(b, text, "drop", drop_re, "")
    elif mark is not None:
        text = _replace(b, text, "unmark", ((ord(mark), ord(mark)),), "")
    return text


def _replace(b: GraphBuilder, text: str, name: str, ranges: Ranges, rewrite: str) -> str:
    return b.op("StringRegexReplace", [text, b.const(f"normalize/{name}_pattern", regex_class(ranges)),
                                       b.const(f"normalize/{name}_rewrite", rewrite)],
                f"normalize/{name}", domain=CONTRIB, types=[(STRING, 1)])


def _lookup(b: GraphBuilder, text: str, table: CharTable, lookup: dict[str, str], isolate_re: Ranges) -> str:
    """Split off every key character, map it with StringMapping, join the pieces again."""
    # The split class is a coarse superset of the keys: a split-off non-key passes StringMapping
    # unchanged and costs ~0.5 us, a range in the class costs 1-3 us on every call. ASCII that F
    # keeps and the regex-isolated blocks (CJK) stay out: common, and not keys.
    keys = code_point_ranges(sorted(ord(k) for k in lookup))
    common = _union(code_point_ranges(cp for cp in range(0x80) if table.apply(chr(cp)) == chr(cp)), isolate_re)
    coarse: list[tuple[int, int]] = []
    for lo, hi in keys:
        if coarse and not _overlaps(coarse[-1][1] + 1, lo - 1, common):
            coarse[-1] = (coarse[-1][0], hi)
        else:
            coarse.append((lo, hi))
    # Widen each range up to the common characters around it, ending on the roundest code points
    # there: RE2 compiles an aligned range into fewer UTF-8 byte-range instructions.
    for i, (lo, hi) in enumerate(coarse):
        floor = max((c_hi + 1 for _, c_hi in common if c_hi < lo), default=0)
        ceiling = min((c_lo - 1 for c_lo, _ in common if c_lo > hi), default=MAX_CODE_POINT)
        coarse[i] = (_roundest(floor, lo), _roundest(hi + 1, ceiling + 1) - 1)
    # A capture group is required: the op extracts the delimiter with RE2::FindAndConsume, which
    # finds nothing in a pattern without one. Every delimiter is one character, hence keep = ".".
    pattern = b.const("normalize/map_pattern", f"({regex_class(tuple(coarse))})")
    keep = b.const("normalize/map_keep", "(?s).")
    runs, _, _, splits = b.op("StringRegexSplitWithOffsets", [text, pattern, keep],
                              ["normalize/runs", "normalize/begins", "normalize/ends", "normalize/splits"],
                              domain=CONTRIB, types=SPLIT_TYPES)
    mapped = b.op("StringMapping", [runs], "normalize/mapped", domain=CONTRIB, types=[(STRING, 1)],
                  map="\n".join(f"{k}\t{v}" for k, v in sorted(lookup.items())))
    return join_rows(b, mapped, splits, "normalize/join")


def _regex_or_table(ranges: Ranges) -> tuple[Ranges, list[str]]:
    """(ranges for a regex class, characters for the lookup table)."""
    regex, chars = [], []
    for lo, hi in ranges:
        if hi - lo + 1 >= TABLE_MAX_RANGE or any(lo <= ord(c) <= hi for c in _NOT_IN_TABLE):
            regex.append((lo, hi))
        else:
            chars.extend(chr(cp) for cp in range(lo, hi + 1))
    return tuple(regex), chars


def _mark(table: CharTable) -> str:
    """A drop character that the lookup can write and no value holds."""
    used = {ch for value in table.mapping.values() for ch in value} | _NOT_IN_TABLE
    for lo, hi in table.drop:
        for cp in range(lo, hi + 1):
            if chr(cp) not in used:
                return chr(cp)
    raise TokenizerError("character table: no drop character is free to mark dropped characters")


def _union(a: Ranges, b: Ranges) -> Ranges:
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(a + b):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return tuple(merged)


def _roundest(lo: int, hi: int) -> int:
    """The number in [lo, hi] with the most trailing zero bits."""
    for bits in range(hi.bit_length(), -1, -1):
        n = -(-lo >> bits) << bits
        if n <= hi:
            return n
    return lo


def _in(cp: int, ranges: Ranges) -> bool:
    return any(lo <= cp <= hi for lo, hi in ranges)


def _overlaps(lo: int, hi: int, ranges: Ranges) -> bool:
    return any(a <= hi and lo <= b for a, b in ranges)
