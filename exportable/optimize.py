"""Make an exported ONNX artifact faster, and prove it still answers as the original does.

Two transforms, each a pure function on an `onnx.ModelProto`; the callers (api.py's optimize
stages, bench.py) gate each result by parity before anyone times or ships it:

- `fuse(model)`: transformer fusions for ONNX Runtime's CPU/CUDA kernels. Our capture is
  torch.onnx *dynamo*, which writes SDPA attention in its own decomposed form
  (MatMul/Mul/Add/Softmax/IsNaN/Where); ONNX Runtime's `onnxruntime.transformers` optimizer
  only knows the legacy exporter's patterns and fuses no attention there. onnxscript's
  `ort_fusions` are written for the dynamo graph: on all-MiniLM-L6-v2 they fuse 6 Attention,
  12 SkipLayerNormalization and 6 BiasGelu (com.microsoft ops), 321 -> ~90 nodes, fp32 exact
  to ~2e-7. We then fold the packed QKV weight (a Concat of three initializers) into one
  initializer, so the file holds what the kernel reads, and (`standard_attention`) hand the
  attention itself to the standard opset-23 Attention op, whose CPU kernel is faster.
- `quantize_int8(model, feeds)`: dynamic int8 (u8 activations per tensor, or per token around a
  per-site zero point, s8 weights per output channel) for MatMul and the fused Attention
  (-> QAttention), accuracy-aware: every candidate node's quantization error is *measured* on
  the calibration feeds, and nodes are kept in fp32, most sensitive first, until the minimum
  per-row cosine against fp32 reaches the target. See docs/performance.md for the measurements
  behind the defaults.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ExportError, MissingDependency
from .graph import attribute as _attr
from .graph import drop_unused_initializers, subgraph_reads

# Fused com.microsoft ops we count (and test for): what a transformer graph should turn into.
FUSED_OPS = ("Attention", "MultiHeadAttention", "QAttention", "SkipLayerNormalization", "EmbedLayerNormalization",
             "BiasGelu", "FastGelu", "Gelu", "DynamicQuantizeMatMul", "MatMulIntegerToFloat")
MS_DOMAIN = "com.microsoft"
# Per-row activations are u8 around one fixed zero point per site (ORT's MatMulInteger takes a
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


def fused_op_counts(model) -> dict[str, int]:
    """com.microsoft ops in the graph, by type (only the ones that are present)."""
    from .unpad import layer_nodes

    counts = collections.Counter(n.op_type for n in layer_nodes(model.graph)
                                 if n.domain == MS_DOMAIN and n.op_type in FUSED_OPS)
    return dict(sorted(counts.items()))


@dataclass
class Transformed:
    """A transformed model and what was done to it (recorded in report.json and metadata)."""

    model: object  # onnx.ModelProto
    detail: dict = field(default_factory=dict)


# --- fusion ---------------------------------------------------------------------------------

def fuse(model, *, standard: bool = True) -> Transformed:
    """Fuse attention, skip-layernorm, bias-gelu... for ONNX Runtime. Returns a new model.

    standard: end with `standard_attention` and the unpadding (the fp32 artifact, and what
    quantize_int8 starts from). to_fp16 wants the contrib Attention (the CUDA kernels), so it
    takes `fuse(..., standard=False)`.
    Metadata, graph inputs/outputs and the tokenizer nodes in front (custom domains) are kept."""
    import onnx
    import onnx_ir as ir

    try:
        from onnxscript.rewriter.ort_fusions import optimize_for_ort
    except ImportError as exc:  # pinned in pyproject; only a broken environment lands here
        raise MissingDependency("graph fusion needs onnxscript (pip install onnxscript==0.7.2)") from exc
    start = time.perf_counter()
    before = len(model.graph.node)
    ir_model = ir.from_proto(model)
    try:
        with _quiet_loggers("onnx_ir", "onnxscript"):
            ir_model, rule_counts = optimize_for_ort(ir_model)
    except Exception as exc:
        raise ExportError(f"graph fusion failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from exc
    fused = ir.to_proto(ir_model)
    # onnx-ir writes the types it inferred as value_info, and on a legacy-exporter graph with a
    # scripted Loop (token_tagger's Viterbi) it typed a sequence-carrying Loop output as a tensor:
    # ONNX Runtime then refused the file ("Type (tensor(int64)) of output arg (/crf/Loop_output_2)
    # ... does not match expected type (seq(tensor(int64)))"). ORT infers every type itself.
    del fused.graph.value_info[:]
    folded = fold_constant_concats(fused)
    unnamed = drop_unused_outputs(fused)
    fired = fused_op_counts(fused)
    split = split_skip_layernorm(fused)
    onnx.checker.check_model(fused)
    contrib = Transformed(fused, {
        "method": "onnxscript.rewriter.ort_fusions.optimize_for_ort",
        "nodes_before": before, "nodes_after": len(fused.graph.node),
        "fused_ops": fired, "ops_after": fused_op_counts(fused),
        "rules": {k: v for k, v in rule_counts.items() if v},
        "folded_initializers": folded, "dropped_unused_outputs": unnamed, "skip_layernorm_split": split,
        "standard_attention": 0,
        "seconds": round(time.perf_counter() - start, 2),
    })
    return standardized(contrib) if standard else contrib


@contextlib.contextmanager
def _quiet_loggers(*names: str):
    """onnx-ir logs a skipped shape inference as a warning with a full traceback (on graphs
    with sequence-typed Loop outputs); the fusion result is gated by parity, not by that."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def standardized(contrib: Transformed) -> Transformed:
    """A copy of a `fuse(..., standard=False)` result, finished as `fuse()` would finish it: the
    standard attention, then the layers on real tokens only for padded batches (unpad.py)."""
    import onnx

    from .unpad import layer_nodes, unpad_tokens

    model = onnx.ModelProto()
    model.CopyFrom(contrib.model)
    count = standard_attention(model)
    packed = unpad_tokens(model) if count else 0
    onnx.checker.check_model(model)
    return Transformed(model, {**contrib.detail, "nodes_after": sum(1 for _ in layer_nodes(model.graph)),
                               "standard_attention": count,
                               "token_unpadding": packed, "ops_after": fused_op_counts(model)})


