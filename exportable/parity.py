"""Measure (compare) separately from judge (check), as torch.onnx's verification does.

compare() never raises on a difference: it reports numbers. check() applies a Tolerance.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import numpy as np

from .errors import InputError, ParityError
from .recipe import Tolerance


@dataclass
class Metrics:
    """What one output of one case measured against its expected value."""

    output: str
    shape: tuple
    expected_shape: tuple
    dtype: str
    expected_dtype: str
    max_abs: float = 0.0
    max_rel: float = 0.0
    min_cosine: float | None = None
    mismatched: int = 0  # elements that differ (exact comparison) or break atol+rtol (float)
    total: int = 0
    first_mismatch: tuple | None = None
    missing: bool = False
    # token outputs (Tolerance.tokens): rows compared whole
    rows: int | None = None
    identical_rows: int | None = None
    first_tokens: int | None = None  # rows whose first token agrees ([rows, steps] outputs)
    differing_rows: list[int] | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def _is_float(a: np.ndarray) -> bool:
    return a.dtype.kind == "f"


def row_cosines(actual: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Cosine per row over the last axis (the whole tensor for rank <= 1); 0/0 rows count as 1."""
    a = actual.astype(np.float64).reshape(-1, actual.shape[-1] if actual.ndim > 1 else max(actual.size, 1))
    e = expected.astype(np.float64).reshape(a.shape)
    dot = (a * e).sum(axis=1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(e, axis=1)
    both_zero = (np.linalg.norm(a, axis=1) == 0) & (np.linalg.norm(e, axis=1) == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(norms > 0, dot / np.where(norms > 0, norms, 1), 0.0)
    return np.where(both_zero, 1.0, cos)


def _same(a, e) -> bool:
    a, e = np.asarray(a), np.asarray(e)  # a row, or one element (a string) of a 1-D output
    return a.shape == e.shape and bool(np.all(a == e))


def count_token_rows(m: Metrics, actual: np.ndarray, expected: np.ndarray) -> None:
    """Rows (axis 0) identical and, for [rows, steps, ...], rows whose first token agrees. Rows of
    different lengths differ (a variant's loop may stop at another step); another row count
    leaves every row differing."""
    rows = int(expected.shape[0]) if expected.ndim else 1
    m.rows = rows
    if actual.ndim != expected.ndim or actual.shape[:1] != expected.shape[:1] or expected.ndim == 0:
        m.identical_rows, m.differing_rows = 0, list(range(rows))
        m.first_tokens = 0 if expected.ndim >= 2 else None
        return
    m.differing_rows = [i for i in range(rows) if not _same(actual[i], expected[i])]
    m.identical_rows = rows - len(m.differing_rows)
    if expected.ndim >= 2:
        both = actual.shape[1] > 0 and expected.shape[1] > 0
        m.first_tokens = sum(_same(actual[i, 0], expected[i, 0]) for i in range(rows)) if both else \
            rows * (actual.shape[1] == expected.shape[1])


def compare_tensor(name: str, actual, expected, tol: Tolerance) -> Metrics:
    actual, expected = np.asarray(actual), np.asarray(expected)
    m = Metrics(name, tuple(actual.shape), tuple(expected.shape), str(actual.dtype), str(expected.dtype),
                total=int(expected.size))
    if tol.tokens:
        count_token_rows(m, actual, expected)
    if tol.agreement:  # judged by rows (judge, judge_overall), not element by element
        return m
    if actual.shape != expected.shape:
        m.mismatched = m.total or 1
        return m
    if actual.size == 0:
        return m
    if tol.exact or not (_is_float(actual) or _is_float(expected)):
        differ = actual != expected
        m.mismatched = int(np.count_nonzero(differ))
        if m.mismatched:
            m.first_mismatch = tuple(int(i) for i in np.argwhere(differ)[0])
        return m
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    diff = np.abs(a - e)
    m.max_abs = float(diff.max())
    m.max_rel = float((diff / np.maximum(np.abs(e), np.finfo(np.float32).tiny)).max())
    bad = ~(diff <= tol.atol + tol.rtol * np.abs(e))  # NaN counts as bad
    m.mismatched = int(np.count_nonzero(bad))
    if m.mismatched:
        m.first_mismatch = tuple(int(i) for i in np.argwhere(bad)[0])
    if tol.min_cosine is not None:
        m.min_cosine = float(row_cosines(a, e).min())
    return m


def compare(actual: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray],
            tolerances: Mapping[str, Tolerance]) -> list[Metrics]:
    """Measure every expected output. An output the artifact did not produce is `missing`."""
    out = []
    for name, exp in expected.items():
        tol = tolerances.get(name, Tolerance())
        if name not in actual:
            exp = np.asarray(exp)
            out.append(Metrics(name, (), tuple(exp.shape), "", str(exp.dtype), missing=True,
                               mismatched=max(exp.size, 1), total=int(exp.size)))
            continue
        out.append(compare_tensor(name, actual[name], exp, tol))
    return out


def failure_reason(m: Metrics, tol: Tolerance) -> str | None:
    """Why this measurement breaks the tolerance, or None when it passes."""
    if m.missing:
        return "output missing"
    if tol.agreement:
        return None if m.shape[:1] == m.expected_shape[:1] else \
            f"{m.shape[0] if m.shape else 0} rows != expected {m.expected_shape[0] if m.expected_shape else 0}"
    if m.shape != m.expected_shape:
        return f"shape {list(m.shape)} != expected {list(m.expected_shape)}"
    if m.mismatched:
        kind = "differ" if tol.exact or m.max_abs == 0 else f"exceed atol {tol.atol:g}+rtol {tol.rtol:g}"
        return f"{m.mismatched}/{m.total} elements {kind} (first at {list(m.first_mismatch or ())}, max abs {m.max_abs:.3g})"
    if tol.min_cosine is not None and m.min_cosine is not None and m.min_cosine < tol.min_cosine:
        return f"cosine {m.min_cosine:.7f} < {tol.min_cosine}"
    return None


@dataclass
class CaseResult:
    case: str
    metrics: list[Metrics]
    failures: dict[str, str] = field(default_factory=dict)
    not_applicable: str = ""  # why this format cannot run this case (recorded, not hidden)

    @property
    def passed(self) -> bool:
        return not self.failures


def judge(case: str, metrics: list[Metrics], tolerances: Mapping[str, Tolerance]) -> CaseResult:
    result = CaseResult(case, metrics)
    by_output = {m.output: m for m in metrics}
    for m in metrics:
        tol = tolerances.get(m.output, Tolerance())
        reason = failure_reason(m, tol) or (follows_reason(m, by_output.get(tol.follows)) if tol.follows and
                                            tol.agreement else None)
        if reason:
            result.failures[m.output] = reason
    return result


def follows_reason(m: Metrics, source: Metrics | None) -> str | None:
    """Why an output decoded from `source` (text from ids) breaks it: a row that differs where
    the source's row is identical."""
    if source is None or source.differing_rows is None:
        return f"the output it follows is missing or not compared by rows ({source.output if source else '-'})"
    broken = sorted(set(m.differing_rows or ()) - set(source.differing_rows))
    if broken:
        return f"rows {broken[:8]} differ where {source.output} is identical"
    return None


def judge_overall(results: list[CaseResult], tolerances: Mapping[str, Tolerance]) -> list[CaseResult]:
    """The gates on all cases together: a token-agreement output's first tokens must agree on at
    least `min_first_tokens` of the rows of every case pooled (a fraction of prompts: one case of
    one prompt is no fraction). Below it, every case with a disagreeing first token fails."""
    for name, tol in tolerances.items():
        if not tol.agreement or tol.min_first_tokens is None:
            continue
        metrics = [(r, m) for r in results for m in r.metrics if m.output == name and m.first_tokens is not None]
        rows, first = sum(m.rows for _, m in metrics), sum(m.first_tokens for _, m in metrics)
        if rows and first / rows < tol.min_first_tokens:
            for r, m in metrics:
                if m.first_tokens < m.rows:
                    r.failures.setdefault(name, f"first tokens agree on {first}/{rows} rows over all cases "
                                                f"({first / rows:.0%}) < {tol.min_first_tokens:.0%}")
    return results


def judge_outputs(case: str, actual: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray],
                  tolerances: Mapping[str, Tolerance]) -> CaseResult:
    """One case's outputs against the original's, judged by `tolerances`: what the export's
    verify loop, `verify` (the vectors) and bench (its inputs) all ask."""
    return judge(case, compare(actual, expected, tolerances), tolerances)


