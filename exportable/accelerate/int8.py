"""Accuracy-aware dynamic int8 (`quantize_int8`).

u8 activations per tensor, or per token around a per-site zero point, s8 weights per output
channel, for MatMul and the fused Attention (-> QAttention): every candidate node's
quantization error is *measured* on the calibration feeds (calibrate.py), and nodes are kept in
fp32, most sensitive first, until the minimum per-row cosine against fp32 reaches the target.
See docs/performance.md for the measurements behind the defaults.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .. import graph as graph_mod
from ..errors import ExportError
from ..graph import attribute as _attr
from ..graph import drop_unused_initializers
from ..parity import row_cosines
from .attention import can_raise_opset, raise_opset
from .calibrate import (
    ROW_QUANTIZE_OPSET,
    ROW_SCALE_FLOOR,
    Plan,
    calibrate,
    cpu_session,
    ensure_node_names,
    find_sites,
    fold_v_target,
    plan_site,
    plan_static_site,
    quantize_weight,
)
from .common import MS_DOMAIN, Transformed, fused_op_counts
from .unpad import inline_padded, unpad_tokens, unpadded_layers


def _mask_index_nodes(bias: str, prefix: str):
    """[B, S] int32 key mask for QAttention from an additive bias [B, 1, S, S] that is 0 where a
    key is kept (dynamo's SDPA mask: Where(mask, 0, -inf)); parity gates the assumption."""
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


def _build_int8(model, plans: Sequence[Plan], excluded: set[str]):
    """A copy of `model` with every planned site not in `excluded` in int8."""


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
            att = fold_v_target(m, p.site.x)
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
        wq, ws = quantize_weight(weights[node.name])
        prefix = f"{node.name}/int8"
        new_inits += [numpy_helper.from_array(wq, f"{prefix}/w"), numpy_helper.from_array(ws, f"{prefix}/w_scale")]
        x = inputs_of[node.name]
        if plan.static_range is not None:
            extra, consts = static_matmul(x, f"{prefix}/w", f"{prefix}/w_scale", node.output[0], prefix,
                                          plan.static_range)
            nodes.extend(extra)
            new_inits.extend(consts)
            continue
        if plan.site.kind == "matmul" and plan.rows:
            extra, consts = rowwise_matmul(x, f"{prefix}/w", f"{prefix}/w_scale", node.output[0], prefix,
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


# The bias input of the int8 GEMMs that take one (added after the scales, in the epilogue).
BIAS_SLOT = {"DynamicQuantizeMatMul": 4, "MatMulIntegerToFloat": 6}


def fold_bias_into_dynamic_matmul(model) -> int:
    """DynamicQuantizeMatMul (or a static site's MatMulIntegerToFloat) -> Add(constant [N] bias)
    becomes one node with its bias input: the kernel adds it in the GEMM's epilogue instead of a
    pass over [M, N] (the out-projection and FFN2 biases that split_skip_layernorm leaves as
    Adds). A per-row site's MatMulIntegerToFloat is followed by its row-scale Mul, not an Add."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    readers = collections.defaultdict(list)
    for node in graph.node:
        for name in node.input:
            readers[name].append(node)
    outputs = {o.name for o in graph.output}
    folded = set()
    for node in graph.node:
        slot = BIAS_SLOT.get(node.op_type)
        if slot is None or node.domain != MS_DOMAIN or (len(node.input) > slot and node.input[slot]):
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
        inputs = list(node.input) + [""] * (slot - len(node.input))
        del node.input[:]
        node.input.extend(inputs[:slot] + [bias])
        node.output[0] = add.output[0]
        folded.add(add.output[0])
    kept = [n for n in graph.node if not (n.op_type == "Add" and n.output[0] in folded)]
    del graph.node[:]
    graph.node.extend(kept)
    return len(folded)


def static_matmul(x: str, wq: str, ws: str, out: str, prefix: str, x_range: tuple[float, float]):
    """x @ w with x quantized by one scale and zero point fixed at calibration (static int8: u8
    over the calibrated range, clipped outside it) and w per column: QuantizeLinear ->
    MatMulIntegerToFloat. No pass over x finds its range at run time, as DynamicQuantizeMatMul's
    does; the same rounding as calibrate.simulated_error's per-tensor branch."""
    lo, hi = x_range
    scale = (hi - lo) / 255.0 or 1.0
    zero_point = int(np.clip(np.round(-lo / scale), 0, 255))
    consts = [numpy_helper.from_array(np.array(scale, np.float32), f"{prefix}/x_scale"),
              numpy_helper.from_array(np.array(zero_point, np.uint8), f"{prefix}/x_zp")]
    nodes = [helper.make_node("QuantizeLinear", [x, f"{prefix}/x_scale", f"{prefix}/x_zp"], [f"{prefix}/xq"],
                              name=f"{prefix}/quantize"),
             helper.make_node("MatMulIntegerToFloat", [f"{prefix}/xq", wq, f"{prefix}/x_scale", ws, f"{prefix}/x_zp"],
                              [out], name=f"{prefix}/matmul", domain=MS_DOMAIN)]
    return nodes, consts


def rowwise_matmul(x: str, wq: str, ws: str, out: str, prefix: str, k: int, zero_point: int,
                    row_min: float | None = None):
    """x @ w with x quantized per row (one scale per token, u8 around the fixed `zero_point`,
    because ORT's MatMulInteger takes one zero point for A) and w per column: ReduceMax and
    ReduceMin (or the known bound `row_min`) -> a blocked QuantizeLinear (opset 21, one block per
    row) -> MatMulIntegerToFloat (int32 -> float and the column scales in the GEMM's epilogue) ->
    Mul by the row scales. Every node works on any leading shape ([B, S, K] or packed [T, K]), so
    unpad.py can move the site onto real tokens. The blocked QuantizeLinear replaced a per-axis
    one (axis 0 of a [B*S, K] reshape), which ORT 1.31 runs one row at a time on one thread:
    0.59 -> 0.24 ms at [4096, 384], 1.76 -> 1.50 ms at [4096, 1536], outputs identical."""
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

    session = cpu_session(model, threads)
    names = list(reference[0]) if reference else []
    worst = 1.0
    for feed, ref in zip(feeds, reference):
        for name, value in zip(names, session.run(names, feed)):
            if value.size:
                worst = min(worst, float(row_cosines(value, ref[name]).min()))
    return worst


DYNAMIC_SCHEME = ("dynamic int8: u8 activations per tensor (DynamicQuantizeLinear) or per token around a "
                  "fixed per-site zero point where that measurably helps, s8 weights per output channel, "
                  "symmetric; SmoothQuant-style per-channel smoothing where it measurably helps")
STATIC_SCHEME = ("static int8: u8 activations per tensor with the scale and zero point fixed from the "
                 "calibration range, s8 weights per output channel, symmetric; SmoothQuant-style "
                 "per-channel smoothing where it measurably helps")


def _search(base, plans: Sequence[Plan], feeds, bar: float, threads, progress):
    """Build the int8 graph, and keep the sites in fp32 one at a time, largest simulated error
    first, until its minimum per-row cosine against fp32 on `feeds` reaches `bar`:
    (graph, the sites kept in fp32, the search's steps)."""
    fp32 = cpu_session(base, threads)
    names = _float_outputs(fp32)
    reference = [dict(zip(names, fp32.run(names, f))) for f in feeds]
    order = [p.site.node for p in sorted(plans, key=lambda p: -p.error)]
    excluded: list[str] = []
    history = []
    while True:
        candidate = _build_int8(base, plans, set(excluded))
        worst = _min_cosine(candidate, feeds, reference, threads)
        history.append({"kept_fp32": len(excluded), "min_cosine": round(worst, 6)})
        progress(f"int8: {len(plans) - len(excluded)}/{len(plans)} GEMMs in int8, min cosine {worst:.5f}")
        if worst >= bar or len(excluded) == len(order):
            return candidate, excluded, history
        excluded.append(order[len(excluded)])


def quantize_int8(model, feeds: Sequence[Mapping[str, np.ndarray]], *, target: float = 0.99, margin: float = 0.002,
                  alphas: Sequence[float] = (0.5, 0.75, 0.9), min_gain: float = 0.15, row_gain: float = 0.3,
                  threads: int | None = None, static: bool = False,
                  range_feeds: Sequence[Mapping[str, np.ndarray]] | None = None,
                  progress: Callable[[str], None] = lambda _m: None) -> Transformed:
    """Dynamic int8 for every GEMM with constant weights, keeping the most sensitive ones in fp32
    until the minimum per-row cosine against fp32 on `feeds` is >= target + margin.

    static: every MatMul's activations take one scale and zero point fixed from the calibration
    range (QuantizeLinear -> MatMulIntegerToFloat) instead of measuring the range per call; the
    same search keeps the sites that this hurts most in fp32. `range_feeds` (default `feeds`):
    the inputs the activation statistics (and so a static range) come from; the search runs on
    `feeds`.

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
    start = time.perf_counter()
    base = onnx.ModelProto()
    base.CopyFrom(model)
    inline_padded(base)
    ensure_node_names(base)
    sites = [s for s in find_sites(base) if not static or s.kind == "matmul"]
    if not sites:
        raise ExportError("int8: the graph has no MatMul or Attention with constant weights to quantize")
    feeds = [f for f in feeds if all(np.asarray(v).size for v in f.values())]
    if not feeds:
        raise ExportError("int8: no calibration inputs; the recipe's validation cases are empty")
    stats = calibrate(base, sites, [f for f in (range_feeds or feeds) if all(np.asarray(v).size for v in f.values())],
                      threads)
    if not can_raise_opset(base, ROW_QUANTIZE_OPSET):
        row_gain = float("inf")  # per-row sites need opset 21: every site per tensor
    inits = {i.name: i for i in base.graph.initializer}
    weights = {s.w: numpy_helper.to_array(inits[s.w]).astype(np.float32) for s in sites}
    plans = [plan_static_site(base, s, stats[s.x], weights[s.w], alphas, min_gain) if static else
             plan_site(base, s, stats[s.x], weights[s.w], alphas, min_gain, row_gain) for s in sites]
    candidate, excluded, history = _search(base, plans, feeds, target + margin, threads, progress)
    worst = history[-1]["min_cosine"]
    # ORT's int8 kernels die with SIGFPE on a zero-row batch (the fp32 graph returns [0, 384])
    guarded = graph_mod.guard_empty_batch(candidate)
    return Transformed(candidate, {
        "empty_batch_guard": guarded,
        "token_unpadding": unpadded_layers(candidate),
        "scheme": STATIC_SCHEME if static else DYNAMIC_SCHEME,
        "sites": len(sites), "int8": len(sites) - len(excluded), "kept_fp32": excluded,
        "target_min_cosine": target, "calibration_min_cosine": round(worst, 6),
        "calibration_batches": len(feeds), "search": history,
        "plans": [p.as_dict() for p in plans],
        "ops": fused_op_counts(candidate),
        "seconds": round(time.perf_counter() - start, 2),
    })
