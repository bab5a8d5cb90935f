"""int8 planning: where the GEMMs are, what their activations look like on calibration inputs,
and which quantization scheme each one takes, chosen by *measured* (simulated) error."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto

from .. import graph as graph_mod
from ..graph import attribute as _attr
from ..recipe import Case
from ..runtime import session_options
from ..text.corpus import tokenizer_corpus
from ..textinput import TextInputs
from .common import MS_DOMAIN

# scalar zero point for A), chosen from these by measured error: 128 suits symmetric inputs
# (attention context), a low one the GELU output (>= -0.17, long positive tail), where it cut
# all-MiniLM-L6-v2's worst site's error from 0.060 to 0.043 and let all 24 GEMMs be int8.
ROW_ZERO_POINTS = (128, 64, 32, 16)
ROW_QUANTIZE_OPSET = 21  # QuantizeLinear's block_size: one scale per row on any leading shape
ROW_SCALE_FLOOR = 1e-30  # an all-zero row quantizes to the zero point instead of dividing by 0
# GELU's minimum is -0.16997 (x = -0.7518; the tanh form's -0.17004): a GELU-fed per-row site
# uses this bound instead of a ReduceMin pass over [tokens, 1536] (0.16 ms each at batch 32 x 16).
GELU_MIN = -0.1701
GELU_OPS = {(MS_DOMAIN, "BiasGelu"), (MS_DOMAIN, "Gelu"), (MS_DOMAIN, "FastGelu"), ("", "Gelu")}
CALIBRATION_BATCHES = 8  # 256 corpus texts: the search runs the model once per step on these


@dataclass
class Site:
    """A GEMM with constant weights that int8 may take over: a MatMul, or the QKV projection
    inside a fused Attention (which becomes QAttention)."""
    node: str
    kind: str  # "matmul" | "attention"
    x: str  # the activation input
    w: str  # the weight initializer [K, N]

    def as_dict(self) -> dict:
        return {"node": self.node, "kind": self.kind}


def ensure_node_names(model) -> None:
    taken = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)


def _qattention_compatible(node, inits) -> bool:
    inputs = list(node.input) + [""] * 7
    sizes = _attr(node, "qkv_hidden_sizes")
    return (not inputs[4] and not inputs[6] and len(node.output) == 1 and not _attr(node, "unidirectional", 0)
            and not _attr(node, "do_rotary", 0) and bool(inputs[2]) and inputs[2] in inits
            and (sizes is None or len(set(sizes)) == 1) and (bool(inputs[3]) != bool(inputs[5])))


def find_sites(model) -> list[Site]:
    """The GEMMs int8 can take: MatMul with a 2-D float initializer as B, and fused Attention."""
    inits = {i.name: i for i in model.graph.initializer}
    sites = []
    for node in model.graph.node:
        w = inits.get(node.input[1]) if len(node.input) > 1 else None
        if w is None or len(w.dims) != 2 or w.data_type != TensorProto.FLOAT:
            continue
        if node.op_type == "MatMul" and node.domain == "":
            sites.append(Site(node.name, "matmul", node.input[0], node.input[1]))
        elif node.op_type == "Attention" and node.domain == MS_DOMAIN and _qattention_compatible(node, inits):
            sites.append(Site(node.name, "attention", node.input[0], node.input[1]))
    return sites


@dataclass
class Stats:
    """Calibration activations of one GEMM input: per-channel |max| over everything seen, and
    per batch the per-channel min/max (the dynamic range ORT computes per tensor) plus a sample
    of rows to measure the quantization error on."""
    absmax: np.ndarray | None = None
    batches: list = field(default_factory=list)


def cpu_session(model, threads: int | None = None, extra_outputs: Sequence[str] = ()):


    if extra_outputs:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        have = {o.name for o in copy.graph.output}
        copy.graph.output.extend(onnx.helper.make_empty_tensor_value_info(x) for x in extra_outputs if x not in have)
        model = copy
    so = session_options(graph_mod.custom_domains(model), threads)
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def calibrate(model, sites: Sequence[Site], feeds, threads=None, max_rows: int = 1024, seed: int = 0):
    names = sorted({s.x for s in sites})
    session = cpu_session(model, threads, names)
    stats = {x: Stats() for x in names}
    rng = np.random.default_rng(seed)
    per_batch = max(16, max_rows // max(1, len(feeds)))
    for feed in feeds:
        for x, value in zip(names, session.run(names, feed)):
            rows = value.reshape(-1, value.shape[-1]).astype(np.float32)
            if not len(rows):
                continue
            st = stats[x]
            peak = np.abs(rows).max(0)
            st.absmax = peak if st.absmax is None else np.maximum(st.absmax, peak)
            pick = rows[rng.choice(len(rows), min(per_batch, len(rows)), replace=False)]
            st.batches.append((rows.min(0), rows.max(0), pick))
    return stats


def quantize_weight(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per output column (full range -127..127, zero point 0)."""
    scale = np.abs(w).max(0) / 127.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    return np.clip(np.round(w / scale), -127, 127).astype(np.int8), scale


