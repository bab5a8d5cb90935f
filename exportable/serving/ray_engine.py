"""--engine ray: Ray Data's read_* -> map_batches(an actor pool, each actor one ONNX Runtime
session with explicit thread counts) -> rows streamed back in order to the same part writer as
--engine local, so both write the same OUTPUT and errors file.

Ray starts in this process (RAY_USAGE_STATS_ENABLED=0, one CPU left to the driver that reads and
writes) or joins the cluster named by RAY_ADDRESS. JSONL is read as text lines and parsed in the
actors with the local reader's parser, and CSV cells are read as strings, so a broken line or a
wrong type is refused the same way on both engines (Ray's JSON reader would fail the whole read
on a column of mixed types).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from .. import api, runtime
from ..errors import MissingDependency
from .predict import Outcome, predict_rows
from .rows import RowError, RowFeeder, parse_json_line

EXTRA_HINT = 'pip install -e ".[scale]"  (Ray Data and Ray Serve)'
ROWS_PER_CALL = 8  # batches per actor call: fewer, larger hand-offs between Ray and the actors


def import_ray():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # never phone home from a user's job
    try:
        import ray  # noqa: PLC0415  (Ray is the optional scale extra)
        import ray.data  # noqa: F401, PLC0415  (Ray is the optional scale extra)
    except ImportError:
        raise MissingDependency(f"Ray is not installed; {EXTRA_HINT}") from None
    return ray


def start_ray(say: Callable[[str], None]):
    """Join RAY_ADDRESS's cluster, or start Ray here with all CPUs but one (the driver's)."""
    ray = import_ray()
    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            say(f"ray: joining the cluster at {os.environ['RAY_ADDRESS']}")
            ray.init(log_to_driver=False)
        else:
            say(f"ray: starting a local Ray on {runtime.available_cpus()} CPU(s)")
            ray.init(num_cpus=runtime.available_cpus(), include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
    return ray


class Predictor:
    """One map_batches actor: one ONNX Runtime session, loaded once, fed many batches."""

    def __init__(self, artifact: str, threads: int, batch_size: int, lines: bool, base_dir: str):
        self.runner = api.load_artifact(artifact, threads=threads)
        self.feeder = RowFeeder(self.runner.input_specs, self.runner.output_names, Path(base_dir))
        self.batch_size, self.lines = batch_size, lines

    def __call__(self, batch) -> dict:
        rows = batch.to_pylist()
        if self.lines:
            rows = [_parse(row["text"]) for row in rows]
        outcome = predict_rows(self.runner, self.feeder, list(enumerate(rows)), self.batch_size)
        result, error = [None] * len(rows), [None] * len(rows)
        for entry in outcome.results:
            position = entry.pop("id")
            result[position] = json.dumps(entry)
        for entry in outcome.refused:
            error[entry["id"]] = entry["reason"]
        given = [json.dumps(row.get("id")) if isinstance(row, dict) else "null" for row in rows]
        return {"given_id": given, "result": result, "error": error}


def _parse(line: str) -> dict | RowError:
    try:
        return parse_json_line(line)
    except RowError as exc:
        return exc


def read_dataset(ray, source: Path):
    path = str(source.resolve())
    if source.suffix == ".jsonl":
        return ray.data.read_text(path)
    if source.suffix == ".parquet":
        return ray.data.read_parquet(path)
    import pyarrow as pa  # noqa: PLC0415  (pyarrow comes with the scale extra)
    import pyarrow.csv as pa_csv  # noqa: PLC0415  (pyarrow comes with the scale extra)

    with source.open(newline="", encoding="utf-8") as handle:
        header = next(csv.reader(handle), [])
    strings = pa_csv.ConvertOptions(column_types={name: pa.string() for name in header})
    return ray.data.read_csv(path, convert_options=strings)


def ray_outcomes(artifact: Path, source: Path, start_row: int, chunk_rows: int, batch_size: int,
                 threads: int | None, say: Callable[[str], None]) -> Iterator[Outcome]:
    ray = start_ray(say)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # rows come back in input order: ids, parts, resume
    context.enable_progress_bars = False  # the run's own bar says rows/s and ETA
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # its plan and "finished" lines are noise here
    cpus = int(ray.cluster_resources().get("CPU", 1))
    local = not os.environ.get("RAY_ADDRESS")
    if local:
        # One Ray CPU stays free: read tasks need it (actors holding every CPU starve the read and
        # the job hangs, seen here on 2 cores) and so does this driver, which writes the output.
        actors = max(1, cpus - 1)
        per_actor = threads or max(1, cpus // actors)
    else:
        per_actor = threads or 1
        actors = max(1, cpus // per_actor)
    say(f"ray: {actors} actor(s) x {per_actor} ONNX Runtime thread(s)")
    dataset = read_dataset(ray, source)
    if start_row:  # --resume: rows before start_row were written by the interrupted run
        dataset = dataset.split_at_indices([start_row])[1]
    results = dataset.map_batches(
        Predictor, batch_size=batch_size * ROWS_PER_CALL, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=1 if local else per_actor,
        fn_constructor_kwargs={"artifact": str(artifact.resolve()), "threads": per_actor, "batch_size": batch_size,
                               "lines": source.suffix == ".jsonl", "base_dir": str(source.resolve().parent)})
    yield from _chunks(results.iter_rows(), start_row, chunk_rows)


def _chunks(rows, number: int, chunk_rows: int) -> Iterator[Outcome]:
    outcome = Outcome()
    for row in rows:
        given = json.loads(row["given_id"])
        rid = number if given is None else given
        if row["error"] is not None:
            outcome.refused.append({"id": rid, "reason": row["error"]})
        else:
            outcome.results.append({"id": rid, **json.loads(row["result"])})
        number += 1
        if len(outcome.results) + len(outcome.refused) == chunk_rows:
            yield outcome
            outcome = Outcome()
    if outcome.results or outcome.refused:
        yield outcome
