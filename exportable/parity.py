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


def compare_tensor(name: str, actual, expected, tol: Tolerance) -> Metrics:
    actual, expected = np.asarray(actual), np.asarray(expected)
    m = Metrics(name, tuple(actual.shape), tuple(expected.shape), str(actual.dtype), str(expected.dtype),
                total=int(expected.size))
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
    for m in metrics:
        reason = failure_reason(m, tolerances.get(m.output, Tolerance()))
        if reason:
            result.failures[m.output] = reason
    return result


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
    return list(rows.values())


def format_table(results: list[CaseResult], title: str = "") -> str:
    header = f"{'output':<22} {'cases':>5} {'failed':>6} {'max abs':>10} {'max rel':>10} {'min cos':>10} {'mismatch':>8}"
    lines = [title] if title else []
    lines.append(header)
    for row in summary_rows(results):
        cos = "-" if row["min_cosine"] is None else f"{row['min_cosine']:.7f}"
        lines.append(f"{row['output']:<22} {row['cases']:>5} {row['failed']:>6} {row['max_abs']:>10.3g} "
                     f"{row['max_rel']:>10.3g} {cos:>10} {row['mismatched']:>8}")
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
    return results
