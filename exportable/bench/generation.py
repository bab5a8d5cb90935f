"""`python -m exportable bench text_generator`: new tokens per second of the generation artifact
(tokenizer, decoding Loop, detokenizer: prompt strings in, text out) against the original
pipeline (the HF tokenizer, `model.generate` greedy, `batch_decode`), at batch 1 and 8, in one
process on the same prompts. Outputs are compared first: a mismatch is `failed` and not timed.

Tokens/s counts the new positions each call returns (batch x steps), the same for both.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from .. import api, parity, samples
from ..recipe import Case
from .timing import paired_rounds

ROUNDS = 5


def bench_generation(recipe, out: Path, batches: Sequence[int] = (1, 8), seconds: float = 8.0,
                     threads: int | None = None, opset: int = 18, progress: Callable[[str], None] = print) -> dict:
    folder = Path(out) / "artifact"
    progress(f"bench: exporting {recipe.name} to {folder}")
    api.export_recipe(recipe, out=folder, opset=opset, formats="onnx")
    runner = api.load_artifact(folder, threads=threads)
    original = recipe.build_original()
    if threads:
        torch.set_num_threads(threads)
    prompts = samples.sentences(max(batches), seed=21, max_words=12)
    rows = []
    for batch in batches:
        case = Case(f"batch{batch}", prompts[:batch])
        feed = recipe.feed(case)
        want, got = original(case), runner.run(feed)
        judged = parity.judge_outputs(case.name, got, want, recipe.output_tolerances())
        row = {"batch": batch, "status": "ok" if judged.passed else "failed",
               "steps": int(got["generated_ids"].shape[1])}
        if judged.passed:
            row.update(_paired(lambda case=case: original(case), lambda feed=feed: runner.run(feed),
                               batch * row["steps"], seconds / len(batches)))
        rows.append(row)
        progress(f"bench: batch {batch}: {row}")
    data = {"recipe": recipe.name, "options": recipe.describe()["options"], "prompts": "samples.sentences(seed=21)",
            "original": recipe.original_pipeline, "rows": rows}
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "bench-generation.json").write_text(json.dumps(data, indent=1) + "\n")
    data["json_path"] = str(Path(out) / "bench-generation.json")
    return data


def _paired(original: Callable, artifact: Callable, tokens: int, seconds: float) -> dict:
    orig_s, art_s = paired_rounds(original, artifact, seconds, ROUNDS)
    ratios = [o / a for o, a in zip(orig_s, art_s)]
    return {"generate_tokens_per_s": round(tokens / statistics.median(orig_s), 1),
            "artifact_tokens_per_s": round(tokens / statistics.median(art_s), 1),
            "speedup": round(statistics.median(ratios), 2), "speedup_range": [round(min(ratios), 2),
                                                                                round(max(ratios), 2)]}


def format_generation_table(data: dict) -> str:
    lines = [f"{data['recipe']}: new tokens/s, artifact (strings in, text out) vs {data['original']}",
             f"{'batch':>6}{'steps':>7}{'generate':>12}{'artifact':>12}{'x generate':>12}"]
    for r in data["rows"]:
        if r["status"] != "ok":
            lines.append(f"{r['batch']:>6}  outputs differ from the original: not timed")
            continue
        lines.append(f"{r['batch']:>6}{r['steps']:>7}{r['generate_tokens_per_s']:>12.1f}"
                     f"{r['artifact_tokens_per_s']:>12.1f}{r['speedup']:>12.2f}")
    return "\n".join(lines)

