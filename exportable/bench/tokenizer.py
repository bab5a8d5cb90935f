"""`python -m exportable bench NAME --tokenizer-only`: the in-graph tokenizer (the front of a text
artifact, alone) against the Hugging Face fast tokenizer it reproduces, at batch 1 and 32, in one
process. Ids are compared first: a tokenizer whose ids differ is `failed` and not timed.

Each round times a block of HF calls and a block of graph calls on the same texts; `x hf` is the
median over rounds of HF's median over the graph's (paired, like the main bench).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .. import registry, runtime, samples
from ..errors import InputError
from ..textinput import TextInputs
from .timing import paired_rounds

ROUNDS = 7


def bench_tokenizer(name: str, out: str | Path | None = None, batches: Sequence[int] = (1, 32),
                    seconds: float = 4.0, threads: int | None = None, opset: int = 18, **options) -> dict:
    recipe = registry.resolve(name)(**options)
    if not isinstance(recipe, TextInputs) or not recipe.text_mode:
        raise InputError(f"bench {name} --tokenizer-only: the recipe's artifact takes no strings; "
                         "use a text recipe with --inputs text")
    plan = recipe.tokenizer_plan()
    hf = recipe.tokenizer
    model = recipe.onnx_preprocessor(opset)
    options = runtime.session_options([o.domain for o in model.opset_import], threads)
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    texts = samples.sentences(max(batches), seed=7)
    rows = []
    for batch in batches:
        chunk = texts[:batch]

        def original(chunk=chunk):
            return hf(chunk, padding=True, truncation=True, max_length=recipe.max_length, return_tensors="np")

        def graph(chunk=chunk):
            return session.run(None, {"text": np.array(chunk, dtype=object)})

        want, got = original(), dict(zip([o.name for o in session.get_outputs()], graph()))
        same = all(np.array_equal(got[k], want[k]) for k in got if k in want)
        row = {"kind": plan.kind, "batch": batch, "status": "ok" if same else "failed"}
        if same:
            row.update(_paired(original, graph, seconds / max(1, len(batches))))
        rows.append(row)
    data = {"recipe": name, "options": recipe.describe()["options"], "tokenizer": plan.kind,
            "source": str(recipe.tokenizer_dir), "texts": "samples.sentences(seed=7)", "rows": rows}
    folder = Path(out) if out is not None else Path("artifacts") / "bench" / recipe.name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bench-tokenizer.json").write_text(json.dumps(data, indent=1) + "\n")
    data["json_path"] = str(folder / "bench-tokenizer.json")
    return data


def _paired(original: Callable, graph: Callable, seconds: float) -> dict:
    hf_s, graph_s = paired_rounds(original, graph, seconds, ROUNDS)
    ratios = [h / g for h, g in zip(hf_s, graph_s)]
    return {"hf_ms": round(statistics.median(hf_s) * 1000, 4), "graph_ms": round(statistics.median(graph_s) * 1000, 4),
            "speedup": round(statistics.median(ratios), 3), "rounds": ROUNDS}


def format_tokenizer_table(data: dict) -> str:
    lines = [f"tokenizer only ({data['tokenizer']}, {data['source']}): in-graph vs Hugging Face fast",
             f"{'kind':<18}{'batch':>6}{'HF ms':>10}{'graph ms':>10}{'x hf':>8}"]
    for r in data["rows"]:
        if r["status"] != "ok":
            lines.append(f"{r['kind']:<18}{r['batch']:>6}  ids differ from HF: not timed")
            continue
        lines.append(f"{r['kind']:<18}{r['batch']:>6}{r['hf_ms']:>10.3f}{r['graph_ms']:>10.3f}{r['speedup']:>8.2f}")
    return "\n".join(lines)
