"""int8 and int4 for the weights a decoding Loop's body reads from the outer graph.

A generation artifact (exportable.decoding) runs its captured decoder step inside an ONNX Loop,
and the step's weights are initializers of the outer graph that the body reads by name. The
encoder transforms (fusion.py, int8.py) see only the top graph; these see the body:

    sites = loop_weight_sites(model)      # every body MatMul whose B is an outer weight, or the
                                          # Transpose of one (an LM head tied to the embedding)
    quantize_loop_int8(model)             # -> DynamicQuantizeMatMul, s8 weights per column
    quantize_loop_int4(model)             # -> MatMulNBits (ORT's MatMulNBitsQuantizer), blocks of 32

The attention products (Q @ K^T, softmax @ V) read no weight and stay fp32. The tied LM head
(`Gather(wte, ids)` for the embedding, `MatMul(h, Transpose(wte))` for the logits) gets its own
quantized copy of wte^T; the Gather keeps the fp32 table. The quantized weights are outer
initializers too, so the file still holds each once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import ExportError
from ..graph import attribute, drop_unused_initializers
from .calibrate import quantize_weight
from .common import MS_DOMAIN, Transformed

INT4_BLOCK = 32


@dataclass(frozen=True)
class Site:
    """One body MatMul with a constant weight: `weight` names the outer initializer, [K, N] as
    read, or [N, K] when `transposed` (the body's Transpose of it is the MatMul's B)."""
    node: str
    weight: str
    transposed: bool


def loop_bodies(graph: onnx.GraphProto) -> list[onnx.GraphProto]:
    """The body graphs of `graph`'s Loop nodes (top level: where the decoding loop sits)."""
    return [a.g for n in graph.node if n.op_type == "Loop" for a in n.attribute if a.name == "body"]


def _is_plain_transpose(node: onnx.NodeProto) -> bool:
    return node.op_type == "Transpose" and list(attribute(node, "perm") or [1, 0]) == [1, 0]


def loop_weight_sites(model: onnx.ModelProto) -> list[tuple[onnx.GraphProto, Site]]:
    """(body, site) for every MatMul in a Loop body whose B is a 2-D outer initializer, directly
    or through a [1, 0] Transpose of one (in the body, or hoisted before the Loop by
    exportable.decoding so that ONNX Runtime folds it)."""
    outer = {i.name: i for i in model.graph.initializer if len(i.dims) == 2}
    found = []
    for body in loop_bodies(model.graph):
        local = {i.name for i in body.initializer} | {i.name for i in body.input}
        made_by = {o: n for n in (*model.graph.node, *body.node) for o in n.output}
        for node in body.node:
            if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx"):
                continue
            b = node.input[1]
            if b in outer and b not in local:
                found.append((body, Site(node.name, b, False)))
                continue
            producer = made_by.get(b)
            if producer is not None and _is_plain_transpose(producer) and producer.input[0] in outer:
                found.append((body, Site(node.name, producer.input[0], True)))
    return found


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    return m


def _sites_or_refuse(model: onnx.ModelProto, what: str) -> list[tuple[onnx.GraphProto, Site]]:
    for body in loop_bodies(model.graph):
        missing = [n for n in body.node if n.op_type == "MatMul" and not n.name]
        if missing:
            raise ExportError(f"{what}: a MatMul in the Loop body has no name; name the nodes before quantizing")
    sites = loop_weight_sites(model)
    if not sites:
        raise ExportError(f"{what}: no MatMul inside a Loop body reads a constant weight; this variant is for "
                          "generation artifacts (a decoding Loop around the step)")
    return sites


def _weight(inits: dict, site: Site) -> np.ndarray:
    """The weight as the MatMul reads it: [K, N]."""
    w = numpy_helper.to_array(inits[site.weight]).astype(np.float32)
    return np.ascontiguousarray(w.T) if site.transposed else w


def _ensure_opset(model: onnx.ModelProto, domain: str) -> None:
    if domain not in {o.domain for o in model.opset_import}:
        model.opset_import.append(helper.make_opsetid(domain, 1))


