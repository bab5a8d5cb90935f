"""compare() measures and check() judges; both against numbers computed here by hand."""

import numpy as np
import pytest

from exportable import parity
from exportable.errors import ParityError
from exportable.recipe import EXACT, Tolerance


def test_float_metrics_report_the_injected_difference():
    expected = np.ones((3, 4), dtype=np.float32)
    actual = expected.copy()
    actual[1, 2] += 2e-3
    m = parity.compare_tensor("x", actual, expected, Tolerance(atol=1e-5, rtol=0, min_cosine=0.99))
    assert m.max_abs == pytest.approx(2e-3, rel=1e-3)
    assert m.mismatched == 1 and m.first_mismatch == (1, 2)
    # cosine of [1,1,1.002,1] with [1,1,1,1]
    a = np.array([1, 1, 1.002, 1.0])
    assert m.min_cosine == pytest.approx(a.sum() / (np.linalg.norm(a) * 2), abs=1e-6)


def test_within_tolerance_passes_and_outside_fails():
    expected = np.linspace(-1, 1, 10, dtype=np.float32)
    tol = Tolerance(atol=1e-5, rtol=0)
    ok = parity.judge("c", parity.compare({"y": expected + 5e-6}, {"y": expected}, {"y": tol}), {"y": tol})
    bad = parity.judge("c", parity.compare({"y": expected + 5e-5}, {"y": expected}, {"y": tol}), {"y": tol})
    assert ok.passed and not bad.passed
    with pytest.raises(ParityError) as err:
        parity.check([ok, bad], "demo")
    assert "1/2 cases" in str(err.value) and "y" in err.value.table


def test_cosine_bar_fails_even_when_elements_are_close():
    expected = np.array([[1e-4, 0.0]], dtype=np.float32)
    actual = np.array([[0.0, 1e-4]], dtype=np.float32)  # orthogonal, yet |diff| <= atol
    tol = Tolerance(atol=1e-3, rtol=0, min_cosine=0.99)
    result = parity.judge("c", parity.compare({"e": actual}, {"e": expected}, {"e": tol}), {"e": tol})
    assert "cosine" in result.failures["e"]


def test_integers_and_strings_must_match_exactly():
    ids = np.array([[101, 7, 102]], dtype=np.int64)
    r = parity.judge("c", parity.compare({"i": ids + [[0, 1, 0]]}, {"i": ids}, {"i": EXACT}), {"i": EXACT})
    assert r.failures["i"].startswith("1/3 elements differ")
    s = np.array(["a", "b"], dtype=object)
    assert parity.judge("c", parity.compare({"s": s}, {"s": s.copy()}, {}), {}).passed


def test_shape_mismatch_and_missing_output_fail():
    e = np.zeros((2, 3), dtype=np.float32)
    r = parity.judge("c", parity.compare({"a": np.zeros((3, 2), np.float32)}, {"a": e, "b": e}, {}), {})
    assert "shape" in r.failures["a"] and r.failures["b"] == "output missing"


def test_nan_is_never_within_tolerance():
    e = np.zeros(3, dtype=np.float32)
    a = np.array([0, np.nan, 0], dtype=np.float32)
    assert not parity.judge("c", parity.compare({"a": a}, {"a": e}, {}), {}).passed


def test_empty_batch_compares_by_shape():
    e = np.zeros((0, 384), np.float32)
    assert parity.judge("c", parity.compare({"a": e.copy()}, {"a": e}, {}), {}).passed