def fold_constant_concats(model) -> int:
    """Replace Concat nodes whose inputs are all initializers by one initializer (the packed
    QKV weights of fused Attention). ONNX Runtime would fold them at every session start."""
    from onnx import numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    users = collections.Counter(name for n in graph.node for name in n.input)
    folded, keep, dropped = 0, [], set()
    for node in graph.node:
        if node.op_type == "Concat" and node.domain == "" and node.input and all(i in inits for i in node.input):
            axis = _attr(node, "axis")
            value = np.concatenate([numpy_helper.to_array(inits[i]) for i in node.input], axis=axis)
            graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
            for name in node.input:
                users[name] -= 1
                dropped.add(name)
            folded += 1
            continue
        keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)
    # Drop only the folded pieces nothing else reads (subgraphs name outer values in attributes,
    # so an initializer that was never a Concat input is left alone).
    graph_outputs = {o.name for o in graph.output} | subgraph_reads(graph)
    for init in [i for i in graph.initializer if i.name in dropped and users[i.name] <= 0
                 and i.name not in graph_outputs]:
        graph.initializer.remove(init)
    return folded


# --- int8 -----------------------------------------------------------------------------------

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


def _ensure_names(model) -> None:
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
    from onnx import TensorProto

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
class _Stats:
    """Calibration activations of one GEMM input: per-channel |max| over everything seen, and
    per batch the per-channel min/max (the dynamic range ORT computes per tensor) plus a sample
    of rows to measure the quantization error on."""

    absmax: np.ndarray | None = None
    batches: list = field(default_factory=list)


def _session(model, threads: int | None = None, extra_outputs: Sequence[str] = ()):
    import onnx
    import onnxruntime as ort

    from . import graph as graph_mod
    from .runtime import session_options

    if extra_outputs:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        have = {o.name for o in copy.graph.output}
        copy.graph.output.extend(onnx.helper.make_empty_tensor_value_info(x) for x in extra_outputs if x not in have)
        model = copy
    so = session_options(graph_mod.custom_domains(model), threads)
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _calibrate(model, sites: Sequence[Site], feeds, threads=None, max_rows: int = 1024, seed: int = 0):
    names = sorted({s.x for s in sites})
    session = _session(model, threads, names)
    stats = {x: _Stats() for x in names}
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