def quantize_loop_int8(model: onnx.ModelProto) -> Transformed:
    """Every body MatMul with a constant weight -> DynamicQuantizeMatMul (u8 activations per
    tensor, measured at run time; s8 weights per output column, symmetric): the scheme of
    int8.py's plain sites. One quantized copy per weight (a weight read by two sites, or read
    both as is and transposed, is quantized once per reading)."""
    start = time.perf_counter()
    m = _copy(model)
    sites = _sites_or_refuse(m, "int8")
    inits = {i.name: i for i in m.graph.initializer}
    made: dict[str, str] = {}
    for body, site in sites:
        name = f"{site.weight}/int8" + ("_t" if site.transposed else "")
        if name not in made:
            wq, scale = quantize_weight(_weight(inits, site))
            m.graph.initializer.extend([numpy_helper.from_array(wq, name),
                                        numpy_helper.from_array(scale, f"{name}/scale")])
            made[name] = site.node
        node = next(n for n in body.node if n.name == site.node)
        node.op_type, node.domain = "DynamicQuantizeMatMul", MS_DOMAIN
        del node.input[1:]
        node.input.extend([name, f"{name}/scale"])
    _drop_dead_transposes(m)
    _ensure_opset(m, MS_DOMAIN)
    drop_unused_initializers(m)
    return Transformed(m, {"scheme": "dynamic int8 inside the decoding Loop: u8 activations per tensor "
                                     "(DynamicQuantizeLinear), s8 weights per output column, symmetric",
                           "sites": len(sites), "int8": len(sites), "kept_fp32": [],
                           "tied_lm_head": any(s.transposed for _, s in sites),
                           "seconds": round(time.perf_counter() - start, 2)})


def quantize_loop_int4(model: onnx.ModelProto, block_size: int = INT4_BLOCK, symmetric: bool = True) -> Transformed:
    """Every body MatMul with a constant weight -> MatMulNBits (4-bit weights in blocks of
    `block_size` along K, one fp32 scale per block; activations stay fp32), by ONNX Runtime's
    MatMulNBitsQuantizer. It reads weights through the graph stack, so it finds the outer ones;
    a transposed (tied) weight is first made an initializer of its own, [K, N]."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer  # noqa: PLC0415  (heavy)

    start = time.perf_counter()
    m = _copy(model)
    sites = _sites_or_refuse(m, "int4")
    inits = {i.name: i for i in m.graph.initializer}
    for body, site in sites:
        if site.transposed:
            name = f"{site.weight}/t"
            if name not in inits:
                inits[name] = numpy_helper.from_array(_weight(inits, site), name)
                m.graph.initializer.append(inits[name])
            node = next(n for n in body.node if n.name == site.node)
            node.input[1] = name
    _drop_dead_transposes(m)
    _dedupe_opsets(m)
    quantizer = MatMulNBitsQuantizer(m, block_size=block_size, is_symmetric=symmetric,
                                     nodes_to_include=[s.node for _, s in sites])
    chatter = logging.getLogger(MatMulNBitsQuantizer.__module__)  # an INFO line for every node it skips
    level = chatter.level
    chatter.setLevel(logging.WARNING)
    try:
        quantizer.process()
    finally:
        chatter.setLevel(level)
    out = quantizer.model.model
    drop_unused_initializers(out)
    counted = sum(n.op_type == "MatMulNBits" for body in loop_bodies(out.graph) for n in body.node)
    if counted != len(sites):
        raise ExportError(f"int4: MatMulNBitsQuantizer replaced {counted} of the {len(sites)} weight MatMuls in the "
                          "decoding Loop; export without onnx-int4, and report this graph")
    return Transformed(out, {"scheme": f"4-bit weights (MatMulNBits), blocks of {block_size} along K, "
                                       f"{'symmetric' if symmetric else 'asymmetric'}, fp32 activations",
                             "sites": len(sites), "int4": counted, "block_size": block_size,
                             "tied_lm_head": any(s.transposed for _, s in sites),
                             "seconds": round(time.perf_counter() - start, 2)})


def _drop_dead_transposes(model: onnx.ModelProto) -> None:
    """The Transposes of tied weights that no node reads any more (their MatMul reads its own
    quantized copy)."""
    graphs = [model.graph, *loop_bodies(model.graph)]
    read = {i for g in graphs for n in g.node for i in n.input} | {o.name for g in graphs for o in g.output}
    for graph in graphs:
        dead = [n for n in graph.node if _is_plain_transpose(n) and n.output[0] not in read]
        for node in dead:
            graph.node.remove(node)


def _dedupe_opsets(model: onnx.ModelProto) -> None:
    """One opset_import per domain (merging graphs can repeat one): ORT's quantization tools look
    up the ai.onnx version and fail with "Failed to find proper ai.onnx domain" on repeats."""
    versions: dict[str, int] = {}
    for o in model.opset_import:
        versions[o.domain] = max(versions.get(o.domain, 0), o.version)
    del model.opset_import[:]
    model.opset_import.extend(helper.make_opsetid(d, v) for d, v in versions.items())
