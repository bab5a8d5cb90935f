"""The bench command: build (or reuse) the model files, measure every contender, write
bench.json and bench.png."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import onnx
import torch

from .. import api, registry, runtime
from ..accelerate.common import json_safe
from ..errors import InputError
from .build import build_models, fresh_models_folder, read_build_info
from .contenders import MODEL_FILES, cuda_available, make_contenders, wanted_variants
from .inputs import BATCHES, LENGTHS, flops_per_token
from .machine import machine_info, matmul_peak_gflops
from .output import format_table, write_chart
from .timing import Measurement, measure

METHOD = {
    "timing": "one process; variants interleaved in blocks of calls (~0.25 s) in rotating order; wall time per "
              "call (perf_counter) incl. the recipe's feed (tokenization when the artifact takes ids); "
              "cpu_ms = process CPU time (all threads) per call",
    "throughput": "items_per_s = batch / median; tokens_per_s = real (unpadded) tokens / median",
    "gflops": "flops_per_token x real tokens / median",
    "memory": "peak_rss_delta_mib: VmHWM (reset via /proc/self/clear_refs) minus VmRSS before the first "
              "call at that shape; load_rss_mib: RSS growth while loading the variant",
    "parity": "each variant vs the original's outputs on the same inputs, with the variant's tolerance; "
              "a failing variant is not timed",
    "onnxruntime": "intra-op threads = threads, inter-op 1, spinning during a run, stopped after it "
                   "(session.force_spinning_stop)",
}


def _silent(_msg: str) -> None:
    pass


@dataclass
class BenchResult:
    data: dict
    json_path: Path
    png_path: Path | None
    table: str


def run_bench(name: str, out: str | Path | None = None, artifact: str | Path | None = None,
              variants: Sequence[str] | None = None, batches: Sequence[int] = BATCHES,
              lengths: Sequence[str] = ("short", "long"), threads: int | None = None, device: str = "cpu",
              seconds: float = 8.0, quick: bool = False, opset: int = 18,
              progress: Callable[[str], None] = _silent, **options) -> BenchResult:
    recipe_cls = registry.resolve(name)
    if device not in ("cpu", "cuda"):
        raise InputError(f"--device {device!r}: choose cpu or cuda")
    bad = [l for l in lengths if l not in (*LENGTHS, "mixed")]
    if bad:
        raise InputError(f"--lengths {bad[0]!r}: choose from short, long, mixed")
    if any(b < 1 for b in batches):
        raise InputError("--batch-sizes must be positive integers")
    threads = threads or runtime.available_cpus()
    if threads < 1:
        raise InputError("--threads must be >= 1")
    notes = []
    if device == "cuda":
        ok, why = cuda_available()
        if not ok:
            progress(why)
            notes.append(why)
            device = "cpu"
    api.quiet_libraries()
    recipe = recipe_cls(**options)
    wanted = wanted_variants(recipe, variants, device)
    out = Path(out) if out is not None else Path("artifacts") / "bench" / recipe.name
    if artifact is not None and not Path(artifact).is_dir():
        raise InputError(f"--artifact {artifact}: no such folder; pass an artifact folder (e.g. artifacts/{name})")
    models = fresh_models_folder(out, artifact)
    torch.set_num_threads(threads)
    info = machine_info(threads)
    info["device"] = device
    if device == "cpu":
        info["fp32_matmul_peak_gflops"] = round(matmul_peak_gflops(threads, 0.3 if quick else 1.5), 1)
    progress(f"bench: {name}, {threads} threads ({info['available_cpus']} available), device {device}")

    def ids_recipe():
        return recipe_cls(**{**options, "inputs": "ids"})

    built = build_models(recipe, models, wanted, opset, quick, threads, progress,
                         ids_recipe if "onnx-ids-optimized" in wanted else None)
    built_info = read_build_info(models, built)
    fpt = recipe.flops_per_token
    fpt_source = "recipe" if fpt else "graph weights (2*K*N per dense layer, attention scores not counted)"
    if not fpt and (models / MODEL_FILES["onnx"]).is_file():
        fpt = flops_per_token(onnx.load(str(models / MODEL_FILES["onnx"])))
    vs = make_contenders(recipe, wanted, models, threads, device, ids_recipe, built)
    rows: list[Measurement] = []
    configs = [(length, batch) for length in lengths for batch in batches]
    for length, batch in configs:
        progress(f"bench: {length} x batch {batch}")
        rows += measure(vs, recipe, length, batch, 0.3 if quick else seconds, 2 if quick else 5, fpt)
    settle_variant_parity(vs, rows)
    if hasattr(os, "getloadavg"):
        info["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    data = {
        "recipe": name, "options": recipe.describe()["options"], "original_pipeline": recipe.original_pipeline,
        "quick": quick, "machine": info, "notes": notes, "method": METHOD,
        "flops_per_token": fpt, "flops_source": fpt_source,
        "lengths": {length: LENGTHS.get(length, "corpus") for length in lengths}, "batches": list(batches),
        "variants": {v.name: v.summary() for v in vs},
        "build": built_info,
        "results": [json_safe(asdict(r)) for r in rows],
    }
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "bench.json"
    json_path.write_text(json.dumps(json_safe(data), indent=1) + "\n")
    png_path = out / "bench.png"
    write_chart(data, png_path)
    return BenchResult(data, json_path, png_path, format_table(data))


def settle_variant_parity(contenders, rows: list[Measurement]) -> None:
    """A contender's parity status over all the bench inputs: failed on one, failed."""
    for v in contenders:
        mine = [r for r in rows if r.variant == v.name]
        if v.status == "ok" and any(r.status == "failed" for r in mine):
            v.status = "failed"
            v.reason = next(r.reason for r in mine if r.status == "failed")
        measured = [r for r in mine if r.max_abs is not None]
        if measured:
            cos = [r.min_cosine for r in measured if r.min_cosine is not None]
            v.parity = {"max_abs": max(r.max_abs for r in measured), "min_cosine": min(cos) if cos else None,
                        "inputs": len(measured), "passed": v.status == "ok"}
