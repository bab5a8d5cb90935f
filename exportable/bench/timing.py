"""Timing one (length, batch): every contender gated by parity first, then blocks of calls
interleaved in rotating order, and the paired speed-up over the original."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

from .. import parity
from ..recipe import Case, Recipe
from .contenders import Contender
from .inputs import bench_case, real_tokens
from .machine import reset_peak, status_kib


@dataclass
class Measurement:
    variant: str
    length: str
    batch: int
    status: str = "ok"  # ok | failed | unavailable
    reason: str = ""
    calls: int = 0
    median_ms: float | None = None
    p95_ms: float | None = None
    best_ms: float | None = None
    cpu_ms: float | None = None
    items_per_s: float | None = None
    tokens: int | None = None
    tokens_per_s: float | None = None
    gflops: float | None = None
    speedup: float | None = None  # median over rounds of (original / this), each round's blocks paired
    speedup_iqr: list | None = None  # quartiles of those per-round ratios: how far one run can be trusted
    speedup_of_medians: float | None = None  # original median / this median (unpaired)
    cpu_speedup: float | None = None
    peak_rss_delta_mib: float | None = None
    max_abs: float | None = None
    min_cosine: float | None = None


def _first_call(variant: Contender, case: Case) -> tuple[dict | None, float | None, str]:
    reset_peak()
    before = status_kib("VmRSS")
    try:
        out = variant.call(case)
    except Exception as exc:
        return None, None, f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
    peak = status_kib("VmHWM")
    delta = None if before is None or peak is None else max(0.0, (peak - before) / 1024)
    return out, delta, ""


BLOCK_SECONDS = 0.25


def _block_calls(variant: Contender, case: Case) -> int:
    t0 = time.perf_counter()
    variant.call(case)  # also the second warm-up call: the first one grew arenas and caches
    return max(1, min(50, int(BLOCK_SECONDS / max(time.perf_counter() - t0, 1e-6))))


def measure(variants: Sequence[Contender], recipe: Recipe, length: str, batch: int, seconds: float,
            min_calls: int, fpt: float | None) -> list[Measurement]:
    case = bench_case(recipe, length, batch)
    if case is None:  # the recipe's bench_case says this shape does not apply (one image per call)
        return [Measurement(v.name, length, batch, status="unavailable",
                            reason=f"{recipe.name} takes no batch of {batch}") for v in variants]
    tokens = real_tokens(recipe, case)
    results = {v.name: Measurement(v.name, length, batch, tokens=tokens) for v in variants}
    expected = None
    live: list[Contender] = []
    for v in variants:
        m = results[v.name]
        if v.call is None:
            m.status, m.reason = "unavailable", v.reason
            continue
        out, delta, error = _first_call(v, case)
        m.peak_rss_delta_mib = None if delta is None else round(delta, 1)
        if out is None:
            m.status, m.reason = "failed", f"raised {error}"
            continue
        if v.name == "original":
            expected = out
        if expected is None:  # no original to compare with: nothing is timed unproven
            m.status, m.reason = "failed", "the original did not run; nothing to prove parity against"
            continue
        verdict = parity.judge_outputs("bench", out, expected, v.tolerances)
        if verdict.metrics:
            m.max_abs = max(mm.max_abs for mm in verdict.metrics)
            cosines = [mm.min_cosine for mm in verdict.metrics if mm.min_cosine is not None]
            m.min_cosine = min(cosines) if cosines else None
        if not verdict.passed:
            m.status, m.reason = "failed", "; ".join(f"{k}: {why}" for k, why in verdict.failures.items())
            continue
        live.append(v)
    if not live:
        return list(results.values())
    walls: dict[str, list[float]] = {v.name: [] for v in live}
    cpus: dict[str, list[float]] = {v.name: [] for v in live}
    per_round: dict[str, list[float]] = {v.name: [] for v in live}  # each round's block median
    # Blocks of consecutive calls per variant (~BLOCK_SECONDS each), in rotating order: machine
    # noise hits every variant alike, and a thread pool still spinning after its variant's block
    # costs at most the first call of the next block, not every call.
    block = {v.name: _block_calls(v, case) for v in live}
    start, rounds = time.perf_counter(), 0
    while rounds < min_calls or time.perf_counter() - start < seconds:
        order = live[rounds % len(live):] + live[:rounds % len(live)]
        for v in order:
            for _ in range(block[v.name]):
                c0, t0 = time.process_time(), time.perf_counter()
                v.call(case)
                walls[v.name].append(time.perf_counter() - t0)
                cpus[v.name].append(time.process_time() - c0)
            per_round[v.name].append(statistics.median(walls[v.name][-block[v.name]:]))
        rounds += 1
        if rounds >= 10 * max(min_calls, 1) and time.perf_counter() - start > seconds:
            break
    for v in live:
        m = results[v.name]
        w = sorted(walls[v.name])
        m.calls = len(w)
        m.median_ms = statistics.median(w) * 1e3
        m.p95_ms = w[min(len(w) - 1, int(math.ceil(0.95 * len(w))) - 1)] * 1e3
        m.best_ms = w[0] * 1e3
        m.cpu_ms = statistics.median(cpus[v.name]) * 1e3
        m.items_per_s = batch / (m.median_ms / 1e3)
        if tokens is not None:
            m.tokens_per_s = tokens / (m.median_ms / 1e3)
            if fpt:
                m.gflops = fpt * tokens / (m.median_ms / 1e3) / 1e9
    ref = results.get("original")
    if ref is not None and ref.median_ms:
        for m in results.values():
            if m.median_ms:
                m.speedup, m.speedup_iqr = paired_speedup(per_round["original"], per_round[m.variant])
                m.speedup_of_medians = ref.median_ms / m.median_ms
                m.cpu_speedup = ref.cpu_ms / m.cpu_ms if m.cpu_ms else None
    return list(results.values())


def paired_speedup(original: Sequence[float], variant: Sequence[float]) -> tuple[float, list[float]]:
    """The median of per-round ratios original/variant, and their quartiles.

    This host's speed moves 2-5x within minutes (noisy neighbours; docs/performance.md). A ratio
    of two medians mixes whichever phases each variant's calls happened to meet: long x 32 read
    1.05x and 1.24x for one artifact an hour apart. Both blocks of one round run within a second
    or two, so their ratio cancels a phase that outlasts the round.
    """
    ratios = sorted(o / v for o, v in zip(original, variant))
    q1, q3 = (statistics.quantiles(ratios, n=4, method="inclusive")[i] for i in (0, 2)) if len(ratios) > 1 \
        else (ratios[0], ratios[0])
    return statistics.median(ratios), [q1, q3]


def median_call_seconds(fn, calls: int) -> float:
    """The median wall time of `calls` calls of `fn`."""
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def paired_rounds(original, candidate, seconds: float, rounds: int) -> tuple[list[float], list[float]]:
    """Per round, the median seconds of a block of `original` calls and then of `candidate` calls
    (the same number, sized to spend about `seconds` in all): the two lists pair round by round."""
    t0 = time.perf_counter()
    original(), candidate()  # warm both
    calls = max(2, int(seconds / rounds / max(1e-4, time.perf_counter() - t0)))
    pairs = [(median_call_seconds(original, calls), median_call_seconds(candidate, calls)) for _ in range(rounds)]
    return [a for a, _ in pairs], [b for _, b in pairs]