def simulated_error(st: Stats, w: np.ndarray, s: np.ndarray | None, rows_wise: bool = False,
                    zero_point: int = 128, row_min: float | None = None,
                    fixed_range: tuple[float, float] | None = None) -> float:
    """Mean relative error per row (per token) of x @ w when x is quantized as the kernel will
    (per tensor: u8 with one scale from that batch's range, as DynamicQuantizeLinear; per row:
    u8 with one scale per token around the site's fixed `zero_point`, from the row's min and max
    or from the known lower bound `row_min`) and w per output column, after smoothing by s.
    Per row matters: a short text batched with long ones is where per-tensor ranges hurt most.
    `fixed_range`: static int8, one (lo, hi) for every batch (clipped outside it)."""
    if s is not None:
        w = w * s[:, None]
    wq, ws = quantize_weight(w)
    wd = wq.astype(np.float32) * ws
    errors = []
    for lo, hi, rows in st.batches:
        if s is not None:
            rows, lo, hi = rows / s, lo / s, hi / s
        if rows_wise:
            lo = rows.min(1, keepdims=True) if row_min is None else np.full((len(rows), 1), row_min, np.float32)
            scale = row_scales(lo, rows.max(1, keepdims=True), zero_point)
            xd = (np.clip(np.round(rows / scale) + zero_point, 0, 255) - zero_point) * scale
        else:
            lo, hi = fixed_range or (min(float(lo.min()), 0.0), max(float(hi.max()), 0.0))
            scale = (hi - lo) / 255.0 or 1.0
            zp = np.clip(np.round(-lo / scale), 0, 255)
            xd = (np.clip(np.round(rows / scale) + zp, 0, 255) - zp) * scale
        y = rows @ w
        norm = np.linalg.norm(y, axis=1)
        keep = norm > 0
        errors.append(np.linalg.norm(y - xd @ wd, axis=1)[keep] / norm[keep])
    errors = np.concatenate(errors) if errors else np.zeros(1)
    return float(errors.mean()) if errors.size else 0.0


def row_scales(lo: np.ndarray, hi: np.ndarray, zero_point: int) -> np.ndarray:
    """One scale per row so that [lo, hi] fits u8 around a fixed zero point: the same formula
    as the graph's (rowwise_matmul)."""
    return np.maximum(np.maximum(hi / (255 - zero_point), -lo / zero_point), ROW_SCALE_FLOOR)


def smoothing(st: Stats, w: np.ndarray, alpha: float) -> np.ndarray:
    """SmoothQuant's per-input-channel factor: moves activation outliers into the weights."""
    ax = np.maximum(st.absmax, 1e-5)
    aw = np.maximum(np.abs(w).max(1), 1e-5)
    s = ax ** alpha / aw ** (1 - alpha)
    return (s / np.exp(np.log(s).mean())).astype(np.float32)  # geometric mean 1: weights keep their scale


@dataclass
class Plan:
    site: Site
    error: float  # simulated mean relative error per token with the chosen scheme
    error_plain: float  # ... per-tensor, no smoothing
    rows: bool = False  # activations quantized per row (token) instead of per tensor
    zero_point: int = 128  # per row: the site's fixed u8 zero point
    row_min: float | None = None  # per row: a known lower bound of x (GELU output) instead of ReduceMin
    alpha: float | None = None
    how: str | None = None  # "fold-v": into the producing Attention's V projection (free); "mul": a Mul node
    s: np.ndarray | None = None
    static_range: tuple[float, float] | None = None  # static int8: the calibrated (lo, hi) of x

    def as_dict(self) -> dict:
        return {**self.site.as_dict(), "error": round(self.error, 5), "error_per_tensor_unsmoothed": round(self.error_plain, 5),
                "activations": self._activations(),
                "smoothing": None if self.alpha is None else {"alpha": self.alpha, "how": self.how}}


    def _activations(self) -> str:
        if self.static_range is not None:
            return f"static per tensor, range [{self.static_range[0]:.4g}, {self.static_range[1]:.4g}]"
        if self.rows:
            return f"per row, zero point {self.zero_point}" + ("" if self.row_min is None else f", min {self.row_min} (GELU)")
        return "per tensor"


def static_range(st: Stats, s: np.ndarray | None) -> tuple[float, float]:
    """One activation range for every call (static int8): the overall min and max of x (after
    smoothing by s) over the calibration batches, 0 included (the zero point is exact)."""
    lo = min(float((low if s is None else low / s).min()) for low, _, _ in st.batches)
    hi = max(float((high if s is None else high / s).max()) for _, high, _ in st.batches)
    return min(lo, 0.0), max(hi, 0.0)