def _quantize_weight(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per output column (full range -127..127, zero point 0)."""
    scale = np.abs(w).max(0) / 127.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    return np.clip(np.round(w / scale), -127, 127).astype(np.int8), scale


def _simulated_error(st: _Stats, w: np.ndarray, s: np.ndarray | None, rows_wise: bool = False,
                     zero_point: int = 128, row_min: float | None = None) -> float:
    """Mean relative error per row (per token) of x @ w when x is quantized as the kernel will
    (per tensor: u8 with one scale from that batch's range, as DynamicQuantizeLinear; per row:
    u8 with one scale per token around the site's fixed `zero_point`, from the row's min and max
    or from the known lower bound `row_min`) and w per output column, after smoothing by s.
    Per row matters: a short text batched with long ones is where per-tensor ranges hurt most."""
    if s is not None:
        w = w * s[:, None]
    wq, ws = _quantize_weight(w)
    wd = wq.astype(np.float32) * ws
    errors = []
    for lo, hi, rows in st.batches:
        if s is not None:
            rows, lo, hi = rows / s, lo / s, hi / s
        if rows_wise:
            lo = rows.min(1, keepdims=True) if row_min is None else np.full((len(rows), 1), row_min, np.float32)
            scale = _row_scales(lo, rows.max(1, keepdims=True), zero_point)
            xd = (np.clip(np.round(rows / scale) + zero_point, 0, 255) - zero_point) * scale
        else:
            lo, hi = min(float(lo.min()), 0.0), max(float(hi.max()), 0.0)
            scale = (hi - lo) / 255.0 or 1.0
            zp = np.clip(np.round(-lo / scale), 0, 255)
            xd = (np.clip(np.round(rows / scale) + zp, 0, 255) - zp) * scale
        y = rows @ w
        norm = np.linalg.norm(y, axis=1)
        keep = norm > 0
        errors.append(np.linalg.norm(y - xd @ wd, axis=1)[keep] / norm[keep])
    errors = np.concatenate(errors) if errors else np.zeros(1)
    return float(errors.mean()) if errors.size else 0.0


def _row_scales(lo: np.ndarray, hi: np.ndarray, zero_point: int) -> np.ndarray:
    """One scale per row so that [lo, hi] fits u8 around a fixed zero point: the same formula
    as the graph's (_rowwise_matmul)."""
    return np.maximum(np.maximum(hi / (255 - zero_point), -lo / zero_point), ROW_SCALE_FLOOR)


def _smoothing(st: _Stats, w: np.ndarray, alpha: float) -> np.ndarray:
    """SmoothQuant's per-input-channel factor: moves activation outliers into the weights."""
    ax = np.maximum(st.absmax, 1e-5)
    aw = np.maximum(np.abs(w).max(1), 1e-5)
    s = ax ** alpha / aw ** (1 - alpha)
    return (s / np.exp(np.log(s).mean())).astype(np.float32)  # geometric mean 1: weights keep their scale


@dataclass
class _Plan:
    site: Site
    error: float  # simulated mean relative error per token with the chosen scheme
    error_plain: float  # ... per-tensor, no smoothing
    rows: bool = False  # activations quantized per row (token) instead of per tensor
    zero_point: int = 128  # per row: the site's fixed u8 zero point
    row_min: float | None = None  # per row: a known lower bound of x (GELU output) instead of ReduceMin
    alpha: float | None = None
    how: str | None = None  # "fold-v": into the producing Attention's V projection (free); "mul": a Mul node
    s: np.ndarray | None = None

    def as_dict(self) -> dict:
        return {**self.site.as_dict(), "error": round(self.error, 5), "error_per_tensor_unsmoothed": round(self.error_plain, 5),
                "activations": (f"per row, zero point {self.zero_point}"
                                + ("" if self.row_min is None else f", min {self.row_min} (GELU)")) if self.rows else "per tensor",
                "smoothing": None if self.alpha is None else {"alpha": self.alpha, "how": self.how}}


def _fold_v_target(model, x: str):
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


def _plan_site(model, site: Site, st: _Stats, w: np.ndarray, alphas: Sequence[float], min_gain: float,
               row_gain: float) -> _Plan:
    """Measure the site's error for each scheme and keep the cheapest that is clearly better:
    per-row activations (a few extra passes) only if they cut the error by `row_gain`,
    smoothing (maybe a Mul pass) only if it cuts it by `min_gain`."""
    plain = _simulated_error(st, w, None)
    plan = _Plan(site, plain, plain)
    if st.absmax is None:
        return plan
    choices = [(False, None, 128)] + [(False, a, 128) for a in alphas]
    if site.kind == "matmul":
        choices += [(True, a, z) for a in (None, *alphas) for z in ROW_ZERO_POINTS]
    gelu_fed = _producer_op(model, site.x) in GELU_OPS  # only unsmoothed x keeps GELU's bound
    measured = {}
    for rows, alpha, z in choices:
        s = None if alpha is None else _smoothing(st, w, alpha)
        bound = GELU_MIN if gelu_fed and alpha is None else None
        measured[(rows, alpha, z)] = (_simulated_error(st, w, s, rows, z, bound), s)

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
        plan.how = "fold-v" if _fold_v_target(model, site.x) is not None else "mul"
    return plan


def _producer_op(model, name: str) -> tuple[str, str] | None:
    node = next((n for n in model.graph.node if name in n.output), None)
    return None if node is None else (node.domain or "", node.op_type)


def _mask_index_nodes(bias: str, prefix: str):
    """[B, S] int32 key mask for QAttention from an additive bias [B, 1, S, S] that is 0 where a
    key is kept (dynamo's SDPA mask: Where(mask, 0, -inf)); parity gates the assumption."""
    from onnx import helper, numpy_helper

    consts = [numpy_helper.from_array(np.array(v, np.int64), f"{prefix}/{n}") for n, v in
              (("starts", [0, 0]), ("ends", [1, 1]), ("axes", [1, 2]), ("squeeze", [1, 2]))]
    consts += [numpy_helper.from_array(np.array(0, np.float32), f"{prefix}/zero"),
               numpy_helper.from_array(np.array(1, np.int32), f"{prefix}/one_i32"),
               numpy_helper.from_array(np.array(0, np.int32), f"{prefix}/zero_i32")]
    nodes = [
        helper.make_node("Slice", [bias, f"{prefix}/starts", f"{prefix}/ends", f"{prefix}/axes"], [f"{prefix}/row"],
                         name=f"{prefix}/slice"),
        helper.make_node("Squeeze", [f"{prefix}/row", f"{prefix}/squeeze"], [f"{prefix}/row2"], name=f"{prefix}/squeeze"),
        helper.make_node("Equal", [f"{prefix}/row2", f"{prefix}/zero"], [f"{prefix}/keep"], name=f"{prefix}/equal"),
        # Where, not Cast: with the layers in unpad.py's If, ONNX Runtime tried to eliminate a Cast
        # here and warned at every session start ("Implicit input name ... cannot be safely updated")
        helper.make_node("Where", [f"{prefix}/keep", f"{prefix}/one_i32", f"{prefix}/zero_i32"], [f"{prefix}/mask_index"],
                         name=f"{prefix}/mask_index"),
    ]
    return nodes, consts, f"{prefix}/mask_index"


def _build_int8(model, plans: Sequence[_Plan], excluded: set[str]):
    """A copy of `model` with every planned site not in `excluded` in int8."""
    import onnx
    from onnx import helper, numpy_helper

    from .unpad import unpad_tokens

    m = onnx.ModelProto()
    m.CopyFrom(model)
    graph = m.graph
    inits = {i.name: i for i in graph.initializer}
    arrays: dict[str, np.ndarray] = {}

    def get(name):
        if name not in arrays:
            arrays[name] = numpy_helper.to_array(inits[name]).astype(np.float32)
        return arrays[name]

    active = [p for p in plans if p.site.node not in excluded]
    inputs_of: dict[str, str] = {}
    before: dict[str, list] = collections.defaultdict(list)
    new_inits = []
    # 1. smoothing, on fp32 weights. V folds first: they change an Attention's weights, which
    #    may be a site itself (quantized after the fold) or stay fp32.
    for p in active:
        if p.alpha is not None and p.how == "fold-v":
            att = _fold_v_target(m, p.site.x)
            wa, ba = get(att.input[1]), get(att.input[2])
            third = wa.shape[1] // 3
            wa[:, 2 * third:] /= p.s
            ba[2 * third:] /= p.s
    weights = {}
    for p in active:
        w = get(p.site.w).copy()
        x = p.site.x
        if p.alpha is not None:
            w *= p.s[:, None]
            if p.how == "mul":
                name = f"{p.site.node}/smooth"
                new_inits.append(numpy_helper.from_array((1.0 / p.s).astype(np.float32), f"{name}/inv_s"))
                before[p.site.node].append(helper.make_node("Mul", [x, f"{name}/inv_s"], [f"{name}/x"], name=name))
                x = f"{name}/x"
        weights[p.site.node] = w
        inputs_of[p.site.node] = x
    # 2. replace the sites
    by_name = {p.site.node: p for p in active}
    masks: dict[str, str] = {}
    nodes = []
    for node in graph.node:
        plan = by_name.get(node.name)
        if plan is None:
            nodes.append(node)
            continue
        nodes.extend(before[node.name])
        wq, ws = _quantize_weight(weights[node.name])
        prefix = f"{node.name}/int8"
        new_inits += [numpy_helper.from_array(wq, f"{prefix}/w"), numpy_helper.from_array(ws, f"{prefix}/w_scale")]
        x = inputs_of[node.name]
        if plan.site.kind == "matmul" and plan.rows:
            extra, consts = _rowwise_matmul(x, f"{prefix}/w", f"{prefix}/w_scale", node.output[0], prefix,
                                            wq.shape[0], plan.zero_point, plan.row_min)
            nodes.extend(extra)
            new_inits.extend(consts)
            continue
        if plan.site.kind == "matmul":
            nodes.append(helper.make_node("DynamicQuantizeMatMul", [x, f"{prefix}/w", f"{prefix}/w_scale"],
                                          list(node.output), name=prefix, domain=MS_DOMAIN))
            continue
        inputs = list(node.input) + [""] * 7
        mask = inputs[3]
        if not mask:
            if inputs[5] not in masks:
                extra, consts, masks[inputs[5]] = _mask_index_nodes(inputs[5], f"{node.name}/mask")
                nodes.extend(extra)
                new_inits.extend(consts)
            mask = masks[inputs[5]]
        attrs = {"num_heads": _attr(node, "num_heads")}
        for key in ("scale", "mask_filter_value"):
            if _attr(node, key) is not None:
                attrs[key] = _attr(node, key)
        nodes.append(helper.make_node("DynamicQuantizeLinear", [x], [f"{prefix}/xq", f"{prefix}/xs", f"{prefix}/xzp"],
                                      name=f"{prefix}/quantize"))
        bias = inputs[2]
        nodes.append(helper.make_node(
            "QAttention", [f"{prefix}/xq", f"{prefix}/w", bias, f"{prefix}/xs", f"{prefix}/w_scale", mask,
                           f"{prefix}/xzp"], list(node.output), name=prefix, domain=MS_DOMAIN, **attrs))
    del graph.node[:]
    graph.node.extend(nodes)
    if any(p.rows for p in active):
        raise_opset(m, ROW_QUANTIZE_OPSET)
    for name, value in arrays.items():  # smoothed fp32 weights that stay (Attention kept in fp32, V folds)
        inits[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))
    graph.initializer.extend(new_inits)
    fold_bias_into_dynamic_matmul(m)
    drop_unused_initializers(m)
    unpad_tokens(m)
    return m


