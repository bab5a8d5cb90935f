"""Rows in, (results, refusals) out: the one piece of work every engine shares (local loop,
Ray Data actor, Ray Serve replica), so they all answer alike.

Rows are validated one by one first, then the good ones run in batches; a batch the artifact
still refuses (an InputError from inside the graph, e.g. a corrupt image) or that cannot be
stacked is retried row by row, so one bad row costs only itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ..errors import InputError
from .rows import RowError, RowFeeder, first_line


@dataclass
class Outcome:
    results: list[dict] = field(default_factory=list)  # {"id": ..., output: value, ...} in row order
    refused: list[dict] = field(default_factory=list)  # {"id": ..., "reason": "..."} in row order


def predict_rows(runner, feeder: RowFeeder, rows: Iterable[tuple[object, object]], batch_size: int) -> Outcome:
    """`rows`: (id, row dict or RowError) pairs. Runs the good rows in batches of `batch_size`."""
    outcome, good, refused = Outcome(), [], []
    for position, (rid, row) in enumerate(rows):
        try:
            good.append((position, rid, feeder.convert(row)))
        except RowError as exc:
            refused.append((position, rid, str(exc)))
    step = batch_size if feeder.batched else 1
    for start in range(0, len(good), step):
        _run_batch(runner, feeder, good[start:start + step], outcome, refused)
    # refusals found while running come after those found while validating: restore row order
    outcome.refused = [{"id": rid, "reason": reason} for _, rid, reason in sorted(refused, key=lambda r: r[0])]
    return outcome


def _run_batch(runner, feeder: RowFeeder, batch: list, outcome: Outcome, refused: list) -> None:
    try:
        outputs = runner.run(feeder.feed([feed for _, _, feed in batch]))
        per_row = feeder.split(outputs, len(batch))
    except (InputError, ValueError) as exc:
        if len(batch) == 1:
            position, rid, _ = batch[0]
            refused.append((position, rid, first_line(exc)))
            return
        for one in batch:  # find the row(s) the artifact refuses; the rest still get answers
            _run_batch(runner, feeder, [one], outcome, refused)
        return
    outcome.results.extend({"id": rid, **values} for (_, rid, _), values in zip(batch, per_row))
