"""`bench sentence_bert --run`: rows/s over a whole table, end to end, on the same rows:

    original  a plain Python loop calling the original pipeline once per row
              (SentenceTransformer.encode([text])), what a user writes without exportable
    run local `python -m exportable run` in this process: read JSONL, batch, artifact, write JSONL
    run ray   the same on Ray Data (Ray's start included: it is part of what the user waits for)

Each is timed once (wall clock, perf_counter) over all rows; the run outputs are checked against
the original's (cosine per row) so a fast wrong answer cannot win.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .. import api, registry, samples
from ..errors import InputError
from ..recipe import Case
from ..serving import run_artifact

DEFAULT_ROWS = 10_000


def _silent(_msg: str) -> None:
    pass


def run_throughput(name: str = "sentence_bert", out: str | Path | None = None, artifact: str | Path | None = None,
                   rows: int = DEFAULT_ROWS, threads: int | None = None, engines=("local", "ray"),
                   progress: Callable[[str], None] = _silent) -> dict:
    recipe = registry.resolve(name)()
    inputs = recipe.input_specs("onnx")
    if len(inputs) != 1 or inputs[0].dtype != "string":
        raise InputError(f"bench --run times text recipes (one string input); {name} takes "
                         f"{[s.name for s in inputs]}")
    out = Path(out) if out is not None else Path("artifacts") / "bench" / f"{name}-run"
    out.mkdir(parents=True, exist_ok=True)
    if artifact is None:
        artifact = out / "artifact"
        if not (artifact / "model.onnx").is_file():
            progress(f"bench --run: exporting {name} to {artifact}")
            api.export_recipe(name, out=artifact)
    texts = samples.sentences(rows, seed=7)
    source = out / "rows.jsonl"
    column = inputs[0].name
    source.write_text("".join(json.dumps({column: t}) + "\n" for t in texts))
    results = {"recipe": name, "rows": rows, "contenders": {}}

    progress(f"bench --run: original pipeline, one call per row, {rows:,} rows")
    original = recipe.build_original()
    start = time.perf_counter()
    reference = [original(Case("row", [t])) for t in texts]
    seconds = time.perf_counter() - start
    output_name = recipe.output_specs()[0].name
    reference = np.concatenate([r[output_name] for r in reference])
    results["contenders"]["original loop"] = {"seconds": seconds, "rows_per_s": rows / seconds}

    for engine in engines:
        progress(f"bench --run: run --engine {engine}")
        target = out / f"out-{engine}.jsonl"
        start = time.perf_counter()
        summary = run_artifact(artifact, source, target, engine=engine, threads=threads, say=progress)
        seconds = time.perf_counter() - start
        got = np.array([json.loads(line)[output_name] for line in target.read_text().splitlines()], np.float32)
        cosine = np.sum(got * reference, 1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(reference, axis=1))
        results["contenders"][f"run {engine}"] = {"seconds": seconds, "rows_per_s": summary.written / seconds,
                                                  "refused": summary.refused, "min_cosine": float(cosine.min())}
    (out / "bench-run.json").write_text(json.dumps(results, indent=1) + "\n")
    return results


def format_run_table(results: dict) -> str:
    base = results["contenders"]["original loop"]["rows_per_s"]
    lines = [f"{results['recipe']}: {results['rows']:,} rows, end to end",
             f"{'contender':<16} {'seconds':>8} {'rows/s':>9} {'x loop':>7} {'min cosine':>11}"]
    for name, c in results["contenders"].items():
        cosine = f"{c['min_cosine']:.6f}" if "min_cosine" in c else "reference"
        lines.append(f"{name:<16} {c['seconds']:>8.1f} {c['rows_per_s']:>9,.0f} {c['rows_per_s'] / base:>6.2f}x "
                     f"{cosine:>11}")
    if "run local" in results["contenders"] and "run ray" in results["contenders"]:
        local, ray = (results["contenders"][k]["rows_per_s"] for k in ("run local", "run ray"))
        lines.append(f"ray / local: {ray / local:.2f}")
    return "\n".join(lines)