def fold_bias_into_dynamic_matmul(model) -> int:
    """DynamicQuantizeMatMul -> Add(constant [N] bias) becomes one DynamicQuantizeMatMul with
    its bias input: the kernel adds it in the GEMM's epilogue instead of a pass over [M, N]
    (the out-projection and FFN2 biases that split_skip_layernorm leaves as Adds)."""
    from onnx import numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    readers = collections.defaultdict(list)
    for node in graph.node:
        for name in node.input:
            readers[name].append(node)
    outputs = {o.name for o in graph.output}
    folded = set()
    for node in graph.node:
        if node.op_type != "DynamicQuantizeMatMul" or node.domain != MS_DOMAIN or (len(node.input) > 4 and node.input[4]):
            continue
        y = node.output[0]
        add = readers[y][0] if len(readers[y]) == 1 and y not in outputs else None
        if add is None or add.op_type != "Add" or add.domain not in ("", "ai.onnx"):
            continue
        bias = add.input[1] if add.input[0] == y else add.input[0]
        w = inits.get(node.input[1])
        if bias not in inits or w is None or list(inits[bias].dims) != [w.dims[1]]:
            continue
        if numpy_helper.to_array(inits[bias]).dtype != np.float32:
            continue
        inputs = list(node.input) + [""] * (4 - len(node.input))
        del node.input[:]
        node.input.extend(inputs[:4] + [bias])
        node.output[0] = add.output[0]
        folded.add(add.output[0])
    kept = [n for n in graph.node if not (n.op_type == "Add" and n.output[0] in folded)]
    del graph.node[:]
    graph.node.extend(kept)
    return len(folded)


