"""`python -m exportable bench text_generator`: new tokens per second of the generation artifact
(tokenizer, decoding Loop, detokenizer: prompt strings in, text out) against the original
pipeline (the HF tokenizer, `model.generate` greedy, `batch_decode`), at batch 1 and 8, in one
process on the same prompts. Outputs are compared first: a mismatch is `failed` and not timed.
The quantized variants (onnx-int8, onnx-int4) are timed beside the artifact, each with the
fraction of prompts whose ids are token-identical to generate's, and whose first token agrees
(their gate belongs to the export's validation prompts: a handful of bench prompts is no sample
for it).

Tokens/s counts the new positions each call returns (batch x steps), the same for both.
"""

from __future__ import annotations

import importlib
import json
import statistics
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path

import torch
import transformers

from .. import accelerate, api, parity, runtime, samples
from ..recipe import Case
from .timing import paired_rounds

ROUNDS = 5
QUANTIZED = ("onnx-int8", "onnx-int4")


def bench_generation(recipe, out: Path, batches: Sequence[int] = (1, 8), seconds: float = 8.0,
                     threads: int | None = None, opset: int = 18, progress: Callable[[str], None] = print) -> dict:
    folder = Path(out) / "artifact"
    progress(f"bench: exporting {recipe.name} to {folder}")
    # allow_mismatch: a variant below its gate is still timed (and marked); the artifact itself is
    # judged below, batch by batch
    api.export_recipe(recipe, out=folder, opset=opset, formats="onnx", variants=QUANTIZED, allow_mismatch=True)
    runner = api.load_artifact(folder, threads=threads)
    quantized = {name: runtime.load(folder / accelerate.BY_NAME[name].file, threads, accelerate.BY_NAME[name].providers)
                 for name in QUANTIZED}
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
            row["variants"] = {name: _quantized(recipe, name, q, runner, feed, want, seconds / len(batches) / 2)
                               for name, q in quantized.items()}
        rows.append(row)
        progress(f"bench: batch {batch}: {row}")
    data = {"recipe": recipe.name, "options": recipe.describe()["options"], "prompts": "samples.sentences(seed=21)",
            "original": recipe.original_pipeline, "rows": rows, "optimum": optimum_status()}
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "bench-generation.json").write_text(json.dumps(data, indent=1) + "\n")
    data["json_path"] = str(Path(out) / "bench-generation.json")
    return data


# optimum-onnx is where ORTModelForCausalLM lives since optimum 2; its newest release (0.1.0)
# requires transformers>=4.36,<4.58, and optimum 1.x imports transformers.utils.is_tf_available,
# which transformers 5 removed. Forced in with --no-deps beside transformers 5.23 its import fails:
# "cannot import name 'get_parameter_dtype' from 'transformers.modeling_utils'".
OPTIMUM_PIN = "optimum-onnx 0.1.0 (ORTModelForCausalLM) requires transformers<4.58"


def optimum_status() -> dict:
    """Whether Optimum's ORTModelForCausalLM can run beside this environment's pins, else why not."""
    try:
        importlib.import_module("optimum.onnxruntime").ORTModelForCausalLM  # noqa: B018
    except Exception as exc:  # not installed, or installed and broken by transformers 5
        try:
            found = f"optimum-onnx {metadata.version('optimum-onnx')} installed but {type(exc).__name__}: {exc}"
        except metadata.PackageNotFoundError:
            found = "not installed"
        return {"timed": False, "why": f"{OPTIMUM_PIN}; this environment has transformers {transformers.__version__} "
                                       f"({found[:200]})"}
    return {"timed": False, "why": "installed, but a timing harness for it is not written (it runs the loop in "
                                   "Python around the same decoder step as --inputs past)"}


def _paired(original: Callable, artifact: Callable, tokens: int, seconds: float) -> dict:
    orig_s, art_s = paired_rounds(original, artifact, seconds, ROUNDS)
    ratios = [o / a for o, a in zip(orig_s, art_s)]
    return {"generate_tokens_per_s": round(tokens / statistics.median(orig_s), 1),
            "artifact_tokens_per_s": round(tokens / statistics.median(art_s), 1),
            "speedup": round(statistics.median(ratios), 2), "speedup_range": [round(min(ratios), 2),
                                                                                round(max(ratios), 2)]}


def _quantized(recipe, name: str, session, artifact, feed: dict, want: dict, seconds: float) -> dict:
    """A quantized variant on the same feed: its prompts token-identical to generate's (and first
    tokens agreeing), and its tokens/s timed in rounds paired with the fp32 artifact's."""
    got = session.run(feed)
    tolerances = accelerate.BY_NAME[name].tolerances(recipe.output_tolerances())
    ids = next(m for m in parity.judge_outputs(name, got, want, tolerances).metrics if m.output == "generated_ids")
    tokens = int(got["generated_ids"].size)
    art_s, var_s = paired_rounds(lambda: artifact.run(feed), lambda: session.run(feed), seconds, ROUNDS)
    return {"identical_rows": ids.identical_rows, "rows": ids.rows, "first_tokens": ids.first_tokens,
            "tokens_per_s": round(tokens / statistics.median(var_s), 1),
            "x_artifact": round(statistics.median([a / v for a, v in zip(art_s, var_s)]), 2)}


def format_generation_table(data: dict) -> str:
    names = list(QUANTIZED)
    lines = [f"{data['recipe']}: new tokens/s, artifact (strings in, text out) vs {data['original']}; "
             "int8/int4: the quantized variants (same prompts: token-identical rows / rows)",
             f"{'batch':>6}{'steps':>7}{'generate':>12}{'artifact':>12}{'x generate':>12}"
             + "".join(f"{n.removeprefix('onnx-'):>10}{'identical':>11}" for n in names)]
    for r in data["rows"]:
        if r["status"] != "ok":
            lines.append(f"{r['batch']:>6}  outputs differ from the original: not timed")
            continue
        line = (f"{r['batch']:>6}{r['steps']:>7}{r['generate_tokens_per_s']:>12.1f}"
                f"{r['artifact_tokens_per_s']:>12.1f}{r['speedup']:>12.2f}")
        for name in names:
            v = r.get("variants", {}).get(name)
            same = "-" if v is None else f"{v['identical_rows']}/{v['rows']}"
            line += f"{'-' if v is None else format(v['tokens_per_s'], '.1f'):>10}{same:>11}"
        lines.append(line)
    if "optimum" in data:
        lines.append(f"Optimum ORTModelForCausalLM: not timed: {data['optimum']['why']}")
    return "\n".join(lines)

