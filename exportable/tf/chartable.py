"""Per-character TF string normalisation, probed from TensorFlow itself.

tensorflow-text's BasicTokenizer(lower_case=True) runs, on every string:

    CaseFoldUTF8 (ICU NFKC_Casefold) -> NormalizeUTF8("NFD") -> regex_replace(\\p{Mn}, "")
    -> regex_replace(\\p{Cc}|\\p{Cf}, " ")

tf2onnx has no handler for the first two (onnx/tensorflow-onnx#1609) and onnxruntime-extensions
has no such ops. For practical purposes the chain is a function of one character at a time:
NFKC's composition is undone by the later NFD, case folding is context-free, and the regex
replaces match single characters. So the chain equals a table F: character -> string, applied
character by character, which exportable.text's normalisation stage already builds from ONNX
and onnxruntime-extensions ops. F is found by running the chain's own TF ops on every code point
(about 1 s), so ICU's and RE2's Unicode versions are whatever the installed TF uses.

Not per-character, and so not reproduced: NFD's canonical reordering of two adjacent combining
marks that both survive the chain (after Mn stripping only a few Mc marks with a non-zero
combining class remain, e.g. the musical-symbol stems U+1D165..U+1D172).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import numpy as np

from ..errors import ExportError
from ..text.normalize import CharTable, code_point_ranges
from .deps import import_tf

ELEMENTWISE_OPS = ("CaseFoldUTF8", "NormalizeUTF8", "StaticRegexReplace")
_COMPOSING = {"NFC", "NFKC"}
_DECOMPOSING = {"NFD", "NFKD"}
# StringMapping (ortx) separates entries with "\n" and key from value with "\t".
_MAPPING_SEPARATORS = ("\t", "\n")

# An RE2 pattern that can only match one character: alternatives of \p{..}/\P{..}, \x{..},
# \d \s \w (and negations), an escaped symbol, a [...] class, or one plain character.
_ATOM = (r"(?:\\[pP]\{\w+\}|\\[pP][A-Za-z]|\\x\{[0-9A-Fa-f]+\}|\\[dDsSwW]|\\[^\w\s]"
         r"|\[\^?(?:\\.|[^\\\]])+\]|[^\\\[\](){}|*+?.^$])")
_SINGLE_CHAR_PATTERN = re.compile(rf"{_ATOM}(?:\|{_ATOM})*")


@dataclass(frozen=True)
class Step:
    """One elementwise TF string op: its type and the attributes that define it."""

    op: str
    form: str = ""  # NormalizeUTF8
    pattern: str = ""  # StaticRegexReplace
    rewrite: str = ""

    def describe(self) -> str:
        if self.op == "NormalizeUTF8":
            return f"NormalizeUTF8({self.form})"
        if self.op == "StaticRegexReplace":
            return f"StaticRegexReplace({self.pattern!r} -> {self.rewrite!r})"
        return self.op


def absorbable(step: Step | None, replace_global: bool = True) -> bool:
    """Whether `step` acts on one character at a time, so it can join a table."""
    if step is None:
        return False
    if step.op == "StaticRegexReplace":
        return replace_global and bool(_SINGLE_CHAR_PATTERN.fullmatch(step.pattern))
    return step.op in ELEMENTWISE_OPS


def check_per_character(steps: tuple[Step, ...]) -> None:
    """A chain whose last normalisation composes (NFC, NFKC, or case folding, which is NFKC
    based) is not per-character: "e" + U+0301 would become one character. Only a later NFD/NFKD
    undoes that."""
    composing = False
    for step in steps:
        if step.op == "CaseFoldUTF8" or step.form in _COMPOSING:
            composing = True
        elif step.form in _DECOMPOSING:
            composing = False
    if composing:
        chain = " -> ".join(s.describe() for s in steps)
        raise ExportError(f"the TF string chain {chain} ends in a composing normalisation, which is not "
                          "per-character and has no ONNX equivalent; only chains that end in NFD/NFKD (as "
                          "tensorflow-text's BertTokenizer(lower_case=True) does) can be converted")


def run_steps(steps: tuple[Step, ...], texts: list[str]) -> list[str]:
    """The TF chain on `texts`."""
    tf, tft = import_tf()

    def chain(out):
        for step in steps:
            if step.op == "CaseFoldUTF8":
                out = tft.case_fold_utf8(out)
            elif step.op == "NormalizeUTF8":
                out = tft.normalize_utf8(out, step.form)
            else:
                out = tf.strings.regex_replace(out, step.pattern, step.rewrite, replace_global=True)
        return out

    return [b.decode("utf-8") for b in run_in_graph(chain, texts)]


def run_in_graph(fn, texts: list[str]) -> np.ndarray:
    """fn(string tensor) run on `texts` in a private graph and session: the tf2onnx rewriters
    that probe TF run inside tf2onnx's own `tf.Graph().as_default()`, where eager ops would only
    add nodes to the graph being converted."""
    tf, _ = import_tf()
    graph = tf.Graph()
    with graph.as_default():
        feed = tf.compat.v1.placeholder(tf.string, [None])
        out = fn(feed)
    with tf.compat.v1.Session(graph=graph) as session:
        return session.run(out, {feed: np.array([t.encode("utf-8") for t in texts], dtype=object)})


def all_code_points() -> list[int]:
    return [cp for cp in range(0x110000) if not 0xD800 <= cp < 0xE000]  # surrogates are not UTF-8


@functools.lru_cache(maxsize=8)
def probe_table(steps: tuple[Step, ...]) -> CharTable:
    """F for `steps` over every code point, split as exportable.text's graph applies it."""
    check_per_character(steps)
    cps = all_code_points()
    outputs = run_steps(steps, [chr(cp) for cp in cps])
    drop, space, mapping = [], [], {}
    for cp, out in zip(cps, outputs):
        ch = chr(cp)
        if out == ch:
            continue
        if out == "":
            drop.append(cp)
        elif out == " ":
            space.append(cp)
        else:
            mapping[ch] = out
    bad = sorted(k for k, v in mapping.items() if any(s in k + v for s in _MAPPING_SEPARATORS))
    if bad:
        raise ExportError(f"the TF string chain maps {[hex(ord(k)) for k in bad[:5]]} to text holding a tab or "
                          "newline, which the ONNX StringMapping op cannot express")
    return CharTable(drop=code_point_ranges(drop), space=code_point_ranges(space), isolate=(), mapping=mapping)