def _rowwise_matmul(x: str, wq: str, ws: str, out: str, prefix: str, k: int, zero_point: int,
                    row_min: float | None = None):
    """x @ w with x quantized per row (one scale per token, u8 around the fixed `zero_point`,
    because ORT's MatMulInteger takes one zero point for A) and w per column: ReduceMax and
    ReduceMin (or the known bound `row_min`) -> a blocked QuantizeLinear (opset 21, one block per
    row) -> MatMulIntegerToFloat (int32 -> float and the column scales in the GEMM's epilogue) ->
    Mul by the row scales. Every node works on any leading shape ([B, S, K] or packed [T, K]), so
    unpad.py can move the site onto real tokens. The blocked QuantizeLinear replaced a per-axis
    one (axis 0 of a [B*S, K] reshape), which ORT 1.31 runs one row at a time on one thread:
    0.59 -> 0.24 ms at [4096, 384], 1.76 -> 1.50 ms at [4096, 1536], outputs identical."""
    from onnx import helper, numpy_helper

    def c(name, value, dtype):
        return numpy_helper.from_array(np.array(value, dtype), f"{prefix}/{name}")

    consts = [c("last", [-1], np.int64), c("floor", ROW_SCALE_FLOOR, np.float32),
              c("per_hi", 1 / (255 - zero_point), np.float32), c("zp", zero_point, np.uint8), c("one", 1.0, np.float32)]
    consts.append(c("per_lo", -1 / zero_point, np.float32) if row_min is None else
                  c("lo_scale", -row_min / zero_point, np.float32))
    n = lambda op, ins, outs, **kw: helper.make_node(op, ins,
                                                      outs, name=f"{prefix}/{outs[0].rsplit('/', 1)[-1]}", **kw)
    p = prefix
    nodes = [
        n("ReduceMax", [x, f"{p}/last"], [f"{p}/hi"], keepdims=1),
        n("Mul", [f"{p}/hi", f"{p}/per_hi"], [f"{p}/hi_scale"]),
        *([n("ReduceMin", [x, f"{p}/last"], [f"{p}/lo"], keepdims=1),
           n("Mul", [f"{p}/lo", f"{p}/per_lo"], [f"{p}/lo_scale"])] if row_min is None else []),
        n("Max", [f"{p}/hi_scale", f"{p}/lo_scale", f"{p}/floor"], [f"{p}/x_scale"]),
        # the blocked QuantizeLinear wants a zero point of the scale's shape
        n("Shape", [f"{p}/x_scale"], [f"{p}/rows"]),
        n("Expand", [f"{p}/zp", f"{p}/rows"], [f"{p}/zp_rows"]),
        n("QuantizeLinear", [x, f"{p}/x_scale", f"{p}/zp_rows"], [f"{p}/xq"], axis=-1, block_size=k),
        helper.make_node("MatMulIntegerToFloat", [f"{p}/xq", wq, f"{p}/one", ws, f"{p}/zp"], [f"{p}/y_cols"],
                         name=f"{p}/matmul", domain=MS_DOMAIN),
        helper.make_node("Mul", [f"{p}/y_cols", f"{p}/x_scale"], [out], name=f"{p}/scale_rows"),
    ]
    return nodes, consts


def _float_outputs(session) -> list[str]:
    return [o.name for o in session.get_outputs() if o.type in ("tensor(float)", "tensor(double)")]


def _min_cosine(model, feeds, reference: list[dict], threads=None) -> float:
    from .parity import row_cosines

    session = _session(model, threads)
    names = list(reference[0]) if reference else []
    worst = 1.0
    for feed, ref in zip(feeds, reference):
        for name, value in zip(names, session.run(names, feed)):
            if value.size:
                worst = min(worst, float(row_cosines(value, ref[name]).min()))
    return worst


def quantize_int8(model, feeds: Sequence[Mapping[str, np.ndarray]], *, target: float = 0.99, margin: float = 0.002,
                  alphas: Sequence[float] = (0.5, 0.75, 0.9), min_gain: float = 0.15, row_gain: float = 0.3,
                  threads: int | None = None,
                  progress: Callable[[str], None] = lambda _m: None) -> Transformed:
    """Dynamic int8 for every GEMM with constant weights, keeping the most sensitive ones in fp32
    until the minimum per-row cosine against fp32 on `feeds` is >= target + margin.

    `model` should be fused first: the `fuse()` output (the fp32 artifact), whose Q, K and V
    MatMuls quantize as three plain sites each, its opset-23 Attention staying fp32. Its
    unpadded layers (unpad.py's If) are quantized in their padded form and the int8 graph is
    unpadded again, so mixed-length batches skip their padding in int8 too. A
    `fuse(model, standard=False)` graph works as well: its Attention nodes become QAttention
    (all-MiniLM-L6-v2, both unpadded: 24/24 int8 with calibration min cosine 0.99535, against
    36/36 and 0.99573 in the standard form; equal speed on full batches, 15-18 % slower on the
    mixed 32 x 256 batch, where ORT's QAttention takes 47 ms per layer against 24 for the
    opset-23 op).
    `feeds` are calibration inputs (a varied corpus, batched); the final gate belongs to the
    caller.
    margin: measured on all-MiniLM-L6-v2 with 256 calibration texts, the minimum cosine over
    1,400 texts (the 1,200-string corpus + 200 sentences) fell up to 0.0017 below the
    calibration minimum (0.9908 vs 0.9919, every GEMM int8 with symmetric per-row
    activations). With per-site row zero points all 24 GEMMs pass at 0.9949 / 0.9944."""
    import onnx

    from . import graph as graph_mod
    from .unpad import inline_padded, unpadded_layers

    start = time.perf_counter()
    base = onnx.ModelProto()
    base.CopyFrom(model)
    inline_padded(base)
    _ensure_names(base)
    sites = find_sites(base)
    if not sites:
        raise ExportError("int8: the graph has no MatMul or Attention with constant weights to quantize")
    feeds = [f for f in feeds if all(np.asarray(v).size for v in f.values())]
    if not feeds:
        raise ExportError("int8: no calibration inputs; the recipe's validation cases are empty")
    stats = _calibrate(base, sites, feeds, threads)
    if not can_raise_opset(base, ROW_QUANTIZE_OPSET):
        row_gain = float("inf")  # per-row sites need opset 21: every site per tensor
    from onnx import numpy_helper

    inits = {i.name: i for i in base.graph.initializer}
    plans = [_plan_site(base, s, stats[s.x], numpy_helper.to_array(inits[s.w]).astype(np.float32), alphas, min_gain,
                        row_gain) for s in sites]
    fp32 = _session(base, threads)
    names = _float_outputs(fp32)
    reference = [dict(zip(names, fp32.run(names, f))) for f in feeds]
    order = [p.site.node for p in sorted(plans, key=lambda p: -p.error)]
    excluded: list[str] = []
    history = []
    while True:
        candidate = _build_int8(base, plans, set(excluded))
        worst = _min_cosine(candidate, feeds, reference, threads)
        history.append({"kept_fp32": len(excluded), "min_cosine": round(worst, 6)})
        progress(f"int8: {len(sites) - len(excluded)}/{len(sites)} GEMMs in int8, min cosine {worst:.5f}")
        if worst >= target + margin or len(excluded) == len(order):
            break
        excluded.append(order[len(excluded)])
    # ORT's int8 kernels die with SIGFPE on a zero-row batch (the fp32 graph returns [0, 384])
    guarded = graph_mod.guard_empty_batch(candidate)
    return Transformed(candidate, {
        "empty_batch_guard": guarded,
        "token_unpadding": unpadded_layers(candidate),
        "scheme": "dynamic int8: u8 activations per tensor (DynamicQuantizeLinear) or per token around a "
                  "fixed per-site zero point where that measurably helps, s8 weights per output channel, "
                  "symmetric; SmoothQuant-style per-channel smoothing where it measurably helps",
        "sites": len(sites), "int8": len(sites) - len(excluded), "kept_fp32": excluded,
        "target_min_cosine": target, "calibration_min_cosine": round(worst, 6),
        "calibration_batches": len(feeds), "search": history,
        "plans": [p.as_dict() for p in plans],
        "ops": fused_op_counts(candidate),
        "seconds": round(time.perf_counter() - start, 2),
    })


