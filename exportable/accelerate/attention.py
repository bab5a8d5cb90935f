"""Fused com.microsoft Attention -> the standard ai.onnx Attention (opset 23)."""

from __future__ import annotations

import collections

import numpy as np
from onnx import helper, numpy_helper

from .. import graph as graph_mod
from ..graph import attribute as _attr
from ..graph import drop_unused_initializers
from .common import MS_DOMAIN

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
