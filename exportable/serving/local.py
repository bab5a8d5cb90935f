"""--engine local: read, validate, batch and run in this process, one part per chunk of rows."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from .predict import Outcome, predict_rows
from .rows import RowFeeder, row_id
from .tables import read_rows


def local_outcomes(runner, feeder: RowFeeder, source: Path, start_row: int, chunk_rows: int,
                   batch_size: int) -> Iterator[Outcome]:
    """One Outcome per chunk of `chunk_rows` input rows, from row `start_row` on, in order."""
    chunk = []
    for number, row in read_rows(source, start_row):
        chunk.append((row_id(row, number) if isinstance(row, dict) else number, row))
        if len(chunk) == chunk_rows:
            yield predict_rows(runner, feeder, chunk, batch_size)
            chunk = []
    if chunk:
        yield predict_rows(runner, feeder, chunk, batch_size)