# --- what the gates use ---------------------------------------------------------------------

INT8_MIN_COSINE = 0.99
FP16_MIN_COSINE = 0.9995


def int8_tolerances(tolerances):
    """int8 is judged by cosine per row (>= 0.99) on every float output that has a cosine bar;
    absolute differences are not a meaningful bar for a lossy format (atol is left unbounded).
    Exact outputs (ids, labels) stay exact."""
    from .recipe import Tolerance

    return {name: tol if tol.exact or tol.min_cosine is None else
            Tolerance(atol=float("inf"), rtol=0.0, min_cosine=INT8_MIN_COSINE) for name, tol in tolerances.items()}


def fp16_tolerances(tolerances):
    from .recipe import Tolerance

    return {name: tol if tol.exact or tol.min_cosine is None else
            Tolerance(atol=float("inf"), rtol=0.0, min_cosine=FP16_MIN_COSINE) for name, tol in tolerances.items()}


def calibration_cases(recipe, limit: int | None = None):
    """Inputs to calibrate int8 on: the recipe's `calibration_cases()` when it has one; for text
    recipes the seeded Unicode corpus (exportable.text.corpus, >= 1,000 strings) in batches of
    32; else the validation cases. `limit` keeps that many batches, spread over the whole set."""
    from .recipe import Case
    from .textinput import TextInputs

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
    """The varied text corpus: exportable.text.corpus when present, else generated samples."""
    try:
        from .text.corpus import tokenizer_corpus
    except ImportError:
        from . import samples

        return samples.sentences(512, seed=5) + [samples.long_text(300, seed=s) for s in range(8)]
    return list(tokenizer_corpus())


def to_fp16(model) -> Transformed:
    """fp16 weights and compute for a GPU (exportable.half: fp32 inputs, outputs and edges; string
    and custom-domain nodes alone). Only worth it with the CUDA execution provider."""
    from .half import to_fp16 as half

    converted, detail = half(model)
    return Transformed(converted, detail)


# --- the export stages (api.export_recipe(optimize=..., quantize=...)) ------------------------

OPTIMIZED_FILE = "model.optimized.onnx"
INT8_FILE = "model.int8.onnx"
QUANTIZE_CHOICES = ("int8",)
CALIBRATION_BATCHES = 8  # 256 corpus texts: the search runs the model once per step on these


def _annotate(model, key: str, detail: dict) -> None:
    from . import graph

    keep = {k: v for k, v in detail.items() if k not in ("plans", "search", "rules")}
    graph.set_metadata(model, {key: json_safe(keep)})


def json_safe(value):
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def export_stages(recipe, folder: Path, report, cases, expected, *, quantize: str | None, stage,
                  progress: Callable[[str], None], threads: int | None = None) -> None:
    """After the artifact passed: write model.optimized.onnx (and model.int8.onnx), each
    verified against the original on the same cases; results go to report.parity under
    "onnx.optimized" / "onnx.int8", so a failure fails the export like any other format."""
    import onnx

    from . import graph, parity
    from .errors import InputError

    base = Path(folder) / "model.onnx"
    if not base.is_file():
        raise InputError("--optimize / --quantize work on the ONNX artifact; add onnx to --format")
    with stage("optimize:onnx") as st:
        fused = fuse(onnx.load(str(base)))
        _annotate(fused.model, "exportable.optimization", fused.detail)
        graph.save_single_file(fused.model, Path(folder) / OPTIMIZED_FILE)
        st.detail.update(json_safe(fused.detail))
        progress(f"optimize:onnx fused {fused.detail['fused_ops']}, {fused.detail['nodes_before']} -> "
                 f"{fused.detail['nodes_after']} nodes")
    with stage("verify:onnx.optimized") as st:
        results = parity.verify_cases(_load_or_fail(Path(folder) / OPTIMIZED_FILE, threads), recipe, "onnx",
                                      cases, expected)
        report.parity["onnx.optimized"] = results
        st.status = "ok" if all(r.passed for r in results) else "failed"
    if quantize is None:
        return
    if quantize not in QUANTIZE_CHOICES:
        raise InputError(f"--quantize {quantize!r}: choose from {', '.join(QUANTIZE_CHOICES)}")
    with stage("quantize:int8") as st:
        calibration = calibration_cases(recipe, limit=CALIBRATION_BATCHES)
        feeds = [recipe.feed(c, "onnx") for c in calibration]
        q = quantize_int8(fused.model, feeds, threads=threads, progress=progress)
        _annotate(q.model, "exportable.quantization", q.detail)
        graph.save_single_file(q.model, Path(folder) / INT8_FILE)
        st.detail.update(json_safe(q.detail))
    with stage("verify:onnx.int8") as st:
        tolerances = int8_tolerances(recipe.output_tolerances())
        results = parity.verify_cases(_load_or_fail(Path(folder) / INT8_FILE, threads), recipe, "onnx", cases,
                                      expected, tolerances)
        report.parity["onnx.int8"] = results
        st.detail["tolerances"] = json_safe({k: t.as_dict() for k, t in tolerances.items()})
        st.status = "ok" if all(r.passed for r in results) else "failed"