def not_applicable(case: str, reason: str) -> CaseResult:
    return CaseResult(case, [], not_applicable=reason)


def runtime_failure(case: str, exc: Exception) -> CaseResult:
    """The artifact raised instead of answering: a failed case, with the runtime's message."""
    message = " ".join(str(exc).split())[:300]
    return CaseResult(case, [], failures={"*": f"runtime error: {type(exc).__name__}: {message}"})


def summary_rows(results: list[CaseResult]) -> list[dict]:
    """One row per output: worst numbers over all cases."""
    rows: dict[str, dict] = {}
    for r in results:
        for m in r.metrics:
            row = rows.setdefault(m.output, {"output": m.output, "cases": 0, "failed": 0, "max_abs": 0.0,
                                             "max_rel": 0.0, "min_cosine": None, "mismatched": 0})
            row["cases"] += 1
            row["failed"] += m.output in r.failures
            row["max_abs"] = max(row["max_abs"], m.max_abs)
            row["max_rel"] = max(row["max_rel"], m.max_rel)
            row["mismatched"] += m.mismatched
            if m.min_cosine is not None:
                row["min_cosine"] = m.min_cosine if row["min_cosine"] is None else min(row["min_cosine"], m.min_cosine)
            for key in ("rows", "identical_rows", "first_tokens"):
                if getattr(m, key) is not None:
                    row[key] = row.get(key, 0) + getattr(m, key)
    for row in rows.values():
        if row.get("rows"):
            row["identical_fraction"] = round(row["identical_rows"] / row["rows"], 4)
    return list(rows.values())


