"""`python -m exportable bench RECIPE`: the original pipeline and every artifact variant, timed
side by side in one process on the same inputs, each gated by parity first.

Variants (those a recipe supports): `original` (e.g. SentenceTransformer.encode, tokenization
included), `torchscript`, `onnx` (the exported artifact), `onnx-optimized` (fused, fp32),
`onnx-int8` (accuracy-aware dynamic int8), and for text recipes whose artifact takes strings
`onnx-ids-optimized` (the HF tokenizer in Python + the ids-in fused graph) to show what the
in-graph tokenizer costs. With `--device cuda` and a CUDA build of onnxruntime, the ONNX
variants run on the CUDA execution provider with IO binding, plus `onnx-fp16`.

How it measures (see docs/performance.md):
- every timed call is the whole user call: the recipe's feed (tokenization when the artifact
  takes ids) + inference; the original includes its own preprocessing;
- one process, variants interleaved in blocks of calls (~0.25 s each, rotating order) so
  machine noise hits all of them alike; ONNX Runtime threads spin during a run (its
  default, the latency a service gets) and are told to stop when the run returns
  (session.force_spinning_stop), so no idle pool steals CPU from the variant that runs next;
- `x orig` is paired: per round, the original's block median over the variant's, then the
  median of those ratios (quartiles in the JSON and the table's `q1-q3`); the host's speed
  drifts between rounds, and each round's two blocks meet the same drift;
- median, p95, best, and CPU time per call (process user+sys over all threads: robust to other
  load on the machine, unlike wall time); throughput = batch / median; GFLOP/s = FLOPs of the
  real (unpadded) tokens / median, with FLOPs per token counted from the graph's weights;
- peak memory = the rise of the process's peak RSS (VmHWM, reset through /proc/self/clear_refs)
  over the RSS before the call, during the first call at each shape (when arenas grow);
  tracemalloc is not used: it only sees Python allocations, not torch's or ORT's.
- a variant whose outputs break its tolerance on the bench inputs is `failed` and not timed.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import optimize, parity, runtime
from .errors import ExportError, InputError
from .recipe import Case, Recipe, Tolerance

LENGTHS = {"short": 16, "long": 128}
BATCHES = (1, 8, 32)
ALL_VARIANTS = ("original", "torchscript", "onnx", "onnx-optimized", "onnx-int8", "onnx-ids-optimized", "onnx-fp16")
MODEL_FILES = {"onnx": "model.onnx", "torchscript": "model.pt", "onnx-optimized": "model.optimized.onnx",
               "onnx-int8": "model.int8.onnx", "onnx-fp16": "model.fp16.onnx",
               "onnx-ids-optimized": "model.ids.optimized.onnx"}


def _silent(_msg: str) -> None:
    pass


# --- machine --------------------------------------------------------------------------------

def _status_kib(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def machine_info(threads: int) -> dict:
    import onnxruntime as ort

    info = {"python": platform.python_version(), "platform": platform.platform(), "threads": threads,
            "available_cpus": runtime.available_cpus(), "os_cpu_count": os.cpu_count(),
            "onnxruntime": ort.__version__, "onnxruntime_providers": ort.get_available_providers()}
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if hasattr(os, "getloadavg"):
        info["load_average_before"] = [round(x, 2) for x in os.getloadavg()]
    return info


def matmul_peak_gflops(threads: int, seconds: float = 1.0) -> float:
    """The roofline for fp32 figures: the best GFLOP/s of ONNX Runtime's own fp32 MatMul
    ([2048, 384] x [384, 1536], the shape of BERT's FFN at 64 x 32 tokens) on these threads."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    m, k, n = 2048, 384, 1536
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "peak",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    x = {"x": rng.standard_normal((m, k)).astype(np.float32)}
    session.run(None, x)
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        session.run(None, x)
        best = min(best, time.perf_counter() - t0)
    return 2 * m * k * n / best / 1e9


# --- inputs ---------------------------------------------------------------------------------

def _text_of_tokens(recipe, tokens: int, seed: int) -> str:
    """A text that the recipe's own tokenizer turns into exactly `tokens` ids ([CLS] and [SEP]
    included), built from the sample vocabulary; deterministic for a seed."""
    import random

    from . import samples

    rng = random.Random(seed)
    words = list(samples._WORDS)

    def count(text):
        return int(recipe.tokenize([text])[recipe.id_input_names[0]].shape[1])

    special = count("")
    text = ""
    for _ in range(tokens * 4):
        have = count(text)
        if have >= tokens:
            break
        rng.shuffle(words)
        for word in words:
            candidate = f"{text} {word}".strip()
            if count(candidate) <= tokens:
                text = candidate
                break
        else:
            break
    if count(text) != tokens and tokens > special:
        raise InputError(f"bench: cannot build a text of exactly {tokens} tokens for {recipe.name}")
    return text


def bench_case(recipe, length: str, batch: int) -> Case:
    """The inputs for one (length, batch): the recipe's `bench_case` when it has one; for text
    recipes `batch` different texts of exactly 16 (short) or 128 (long) tokens, or for `mixed`
    the varied corpus in order (real padding); else the validation cases' data, repeated."""
    if recipe.declares_bench_case():
        return recipe.bench_case(length, batch)
    from .textinput import TextInputs

    if isinstance(recipe, TextInputs):
        if length == "mixed":
            texts = [t for t in optimize.corpus_texts() if t.strip()]
            return Case(f"mixed_b{batch}", texts[:batch])
        tokens = LENGTHS[length]
        cache = _text_cache.setdefault((recipe.name, tokens), {})
        texts = []
        for i in range(batch):
            if i not in cache:
                cache[i] = _text_of_tokens(recipe, tokens, seed=1000 * tokens + i)
            texts.append(cache[i])
        return Case(f"{length}_b{batch}", texts)
    data = []
    for case in recipe.validation_cases():
        if isinstance(case.data, (list, tuple)):
            data.extend(case.data)
    if not data:
        raise InputError(f"bench: recipe {recipe.name} declares no bench_case(length, batch) and its validation "
                         "cases are not lists; add a bench_case method")
    return Case(f"{length}_b{batch}", (data * (batch // len(data) + 1))[:batch])


_text_cache: dict = {}


def real_tokens(recipe, case: Case) -> int | None:
    """Non-padding tokens in a text case (the work a perfect engine must do), else None."""
    if not isinstance(case.data, (list, tuple)) or not all(isinstance(t, str) for t in case.data):
        return None
    ids = recipe.tokenize(list(case.data))
    if ids is None:
        return None
    mask = ids.get("attention_mask")
    return int(mask.sum()) if mask is not None else int(next(iter(ids.values())).size)


def flops_per_token(model) -> float | None:
    """2 * K * N per token for every MatMul/Gemm/Attention with a constant 2-D weight (the dense
    layers); the attention score products (O(sequence) per token) are not counted."""
    from onnx import numpy_helper  # noqa: F401  (onnx is needed to read the model anyway)

    if model is None:
        return None
    from .unpad import layer_nodes

    inits = {i.name: list(i.dims) for i in model.graph.initializer}
    total = 0
    for node in layer_nodes(model.graph):  # an optimized graph keeps its layers inside an If
        if node.op_type in ("MatMul", "Gemm", "Attention", "DynamicQuantizeMatMul", "QAttention") and len(node.input) > 1:
            dims = inits.get(node.input[1])
            if dims and len(dims) == 2:
                total += 2 * dims[0] * dims[1]
    return float(total) or None


# --- variants -------------------------------------------------------------------------------

@dataclass
class Variant:
    name: str
    description: str
    call: Callable[[Case], Mapping[str, np.ndarray]] | None
    tolerances: Mapping[str, Tolerance]
    file: str | None = None
    device: str = "cpu"
    status: str = "ok"  # ok | failed | unavailable
    reason: str = ""
    parity: dict = field(default_factory=dict)  # worst over the bench inputs
    load_rss_mib: float | None = None

    def summary(self) -> dict:
        return {"description": self.description, "file": self.file, "device": self.device, "status": self.status,
                "reason": self.reason, "parity": self.parity, "load_rss_mib": self.load_rss_mib,
                "tolerances": {k: _jsonable(t.as_dict()) for k, t in self.tolerances.items()}}


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def cuda_available() -> tuple[bool, str]:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False, ("CUDA requested but this onnxruntime has no CUDAExecutionProvider (providers: "
                       f"{', '.join(ort.get_available_providers())}; install onnxruntime-gpu); running on CPU")
    return True, ""


class OrtCall:
    """session.run for one model on CPU, or on CUDA with IO binding (inputs copied to the
    device once per call, outputs left there and copied back once)."""

    def __init__(self, path: Path, recipe: Recipe, fmt: str, threads: int, device: str = "cpu", feed_recipe=None):
        import onnx
        import onnxruntime as ort

        from . import graph

        model = onnx.load(str(path), load_external_data=False)
        # Threads spin during a run (ORT's default, the latency a service gets) but stop when it
        # returns: measured, pools left spinning between calls made the torch variants in this
        # process 10x slower (short x 32: 870 ms instead of 55 ms).
        so = runtime.session_options(graph.custom_domains(model), threads)
        so.add_session_config_entry("session.force_spinning_stop", "1")
        providers = ["CPUExecutionProvider"]
        if device == "cuda":
            providers = [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(path), so, providers=providers)
        self.device = device
        self.recipe, self.fmt = feed_recipe or recipe, fmt
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.string_inputs = {i.name for i in self.session.get_inputs() if i.type == "tensor(string)"}

    def __call__(self, case: Case) -> dict[str, np.ndarray]:
        feed = self.recipe.feed(case, self.fmt)
        if self.device != "cuda":
            return dict(zip(self.outputs, self.session.run(self.outputs, feed)))
        return run_bound(self.session, feed, self.outputs, self.device, self.string_inputs)


def run_bound(session, feed: Mapping[str, np.ndarray], outputs: Sequence[str], device: str,
              string_inputs: set[str]) -> dict[str, np.ndarray]:
    """One call through IO binding: inputs copied to `device` once, outputs bound there.

    A string input cannot be bound (onnxruntime 1.31: "Only binding non-string Tensors is
    currently supported", and no OrtValue is made from a string array), so a text-in graph runs
    through session.run: its tokenizer runs on the CPU anyway, ONNX Runtime copies the ids to
    the device itself, and its outputs (one embedding per text) are small."""
    import onnxruntime as ort

    if string_inputs & set(feed):
        return dict(zip(outputs, session.run(list(outputs), dict(feed))))
    binding = session.io_binding()
    for name, value in feed.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value), device, 0))
    for name in outputs:
        binding.bind_output(name, device)
    session.run_with_iobinding(binding)
    return dict(zip(outputs, binding.copy_outputs_to_cpu()))


def _rss_mib() -> float | None:
    kib = _status_kib("VmRSS")
    return None if kib is None else kib / 1024


def _loaded(variant: Variant, factory: Callable[[], Callable]) -> Variant:
    before = _rss_mib()
    try:
        variant.call = factory()
    except Exception as exc:  # a variant that cannot load is reported, the others still run
        variant.status, variant.reason = "unavailable", f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        variant.call = None
    after = _rss_mib()
    if before is not None and after is not None:
        variant.load_rss_mib = round(after - before, 1)
    return variant


# --- building the models --------------------------------------------------------------------

def build_models(recipe: Recipe, folder: Path, wanted: Sequence[str], opset: int, quick: bool, threads: int,
                 progress: Callable[[str], None] = _silent, recipe_factory=None) -> dict[str, dict]:
    """Write the model files the variants need into `folder` (kept: `--artifact folder` reuses
    them). Returns what was built and how (fusion counts, int8 choices)."""
    import onnx

    from . import api, graph
    from .report import Report

    folder.mkdir(parents=True, exist_ok=True)
    built: dict[str, dict] = {}
    report = Report(recipe.name, {}, recipe.original_pipeline, {})
    need = {"onnx": any(v.startswith("onnx") and v != "onnx-ids-optimized" for v in wanted),
            "torchscript": "torchscript" in wanted}
    for fmt in ("onnx", "torchscript"):
        if need[fmt] and fmt in recipe.formats and not recipe.format_unavailable(fmt) and not (folder / MODEL_FILES[fmt]).is_file():
            progress(f"bench: capturing {fmt}")
            api.capture_and_check(recipe, fmt, opset, folder, report, progress, recipe.source())
            built[fmt] = {"strategy": next(s.detail.get("strategy") for s in report.stages
                                            if s.name == f"capture:{fmt}")}
    base = folder / MODEL_FILES["onnx"]
    fused_path = folder / MODEL_FILES["onnx-optimized"]
    contrib: list = []

    def contrib_fused():
        """fp16 starts from the contrib Attention (the CUDA kernels); with only a fused file given
        (--artifact), from that."""
        if not contrib:
            contrib.append(optimize.fuse(onnx.load(str(base)), standard=False) if base.is_file()
                           else optimize.Transformed(onnx.load(str(fused_path))))
        return contrib[0]

    if any(v in wanted for v in ("onnx-optimized", "onnx-int8", "onnx-fp16")) and base.is_file():
        if not fused_path.is_file():
            progress("bench: fusing")
            fused = optimize.standardized(contrib_fused())
            graph.save_single_file(fused.model, fused_path)
            built["onnx-optimized"] = fused.detail
    have_fused = base.is_file() or fused_path.is_file()
    if "onnx-int8" in wanted and have_fused and not (folder / MODEL_FILES["onnx-int8"]).is_file():
        progress("bench: int8 (calibrating)")
        cases = optimize.calibration_cases(recipe, limit=1 if quick else optimize.CALIBRATION_BATCHES)
        feeds = [recipe.feed(c, "onnx") for c in cases]
        try:
            q = optimize.quantize_int8(onnx.load(str(fused_path)), feeds, threads=threads, progress=progress)
        except ExportError as exc:  # e.g. a conv net: no GEMMs to quantize; the other variants still run
            built["onnx-int8"] = {"error": str(exc)}
        else:
            graph.save_single_file(q.model, folder / MODEL_FILES["onnx-int8"])
            built["onnx-int8"] = q.detail
    if "onnx-fp16" in wanted and have_fused and not (folder / MODEL_FILES["onnx-fp16"]).is_file():
        progress("bench: fp16")
        half = optimize.to_fp16(contrib_fused().model)
        graph.save_single_file(half.model, folder / MODEL_FILES["onnx-fp16"])
        built["onnx-fp16"] = half.detail
    ids_path = folder / MODEL_FILES["onnx-ids-optimized"]
    if "onnx-ids-optimized" in wanted and recipe_factory is not None and not ids_path.is_file():
        ids_recipe = recipe_factory()
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            progress("bench: capturing the ids-in graph")
            api.capture_and_check(ids_recipe, "onnx", opset, Path(tmp), Report(recipe.name, {}, "", {}), progress,
                                  ids_recipe.source())
            fused = optimize.fuse(onnx.load(str(Path(tmp) / MODEL_FILES["onnx"])))
            graph.save_single_file(fused.model, ids_path)
            built["onnx-ids-optimized"] = fused.detail
    return built


# --- timing ---------------------------------------------------------------------------------

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


def _judge(variant: Variant, actual, expected) -> parity.CaseResult:
    return parity.judge("bench", parity.compare(actual, expected, variant.tolerances), variant.tolerances)


def _first_call(variant: Variant, case: Case) -> tuple[dict | None, float | None, str]:
    _reset_peak()
    before = _status_kib("VmRSS")
    try:
        out = variant.call(case)
    except Exception as exc:
        return None, None, f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
    peak = _status_kib("VmHWM")
    delta = None if before is None or peak is None else max(0.0, (peak - before) / 1024)
    return out, delta, ""


BLOCK_SECONDS = 0.25


def _block_calls(variant: Variant, case: Case) -> int:
    t0 = time.perf_counter()
    variant.call(case)  # also the second warm-up call: the first one grew arenas and caches
    return max(1, min(50, int(BLOCK_SECONDS / max(time.perf_counter() - t0, 1e-6))))


def measure(variants: Sequence[Variant], recipe: Recipe, length: str, batch: int, seconds: float,
            min_calls: int, fpt: float | None) -> list[Measurement]:
    case = bench_case(recipe, length, batch)
    if case is None:  # the recipe's bench_case says this shape does not apply (one image per call)
        return [Measurement(v.name, length, batch, status="unavailable",
                            reason=f"{recipe.name} takes no batch of {batch}") for v in variants]
    tokens = real_tokens(recipe, case)
    results = {v.name: Measurement(v.name, length, batch, tokens=tokens) for v in variants}
    expected = None
    live: list[Variant] = []
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
        verdict = _judge(v, out, expected)
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


# --- the command ----------------------------------------------------------------------------

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
    from . import api, registry

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
    wanted = _wanted_variants(recipe, variants, device)
    out = Path(out) if out is not None else Path("artifacts") / "bench" / recipe.name
    if artifact is not None and not Path(artifact).is_dir():
        raise InputError(f"--artifact {artifact}: no such folder; pass an artifact folder (e.g. artifacts/{name})")
    models = _fresh_models_folder(out, artifact)
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        pass
    info = machine_info(threads)
    info["device"] = device
    if device == "cpu":
        info["fp32_matmul_peak_gflops"] = round(matmul_peak_gflops(threads, 0.3 if quick else 1.5), 1)
    progress(f"bench: {name}, {threads} threads ({info['available_cpus']} available), device {device}")

    def ids_recipe():
        return recipe_cls(**{**options, "inputs": "ids"})

    built = build_models(recipe, models, wanted, opset, quick, threads, progress,
                         ids_recipe if "onnx-ids-optimized" in wanted else None)
    built_info = _read_build_info(models, built)
    fpt = recipe.flops_per_token
    fpt_source = "recipe" if fpt else "graph weights (2*K*N per dense layer, attention scores not counted)"
    if not fpt and (models / MODEL_FILES["onnx"]).is_file():
        import onnx

        fpt = flops_per_token(onnx.load(str(models / MODEL_FILES["onnx"])))
    vs = _make_variants(recipe, wanted, models, threads, device, ids_recipe, built)
    rows: list[Measurement] = []
    configs = [(length, batch) for length in lengths for batch in batches]
    for length, batch in configs:
        progress(f"bench: {length} x batch {batch}")
        rows += measure(vs, recipe, length, batch, 0.3 if quick else seconds, 2 if quick else 5, fpt)
    for v in vs:  # a variant's parity status over all the bench inputs
        mine = [r for r in rows if r.variant == v.name]
        if v.status == "ok" and any(r.status == "failed" for r in mine):
            v.status = "failed"
            v.reason = next(r.reason for r in mine if r.status == "failed")
        measured = [r for r in mine if r.max_abs is not None]
        if measured:
            cos = [r.min_cosine for r in measured if r.min_cosine is not None]
            v.parity = {"max_abs": max(r.max_abs for r in measured), "min_cosine": min(cos) if cos else None,
                        "inputs": len(measured), "passed": v.status == "ok"}
    if hasattr(os, "getloadavg"):
        info["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    data = {
        "recipe": name, "options": recipe.describe()["options"], "original_pipeline": recipe.original_pipeline,
        "quick": quick, "machine": info, "notes": notes,
        "method": {
            "timing": "one process; variants interleaved in blocks of calls (~0.25 s) in rotating order; wall time per call "
                      "(perf_counter) incl. the recipe's feed (tokenization when the artifact takes ids); "
                      "cpu_ms = process CPU time (all threads) per call",
            "throughput": "items_per_s = batch / median; tokens_per_s = real (unpadded) tokens / median",
            "gflops": "flops_per_token x real tokens / median",
            "memory": "peak_rss_delta_mib: VmHWM (reset via /proc/self/clear_refs) minus VmRSS before the first "
                      "call at that shape; load_rss_mib: RSS growth while loading the variant",
            "parity": "each variant vs the original's outputs on the same inputs, with the variant's tolerance; "
                      "a failing variant is not timed",
            "onnxruntime": "intra-op threads = threads, inter-op 1, spinning during a run, stopped after it "
                           "(session.force_spinning_stop)",
        },
        "flops_per_token": fpt, "flops_source": fpt_source,
        "lengths": {l: LENGTHS.get(l, "corpus") for l in lengths}, "batches": list(batches),
        "variants": {v.name: v.summary() for v in vs},
        "build": built_info,
        "results": [_jsonable(asdict(r)) for r in rows],
    }
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "bench.json"
    json_path.write_text(json.dumps(_jsonable(data), indent=1) + "\n")
    png_path = out / "bench.png"
    try:
        write_chart(data, png_path)
    except ImportError as exc:
        progress(f"bench: no chart ({exc}); the JSON has every number")
        png_path = None
    return BenchResult(data, json_path, png_path, format_table(data))


def _fresh_models_folder(out: Path, artifact) -> Path:
    """out/models, emptied: built afresh each run (a stale model must never be timed), or
    holding links to an artifact folder's model files (`--artifact`), the missing ones built."""
    import shutil

    models = out / "models"
    try:
        if models.exists():
            shutil.rmtree(models)
        models.mkdir(parents=True)
    except OSError as exc:
        raise InputError(f"--out {out}: cannot write there ({exc.strerror}); choose a writable folder") from None
    if artifact is not None:
        for file in MODEL_FILES.values():
            source = Path(artifact) / file
            if source.is_file():
                try:
                    os.link(source, models / file)
                except OSError:
                    shutil.copy2(source, models / file)
    return models


def _wanted_variants(recipe, variants, device) -> list[str]:
    from .textinput import TextInputs

    if variants:
        unknown = [v for v in variants if v not in ALL_VARIANTS]
        if unknown:
            raise InputError(f"--variants {unknown[0]!r}: choose from {', '.join(ALL_VARIANTS)}")
        wanted = list(variants)
    else:
        wanted = ["original", "torchscript", "onnx", "onnx-optimized", "onnx-int8"]
        if isinstance(recipe, TextInputs) and recipe.text_mode:
            wanted.append("onnx-ids-optimized")
        if device == "cuda":
            wanted.append("onnx-fp16")
    if "original" not in wanted:
        wanted.insert(0, "original")  # the reference every variant is proven and timed against
    return [v for v in wanted if v != "torchscript" or ("torchscript" in recipe.formats and not recipe.format_unavailable("torchscript"))]


def _read_build_info(models: Path, built: dict) -> dict:
    info = dict(built)
    for name, file in MODEL_FILES.items():
        path = models / file
        if path.is_file():
            info.setdefault(name, {})["bytes"] = path.stat().st_size
    return _jsonable(info)


def _make_variants(recipe, wanted, models: Path, threads, device, ids_recipe, built: dict | None = None) -> list[Variant]:
    fp32 = recipe.output_tolerances()
    text_in = recipe.text_mode
    onnx_desc = "exported artifact" + (" (strings in: tokenizer in the graph)" if text_in else " (recipe feed + graph)")
    specs = {
        "original": (f"{recipe.original_pipeline} (its own preprocessing included)", fp32),
        "torchscript": ("TorchScript artifact (model.pt) + the recipe's feed (tokenization)", fp32),
        "onnx": (onnx_desc, fp32),
        "onnx-optimized": ("fused graph: opset-23 Attention, Add + LayerNorm, BiasGelu (fp32)", fp32),
        "onnx-int8": ("fused + dynamic int8 (QAttention, DynamicQuantizeMatMul), cosine >= 0.99",
                      optimize.int8_tolerances(fp32)),
        "onnx-ids-optimized": ("HF tokenizer in Python + ids-in fused graph (fp32)", fp32),
        "onnx-fp16": ("fused + fp16 (GPU)", optimize.fp16_tolerances(fp32)),
    }
    out = []
    for name in wanted:
        desc, tol = specs[name]
        file = MODEL_FILES.get(name)
        v = Variant(name, desc, None, tol, file if name != "original" else None, device if name.startswith("onnx") else "cpu")
        if name == "original" and device == "cuda":
            gpu, why = _original_on_gpu(recipe)
            v.description += " (eager PyTorch on the GPU)" if gpu else f" (on the CPU: {why})"
            v.device = "cuda" if gpu else "cpu"
            _loaded(v, gpu or recipe.bench_original)
        elif name == "original":  # a recipe whose original memoises answers says how to time it
            _loaded(v, recipe.bench_original)
        elif file is None or not (models / file).is_file():
            why = (built or {}).get(name, {}).get("error")
            v.status, v.reason = "unavailable", why or f"no {file} in {models}"
        elif name == "torchscript":
            _loaded(v, lambda path=models / file: _torchscript_call(path, recipe))
        elif name == "onnx-ids-optimized":
            _loaded(v, lambda path=models / file: OrtCall(path, recipe, "onnx", threads, device,
                                                          feed_recipe=ids_recipe()))
        else:
            _loaded(v, lambda path=models / file: OrtCall(path, recipe, "onnx", threads, device))
        out.append(v)
    return out


def _original_on_gpu(recipe) -> tuple[Callable[[], Callable] | None, str]:
    """What times the original on the GPU (issue 10: measure against eager PyTorch there), or why
    nothing does: a recipe opts in with `original_on(device)`."""
    if type(recipe).original_on is Recipe.original_on:
        return None, f"{recipe.name} has no original_on(device)"
    try:
        import torch
    except ImportError:
        return None, "torch is not installed"
    if not torch.cuda.is_available():
        return None, f"torch {torch.__version__} sees no CUDA device"
    return (lambda: recipe.original_on("cuda")), ""


def _torchscript_call(path: Path, recipe):
    runner = runtime.TorchScriptRunner(path)
    return lambda case: runner.run(recipe.feed(case, "torchscript"))


# --- output ---------------------------------------------------------------------------------

def format_table(data: dict) -> str:
    m = data["machine"]
    lines = [f"{data['recipe']} bench ({'quick' if data['quick'] else 'full'}): {m['threads']} threads "
             f"(available_cpus {m['available_cpus']}, os.cpu_count {m['os_cpu_count']}), device {m['device']}, "
             f"onnxruntime {m['onnxruntime']}, torch {m.get('torch', '-')}",
             f"load average before {m.get('load_average_before')} after {m.get('load_average_after')}; "
             f"FLOPs/token {data['flops_per_token'] / 1e6:.1f}M ({data['flops_source']})" if data["flops_per_token"]
             else "FLOPs/token unknown",
             f"roofline: fp32 MatMul peak {m['fp32_matmul_peak_gflops']} GFLOP/s on these threads (%peak = GFLOP/s "
             "over it; int8 may exceed it)" if m.get("fp32_matmul_peak_gflops") else "", ""]
    lines.append("variants (parity on the bench inputs vs the original):")
    for name, v in data["variants"].items():
        p = v["parity"] or {}
        cos = p.get("min_cosine")
        detail = (f"max abs {p['max_abs']:.2e}, min cos {cos:.7f}" if p.get("max_abs") is not None and cos is not None
                  else "")
        lines.append(f"  {name:<19} {v['status']:<11} {detail}  {v['reason'][:120]}")
    lines.append("")
    head = (f"{'input':<7}{'batch':>5}  {'variant':<19}{'median ms':>10}{'p95 ms':>9}{'items/s':>9}{'GFLOP/s':>8}"
            f"{'%peak':>6}{'x orig':>8}{'q1-q3':>11}{'cpu ms':>9}{'x cpu':>7}{'peak MiB':>9}")
    lines.append(head)
    for r in data["results"]:
        label = f"{r['length']}{'' if r['tokens'] is None else ''}"
        if r["status"] != "ok":
            lines.append(f"{label:<7}{r['batch']:>5}  {r['variant']:<19}{r['status'].upper()}: {r['reason'][:90]}")
            continue

        def f(x, spec):
            return format(x, spec) if x is not None else "-".rjust(int(spec.split(".")[0]))

        lines.append(f"{label:<7}{r['batch']:>5}  {r['variant']:<19}{f(r['median_ms'], '10.2f')}{f(r['p95_ms'], '9.2f')}"
                     f"{f(r['items_per_s'], '9.1f')}{f(r['gflops'], '8.1f')}{f(_percent_of_peak(r, m), '6.0f')}"
                     f"{'' if r['speedup'] is None else format(r['speedup'], '7.2f') + 'x'}"
                     f"{_quartiles(r.get('speedup_iqr')):>11}"
                     f"{f(r['cpu_ms'], '9.2f')}{'' if r['cpu_speedup'] is None else format(r['cpu_speedup'], '6.2f') + 'x'}"
                     f"{f(r['peak_rss_delta_mib'], '9.1f')}")
    return "\n".join(lines)


def _quartiles(iqr: list | None) -> str:
    return "-" if not iqr else f"{iqr[0]:.2f}-{iqr[1]:.2f}"


def _percent_of_peak(row: dict, machine: dict) -> float | None:
    peak = machine.get("fp32_matmul_peak_gflops")
    return None if not peak or row.get("gflops") is None else 100 * row["gflops"] / peak


COLORS = [(90, 90, 90), (214, 96, 77), (67, 147, 195), (33, 102, 172), (27, 158, 119), (230, 171, 2), (117, 112, 179)]


def write_chart(data: dict, path: Path) -> None:
    """Speed-up over the original per (input, batch), one bar per variant, as a PNG (Pillow,
    which torchvision already brings; no matplotlib)."""
    from PIL import Image, ImageDraw, ImageFont

    rows = [r for r in data["results"] if r["status"] == "ok" and r["speedup"]]
    variants = [v for v in data["variants"] if any(r["variant"] == v for r in rows)]
    groups = []
    for r in data["results"]:
        key = (r["length"], r["batch"])
        if key not in groups:
            groups.append(key)
    if not rows or not groups:
        return
    top = max(r["speedup"] for r in rows)
    top = max(1.5, math.ceil(top * 1.1 * 2) / 2)
    bar, gap, left, bottom, height = 14, 22, 60, 70, 360
    width = left + len(groups) * (len(variants) * bar + gap) + 200
    img = Image.new("RGB", (width, height + bottom + 50), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    d.text((left, 8), f"{data['recipe']}: speed-up over {data['original_pipeline']} (median of per-round paired wall-time ratios, "
                      f"{data['machine']['threads']} threads, {data['machine']['device']})", fill="black", font=font)

    def y_of(v):
        return 30 + height - int(v / top * height)

    step = 0.5 if top <= 5 else (1 if top <= 12 else 5)
    tick = 0.0
    while tick <= top + 1e-9:
        y = y_of(tick)
        d.line([(left - 4, y), (width - 200, y)], fill=(225, 225, 225))
        d.text((8, y - 6), f"{tick:g}x", fill="black", font=font)
        tick += step
    d.line([(left, y_of(1.0)), (width - 200, y_of(1.0))], fill="black")
    for g, (length, batch) in enumerate(groups):
        x0 = left + g * (len(variants) * bar + gap) + gap // 2
        for i, v in enumerate(variants):
            r = next((r for r in rows if r["variant"] == v and r["length"] == length and r["batch"] == batch), None)
            if r is None:
                continue
            x = x0 + i * bar
            d.rectangle([x, y_of(r["speedup"]), x + bar - 2, y_of(0)], fill=COLORS[i % len(COLORS)])
        d.text((x0, y_of(0) + 6), f"{length}", fill="black", font=font)
        d.text((x0, y_of(0) + 20), f"b{batch}", fill="black", font=font)
    for i, v in enumerate(variants):
        y = 40 + i * 18
        d.rectangle([width - 190, y, width - 178, y + 12], fill=COLORS[i % len(COLORS)])
        d.text((width - 172, y), v, fill="black", font=font)
    img.save(path, format="PNG")