def _load_or_fail(path: Path, threads: int | None):
    """A session on a model this module wrote, or an ExportError naming the file (one line, no
    traceback): a transform that yields a graph ONNX Runtime refuses is a failed export."""
    from . import runtime

    try:
        return runtime.load(path, threads)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"{path.name} does not load in ONNX Runtime ({first}); export without "
                          "--optimize/--quantize, and report this graph") from exc


OPTIONAL_OUTPUTS = {("", "LayerNormalization"): 1, (MS_DOMAIN, "SkipLayerNormalization"): 1,
                    (MS_DOMAIN, "SkipSimplifiedLayerNormalization"): 1}


def drop_unused_outputs(model) -> int:
    """Unname the optional outputs nobody reads (mean, inv_std, the skip sum of
    SkipLayerNormalization): ONNX Runtime writes every named output."""
    graph = model.graph
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output} | subgraph_reads(graph)
    dropped = 0
    for node in graph.node:
        keep = OPTIONAL_OUTPUTS.get((node.domain, node.op_type))
        if keep is None:
            continue
        outputs = list(node.output)
        for i in range(keep, len(outputs)):
            if outputs[i] and outputs[i] not in used:
                outputs[i] = ""
                dropped += 1
        while len(outputs) > keep and not outputs[-1]:
            outputs.pop()
        del node.output[:]
        node.output.extend(outputs)
    return dropped



# ai.onnx ops whose meaning changed between opset 18 and 23 (GridSample's mode names, DFT's axis
# as an input, GroupNormalization's scale/bias shape): a graph holding one is not re-imported at 23.
CHANGED_SINCE_18 = {"DFT", "GridSample", "GroupNormalization"}
STANDARD_ATTENTION_OPSET = 23