def plan_static_site(model, site: Site, st: Stats, w: np.ndarray, alphas: Sequence[float],
                     min_gain: float) -> Plan:
    """Static int8 for one GEMM: per-tensor activations with the calibrated range, smoothed by
    the alpha that measurably helps most (by `min_gain`), else none."""
    plain = simulated_error(st, w, None)
    if st.absmax is None:  # no calibration rows reached it: a range of zeros, which parity judges
        return Plan(site, plain, plain, static_range=(0.0, 0.0))
    options = {}
    for alpha in (None, *alphas):
        s = None if alpha is None else smoothing(st, w, alpha)
        fixed = static_range(st, s)
        options[alpha] = (simulated_error(st, w, s, fixed_range=fixed), s, fixed)
    alpha = min(options, key=lambda a: options[a][0])
    if alpha is not None and options[alpha][0] > options[None][0] * (1 - min_gain):
        alpha = None
    err, s, fixed = options[alpha]
    plan = Plan(site, err, plain, alpha=alpha, s=s, static_range=fixed)
    if alpha is not None:
        plan.how = "fold-v" if fold_v_target(model, site.x) is not None else "mul"
    return plan


def fold_v_target(model, x: str):
    """The fused Attention producing `x`, if its V projection can absorb a per-channel scale."""
    inits = {i.name for i in model.graph.initializer}
    producer = next((n for n in model.graph.node if x in n.output), None)
    readers = [n for n in model.graph.node if x in n.input]
    if (producer is None or producer.op_type != "Attention" or producer.domain != MS_DOMAIN or len(readers) != 1
            or len(producer.input) < 3 or producer.input[1] not in inits or producer.input[2] not in inits):
        return None
    sizes = _attr(producer, "qkv_hidden_sizes")
    if sizes is not None and len(set(sizes)) != 1:
        return None
    shared = sum(producer.input[1] in n.input or producer.input[2] in n.input for n in model.graph.node)
    return producer if shared == 1 else None


def plan_site(model, site: Site, st: Stats, w: np.ndarray, alphas: Sequence[float], min_gain: float,
               row_gain: float) -> Plan:
    """Measure the site's error for each scheme and keep the cheapest that is clearly better:
    per-row activations (a few extra passes) only if they cut the error by `row_gain`,
    smoothing (maybe a Mul pass) only if it cuts it by `min_gain`."""
    plain = simulated_error(st, w, None)
    plan = Plan(site, plain, plain)
    if st.absmax is None:
        return plan
    choices = [(False, None, 128)] + [(False, a, 128) for a in alphas]
    if site.kind == "matmul":
        choices += [(True, a, z) for a in (None, *alphas) for z in ROW_ZERO_POINTS]
    gelu_fed = _producer_op(model, site.x) in GELU_OPS  # only unsmoothed x keeps GELU's bound
    measured = {}
    for rows, alpha, z in choices:
        s = None if alpha is None else smoothing(st, w, alpha)
        bound = GELU_MIN if gelu_fed and alpha is None else None
        measured[(rows, alpha, z)] = (simulated_error(st, w, s, rows, z, bound), s)

    def best(rows):
        options = {}
        for (r, a, z), value in measured.items():  # per smoothing choice, its best zero point
            if r == rows and (a not in options or value[0] < options[a][1][0]):
                options[a] = (z, value)
        alpha = min(options, key=lambda a: options[a][1][0])
        if alpha is not None and options[alpha][1][0] > options[None][1][0] * (1 - min_gain):
            alpha = None
        z, value = options[alpha]
        return alpha, z, value

    alpha, zero_point, (err, s) = best(False)
    rows = False
    if site.kind == "matmul":
        r_alpha, r_zero_point, (r_err, r_s) = best(True)
        if r_err < err * (1 - row_gain):
            rows, alpha, zero_point, err, s = True, r_alpha, r_zero_point, r_err, r_s
    plan.zero_point = zero_point
    plan.row_min = GELU_MIN if rows and gelu_fed and alpha is None else None
    plan.rows, plan.alpha, plan.error, plan.s = rows, alpha, err, s
    if alpha is not None:
        plan.how = "fold-v" if fold_v_target(model, site.x) is not None else "mul"
    return plan


def _producer_op(model, name: str) -> tuple[str, str] | None:
    node = next((n for n in model.graph.node if name in n.output), None)
    return None if node is None else (node.domain or "", node.op_type)


def calibration_cases(recipe, limit: int | None = None):
    """Inputs to calibrate int8 on: the recipe's `calibration_cases()` when it has one; for text
    recipes the seeded Unicode corpus (exportable.text.corpus, >= 1,000 strings) in batches of
    32; else the validation cases. `limit` keeps that many batches, spread over the whole set."""
    declared = recipe.calibration_cases()
    if declared is not None:
        cases = list(declared)
    elif isinstance(recipe, TextInputs):
        texts = corpus_texts()
        cases = [Case(f"calibration_{i:04d}", texts[i:i + 32]) for i in range(0, len(texts), 32)]
    else:
        cases = list(recipe.validation_cases())
    if limit is not None and len(cases) > limit:
        step = len(cases) / limit
        cases = [cases[int(i * step)] for i in range(limit)]
    return cases


def corpus_texts() -> list[str]:
    """The varied text corpus (exportable.text.corpus: >= 1,000 seeded Unicode strings)."""
    return list(tokenizer_corpus())