def token_lines(results: list[CaseResult]) -> list[str]:
    """One line per token output: rows identical (and first tokens agreeing) over all cases."""
    lines = []
    for row in summary_rows(results):
        if "identical_rows" in row and row["rows"]:
            first = f", first token agrees on {row['first_tokens']}/{row['rows']}" if "first_tokens" in row else ""
            kind = "token-identical" if "first_tokens" in row else "identical"
            lines.append(f"{row['output']}: {row['identical_rows']}/{row['rows']} rows {kind} "
                         f"({row['identical_rows'] / row['rows']:.0%}){first}")
    return lines


def format_table(results: list[CaseResult], title: str = "") -> str:
    header = f"{'output':<22} {'cases':>5} {'failed':>6} {'max abs':>10} {'max rel':>10} {'min cos':>10} {'mismatch':>8}"
    lines = [title] if title else []
    lines.append(header)
    for row in summary_rows(results):
        cos = "-" if row["min_cosine"] is None else f"{row['min_cosine']:.7f}"
        lines.append(f"{row['output']:<22} {row['cases']:>5} {row['failed']:>6} {row['max_abs']:>10.3g} "
                     f"{row['max_rel']:>10.3g} {cos:>10} {row['mismatched']:>8}")
    lines += [f"  {line}" for line in token_lines(results)]
    for r in results:
        for out, why in r.failures.items():
            lines.append(f"  FAIL {r.case} / {out}: {why}")
        if r.not_applicable:
            lines.append(f"  N/A  {r.case}: {r.not_applicable}")
    return "\n".join(lines)


def check(results: list[CaseResult], what: str) -> None:
    """Raise ParityError, carrying the table, if any case failed."""
    failed = [r for r in results if not r.passed]
    if failed:
        first = failed[0]
        out, why = next(iter(first.failures.items()))
        raise ParityError(
            f"{what}: {len(failed)}/{len(results)} cases outside tolerance (first: {first.case} / {out}: {why}); "
            "fix the export or pass --allow-mismatch to keep the artifact anyway",
            table=format_table(results),
        )


def verify_cases(runner, recipe, fmt: str, cases, expected: Mapping, tolerances=None) -> list[CaseResult]:
    """The one verify loop: every model file (artifact, TorchScript, each variant) runs each case
    through `runner.run(recipe.feed(case, fmt))` and is judged against the original's `expected`
    outputs with `tolerances` (default: the recipe's). A case the format cannot run is N/A with
    its reason; a crash on a case is that case's failure, not a traceback; an InputError (the
    recipe cannot feed the case) propagates."""
    tol = recipe.output_tolerances() if tolerances is None else tolerances
    results = []
    for case in cases:
        reason = recipe.unsupported(case, fmt)
        if reason:
            results.append(not_applicable(case.name, reason))
            continue
        try:
            actual = runner.run(recipe.feed(case, fmt))
        except InputError:
            raise
        except Exception as exc:  # the model crashed on this case: a failure, not a traceback
            results.append(runtime_failure(case.name, exc))
            continue
        results.append(judge_outputs(case.name, actual, expected[case.name], tol))
    return judge_overall(results, tol)