def can_raise_opset(model, version: int) -> bool:
    """Whether the default domain can be re-imported at `version` without changing what the graph
    computes: from 18 on, the ops here kept their meaning (the listed ones did not)."""
    opset = next((o for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        return False
    return opset.version >= version or (opset.version >= 18 and not any(
        n.op_type in CHANGED_SINCE_18 and n.domain in ("", "ai.onnx") for n in model.graph.node))


def raise_opset(model, version: int) -> None:
    from . import graph as graph_mod

    opset = next(o for o in model.opset_import if o.domain in ("", "ai.onnx"))
    opset.version = max(opset.version, version)
    if any(p.key == "exportable.opset" for p in model.metadata_props):
        graph_mod.set_metadata(model, {"exportable.opset": str(opset.version)})


def standard_attention(model) -> int:
    """Fused com.microsoft Attention -> Q, K, V MatMuls + the standard ai.onnx Attention (opset
    23), in place; the default domain is re-imported at 23. Returns the nodes rewritten.

    Measured on this machine (ORT 1.31, 2 threads; docs/performance.md): in the ORT profile at
    32 x 16 tokens the contrib op takes 13.4-14.5 ms for 6 layers, its per-head QKV projection
    included; the opset-23 op 1.9 ms plus three 384-wide MatMuls. End to end (text in, seven
    interleaved A/B runs against the contrib graph): 32 x 16 tokens -4.2 % on average (-0.4 to
    -6.5 %), 32 x 128 -3.4 % (+0.2 to -5.8 %), batch 1 -1.9 % (+0.8 to -7 %).

    Biases, exactly: K's bias adds q.b_k to every score of a query row, which softmax ignores, so
    it is dropped; the softmax weights of a row sum to 1, so V's bias passes through attention
    unchanged and folds into the output projection's bias (b_o + b_v @ W_o) when that is a
    constant MatMul + Add, else it is added after the attention. Only Q keeps an Add."""
    from onnx import helper, numpy_helper

    from . import graph as graph_mod

    graph = model.graph
    if not can_raise_opset(model, STANDARD_ATTENTION_OPSET):
        return 0
    inits = {i.name: i for i in graph.initializer}
    readers = collections.defaultdict(list)
    for node in graph.node:
        for name in node.input:
            readers[name].append(node)
    nodes, new_inits, count = [], [], 0
    for node in graph.node:
        parts = _attention_parts(node, inits)
        if parts is None:
            nodes.append(node)
            continue
        x, w, b, attention_bias = parts
        name = node.name or f"attention_{count}"
        hidden = w.shape[1] // 3
        wq, wk, wv = (np.ascontiguousarray(w[:, i * hidden:(i + 1) * hidden]) for i in range(3))
        for suffix, value in (("w_q", wq), ("w_k", wk), ("w_v", wv), ("b_q", b[:hidden])):
            new_inits.append(numpy_helper.from_array(value.astype(np.float32), f"{name}/{suffix}"))
        nodes += [helper.make_node("MatMul", [x, f"{name}/w_q"], [f"{name}/q_nobias"], name=f"{name}/q_proj"),
                  helper.make_node("Add", [f"{name}/q_nobias", f"{name}/b_q"], [f"{name}/q"], name=f"{name}/q_bias"),
                  helper.make_node("MatMul", [x, f"{name}/w_k"], [f"{name}/k"], name=f"{name}/k_proj"),
                  helper.make_node("MatMul", [x, f"{name}/w_v"], [f"{name}/v"], name=f"{name}/v_proj")]
        heads = _attr(node, "num_heads")
        attrs = {"q_num_heads": heads, "kv_num_heads": heads}
        if _attr(node, "scale"):
            attrs["scale"] = _attr(node, "scale")
        b_v = b[2 * hidden:]
        out = node.output[0]
        folded = _fold_into_output_bias(out, b_v, readers, inits, name, new_inits)
        context = out if folded or not b_v.any() else f"{name}/context"
        nodes.append(helper.make_node("Attention", [f"{name}/q", f"{name}/k", f"{name}/v", attention_bias], [context],
                                      name=f"{name}/attention", **attrs))
        if context != out:
            new_inits.append(numpy_helper.from_array(b_v.astype(np.float32), f"{name}/b_v"))
            nodes.append(helper.make_node("Add", [context, f"{name}/b_v"], [out], name=f"{name}/v_bias"))
        count += 1
    if count:
        del graph.node[:]
        graph.node.extend(nodes)
        graph.initializer.extend(new_inits)
        raise_opset(model, STANDARD_ATTENTION_OPSET)
        drop_unused_initializers(model)
        # ORT's opset-23 kernel fails on zero rows ("Batch size must be greater than 0"), where
        # the contrib one returned [0, ...]: run an empty batch as one blank row instead.
        graph_mod.guard_empty_batch(model)
    return count


def _attention_parts(node, inits):
    """(x, W [D, 3H], bias [3H], attention_bias) of a contrib Attention the standard op can take:
    constant packed weights of three equal parts, an additive attention bias [B, 1|N, S, S] (the
    standard op requires the full query length there, as the contrib op does), no mask_index,
    no past, no causal or rotary variant."""
    from onnx import numpy_helper

    if node.op_type != "Attention" or node.domain != MS_DOMAIN or len(node.output) != 1:
        return None
    inputs = list(node.input) + [""] * 7
    x, w, b, mask_index, past, attention_bias, past_length = inputs[:7]
    sizes = _attr(node, "qkv_hidden_sizes")
    if (w not in inits or b not in inits or mask_index or past or past_length or not attention_bias
            or (sizes and len(set(sizes)) != 1) or _attr(node, "unidirectional", 0) or _attr(node, "do_rotary", 0)
            or _attr(node, "past_present_share_buffer", 0)):
        return None
    weights, bias = numpy_helper.to_array(inits[w]), numpy_helper.to_array(inits[b])
    if weights.ndim != 2 or weights.shape[1] % 3 or bias.shape != (weights.shape[1],):
        return None
    return x, weights, bias, attention_bias


def _fold_into_output_bias(context: str, b_v: np.ndarray, readers, inits, name: str, new_inits) -> bool:
    """b_o += b_v @ W_o when `context` feeds only a MatMul by a constant W_o whose only reader is
    an Add of a constant bias; the Add reads a new initializer (the old one may be shared)."""
    from onnx import numpy_helper

    if not b_v.any():
        return True
    matmuls = readers.get(context, [])
    if len(matmuls) != 1 or matmuls[0].op_type != "MatMul" or matmuls[0].input[0] != context:
        return False
    matmul = matmuls[0]
    adds = readers.get(matmul.output[0], [])
    if matmul.input[1] not in inits or len(adds) != 1 or adds[0].op_type != "Add":
        return False
    add = adds[0]
    slot = 1 if add.input[0] == matmul.output[0] else 0
    w_o = numpy_helper.to_array(inits[matmul.input[1]])
    if add.input[slot] not in inits or w_o.ndim != 2:
        return False
    b_o = numpy_helper.to_array(inits[add.input[slot]])
    if b_o.shape != (w_o.shape[1],):
        return False
    value = (b_o.astype(np.float64) + b_v.astype(np.float64) @ w_o.astype(np.float64)).astype(np.float32)
    new_inits.append(numpy_helper.from_array(value, f"{name}/out_bias"))
    add.input[slot] = f"{name}/out_bias"
    return True


def split_skip_layernorm(model) -> int:
    """SkipLayerNormalization -> Add(s) + LayerNormalization, in place.

    Measured on this machine (ORT 1.31, fp32, [32, 128, 384]): the contrib SkipLayerNormalization
    CPU kernel runs a scalar loop with a division per element (9.5 ms); Add + Add + the standard
    LayerNormalization (vectorized) take 3.3 ms for the same result (max diff 4e-6 before the
    final normalisation). We fuse with onnxscript, then undo this one fusion."""
    from onnx import helper

    nodes, count = [], 0
    for node in model.graph.node:
        if node.op_type != "SkipLayerNormalization" or node.domain != MS_DOMAIN or len(node.output) != 1:
            nodes.append(node)
            continue
        inputs = list(node.input) + [""] * 5
        x, skip, gamma, beta, bias = inputs[:5]
        name = node.name or f"skip_layernorm_{count}"
        # Sum, not Add: ONNX Runtime's SkipLayerNormFusion would turn Add + LayerNormalization back
        # into the slow kernel at session start. The bias gets its own Add: a 3-input Sum that
        # broadcasts the bias takes ORT's generic path (2.3 ms vs ~0.7 ms at [32, 128, 384]).
        if bias:
            nodes.append(helper.make_node("Add", [x, bias], [f"{name}/biased"], name=f"{name}/bias"))
            x = f"{name}/biased"
        nodes.append(helper.make_node("Sum", [x, skip], [f"{name}/sum"], name=f"{name}/sum"))
        ln_inputs = [f"{name}/sum", gamma] + ([beta] if beta else [])
        nodes.append(helper.make_node("LayerNormalization", ln_inputs, list(node.output), name=f"{name}/layernorm",
                                      axis=-1, epsilon=_attr(node, "epsilon", 1e-12), stash_type=1))
        count += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return count
