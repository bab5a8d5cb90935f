"""`python -m exportable run`: an artifact over a table of rows, on this process or on Ray Data,
to one output file plus `<stem>.errors.jsonl` for the rows it refused."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .. import api, runtime
from ..errors import InputError
from .local import local_outcomes
from .parts import Parts, errors_path, run_settings
from .progress import Progress
from .rows import RowFeeder
from .tables import check_paths, count_rows

ENGINES = ("local", "ray")
DEFAULT_BATCH = 32  # sentence_bert's rows/s flatten out from batch 32 on (docs/performance.md)
DEFAULT_CHUNK_ROWS = 4096


@dataclass
class RunSummary:
    output: Path
    errors: Path | None
    written: int
    refused: int
    seconds: float
    rows_per_s: float  # rows computed by this run (not those a --resume skipped) per second

    @property
    def exit_code(self) -> int:
        return 1 if self.refused and not self.written else 0

    def line(self) -> str:
        where = f"; refused rows and reasons in {self.errors}" if self.refused else ""
        return (f"wrote {self.written:,} rows to {self.output}, refused {self.refused:,}{where} "
                f"({self.seconds:.1f}s, {self.rows_per_s:,.0f} rows/s)")


def _silent(_msg: str) -> None:
    pass


def run_artifact(artifact: str | Path, source: str | Path, output: str | Path, engine: str = "local",
                 batch_size: int = DEFAULT_BATCH, threads: int | None = None, resume: bool = False,
                 chunk_rows: int = DEFAULT_CHUNK_ROWS, say: Callable[[str], None] = _silent,
                 progress_stream=None) -> RunSummary:
    artifact, source, output = Path(artifact), Path(source), Path(output)
    if engine not in ENGINES:
        raise InputError(f"--engine {engine!r}: choose {' or '.join(ENGINES)}")
    for flag, value in (("--batch-size", batch_size), ("--threads", threads or 1), ("--chunk-rows", chunk_rows)):
        if not isinstance(value, int) or value < 1:
            raise InputError(f"{flag} {value!r}: expected a positive integer")
    check_paths(source, output)
    if not artifact.is_dir():
        raise InputError(f"{artifact} is not an artifact folder; pass e.g. artifacts/sentence_bert")
    threads = threads or runtime.available_cpus()
    start = time.perf_counter()
    parts = Parts(output, run_settings(source, artifact, output, chunk_rows), resume, say)
    if parts.start_row:
        say(f"--resume: {parts.done} parts ({parts.start_row:,} rows) already written; going on from there")
    total = count_rows(source)
    progress = Progress(total, min(parts.start_row, total), progress_stream)
    if engine == "ray":
        from .ray_engine import ray_outcomes  # noqa: PLC0415  (Ray is the optional scale extra)

        outcomes = ray_outcomes(artifact, source, parts.start_row, chunk_rows, batch_size, threads, say)
    else:
        runner = api.load_artifact(artifact, threads=threads)
        feeder = RowFeeder(runner.input_specs, runner.output_names, source.parent)
        outcomes = local_outcomes(runner, feeder, source, parts.start_row, chunk_rows, batch_size)
    index = parts.done
    for outcome in outcomes:
        parts.commit(index, outcome.results, outcome.refused)
        progress.advance(len(outcome.results) + len(outcome.refused))
        index += 1
    progress.close()
    written, refused = parts.finish(index)
    return RunSummary(output, errors_path(output) if refused else None, written, refused,
                      time.perf_counter() - start, progress.rate())

