"""Run a transformer's per-token layers on the real tokens only (issue 10: "doing less work").

A padded batch [B, S] spends most of its GEMMs on padding when lengths differ: the mixed-length
bench batch of 32 texts is 1,234 real tokens in 32 x 256 slots (85 % padding), and
`SentenceTransformer.encode` pays for all of them. Every op of a BERT layer except the attention
itself works on each token alone (the projections, bias adds, residual sums, LayerNorm, GELU), so
`unpad_tokens` runs them on a packed [T, D] matrix of the real tokens and scatters them into
padded rows only where the attention needs them: the opset-23 attention per length bucket (the
texts longer than half the padded width, and the rest, each padded to its own longest text),
QAttention on [B, S, D]. Token rows compute the same sums as before, so the answers match the
padded graph (the pad rows come back as zeros, which masked pooling ignores; parity on every
validation case gates the result). The int8 graph's ops are per token too (quantize_int8 unpads
its candidates).

With little or no padding the gathers are pure overhead, so the graph decides per call: an `If`
runs the packed layers only when at least PACK_MIN_PADDING of the slots are padding, and the
untouched padded layers otherwise (measured numbers in docs/performance.md). Both branches read
the same weights from the outer graph: nothing is stored twice.
"""

from __future__ import annotations

import copy

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from ..graph import attribute as _attr
from . import chunks
from .buckets import PREFIX, bucket_nodes, bucketed_attention, int_const
from .chunks import PREFIX as CHUNKS_PREFIX
from .chunks import unwrap

MS_DOMAIN = "com.microsoft"
STANDARD = ("", "ai.onnx")
# Below this share of padding the packed branch's gathers cost more than the GEMM rows they save.
PACK_MIN_PADDING = (1, 8)  # numerator, denominator
ELEMENTWISE = {"Add", "Sum", "Mul", "Max"}
# GEMMs with a constant [K, N] weight as input 1, per token on input 0 (the int8 graph's too)
WEIGHTED = {("", "MatMul"), (MS_DOMAIN, "DynamicQuantizeMatMul"), (MS_DOMAIN, "MatMulIntegerToFloat"),
            (MS_DOMAIN, "QAttention")}


def _is_attention(node) -> bool:
    """The attentions the packed branch pads for: the standard opset-23 op (Q, K, V in) and the
    int8 graph's QAttention (the quantized layer input in, QKV projected inside)."""
    return ((node.op_type == "Attention" and (node.domain or "") in STANDARD)
            or (node.op_type == "QAttention" and node.domain == MS_DOMAIN))


def _padded_inputs(node) -> tuple[int, ...]:
    return (0,) if node.op_type == "QAttention" else (0, 1, 2)


def unpad_tokens(model) -> int:
    """Rewrite the layers between the first attention's input and the pooling so that they run
    on real tokens only when a batch is padded. Needs standard (opset-23) Attention nodes that
    share one additive attention bias [B, 1|N, S, S] (0 where a key is kept), or the int8 graph's
    QAttention nodes sharing one key mask made from such a bias (optimize._mask_index_nodes).
    Returns the number of attention layers moved into the packed branch (0: graph untouched).

    In the int8 graph the per-tensor activation scales (DynamicQuantizeLinear, and inside
    DynamicQuantizeMatMul) then come from the real tokens only; quantize_int8 measures its
    accuracy on the result."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    attentions = [n for n in graph.node if _is_attention(n)]
    others = [n for n in graph.node if n.op_type in ("Attention", "MultiHeadAttention") and not _is_attention(n)]
    if not attentions or others:
        return 0
    masks = {_mask_input(n) for n in attentions} - {""}
    sources = {_mask_source(graph, n) for n in attentions}
    if len(sources) != 1 or None in sources:
        return 0
    bias, keep = sources.pop()
    seed = _layer_input(graph, attentions[0], inits)
    if seed is None:
        return 0
    region = _per_token_region(graph, seed, masks, inits)
    if not all(any(n is r for r in region) for n in attentions):
        return 0
    outputs = _region_outputs(graph, region)
    if not outputs:
        return 0
    widths = _widths(region, inits)
    attention_io = [t for a in attentions for t in ([a.input[i] for i in _padded_inputs(a)] + [a.output[0]])]
    if any(t not in widths for t in (seed, *outputs, *attention_io)):
        return 0
    _rebuild(model, region, seed, bias, keep, outputs, widths)
    return len(attentions)


def _mask_input(node) -> str:
    index = 5 if node.op_type == "QAttention" else 3
    return node.input[index] if len(node.input) > index else ""


def _mask_source(graph, attention):
    """(bias, keep): the additive bias [B, 1|N, S, S] the attention's mask comes from, and the
    graph's own bool token mask [B, S] if it has one. The opset-23 op reads the bias directly;
    QAttention reads Where(keep = Equal(Squeeze(Slice(bias)), 0), 1, 0), its key mask
    (optimize._mask_index_nodes), and the packed branch reuses that `keep` (recomputing it made
    ONNX Runtime's common-subexpression pass warn "Implicit input name ... cannot be safely
    updated" at every session start)."""
    mask = _mask_input(attention)
    if not mask:
        return None
    if attention.op_type == "Attention":
        return (mask, None) if len([i for i in attention.input if i]) == 4 else None
    node, keep = _producer(graph, mask), None
    for op in ("Where", "Equal", "Squeeze", "Slice"):
        if node is None or node.op_type != op:
            return None
        if op == "Equal":
            keep = node.output[0]
        if op == "Slice":
            return node.input[0], keep
        node = _producer(graph, node.input[0])
    return None


def _producer(graph, name):
    return next((n for n in graph.node if name in n.output), None)


# what lies between a layer's input and its attention: the projection (MatMul + bias Add) and, in
# int8 graphs, the quantizing ops, the row-scale and smoothing Muls
PROJECTION_CHAIN = {"Add", "Mul", "MatMul", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QuantizeLinear",
                    "DynamicQuantizeLinear"}


def _layer_input(graph, attention, inits):
    """The tensor the first attention's query projection reads: walk back from the attention's
    first input through PROJECTION_CHAIN to the first tensor something else produced (the
    embeddings' LayerNorm). Whether the layers really are per token from there is checked by
    the region that grows from it."""
    name, steps = attention.input[0], 0
    while True:
        node = _producer(graph, name)
        if node is None or node.op_type not in PROJECTION_CHAIN:
            return name if steps else None
        name = next((i for i in node.input if i and i not in inits), None)
        if name is None:
            return None
        steps += 1


def _broadcasts_per_token(init) -> bool:
    """A constant that an elementwise op applies alike to every token: [D], [1, D], [1, 1, D]."""
    dims = list(init.dims)
    return all(d == 1 for d in dims[:-1])


def _per_token_region(graph, seed, masks, inits):
    """The nodes downstream of `seed` that treat each token alone, plus the attentions (which
    read the shared mask and are padded for), in graph order."""
    tensors, shapes, region = {seed}, set(), []
    readers = {}
    for node in graph.node:
        for i in node.input:
            readers.setdefault(i, []).append(node)
    for node in graph.node:
        reads = [i for i in node.input if i]
        if not any(i in tensors or i in shapes for i in reads):
            continue
        if node.op_type == "Shape" and _row_shape(node, tensors, readers.get(node.output[0], []), inits):
            region.append(node)
            shapes.add(node.output[0])
            continue
        if not _token_wise(node, reads, tensors, shapes, masks, inits):
            continue
        region.append(node)
        tensors.update(o for o in node.output if o)
    return region


def _row_shape(node, tensors, readers, inits) -> bool:
    """Shape(x) read only to Expand a scalar constant to x's shape (the per-row zero point of the
    int8 graph's blocked QuantizeLinear): the same on [B, S, 1] and on packed [T, 1]."""
    return (node.input[0] in tensors and not node.attribute and bool(readers)
            and all(r.op_type == "Expand" and r.input[0] in inits and not inits[r.input[0]].dims for r in readers))


def _token_wise(node, reads, tensors, shapes, masks, inits) -> bool:
    op, domain = node.op_type, node.domain or ""
    standard = domain in STANDARD

    def constant_or_region(names):
        return all(i in tensors or i in inits for i in names if i)

    if standard and op == "Attention":
        return (len(node.output) == 1 and all(i in tensors for i in node.input[:3]) and node.input[3] in masks
                and len([i for i in node.input if i]) == 4)
    if domain == MS_DOMAIN and op == "QAttention":
        ins = list(node.input) + [""] * 8
        return (len([o for o in node.output if o]) == 1 and ins[0] in tensors and ins[5] in masks
                and _weight_2d(ins[1], inits) and constant_or_region([ins[i] for i in (2, 3, 4, 6, 7)]))
    if (domain, op) in WEIGHTED:
        return (node.input[0] in tensors and _weight_2d(node.input[1], inits)
                and constant_or_region(node.input[2:]))
    if standard and op == "DynamicQuantizeLinear":
        return node.input[0] in tensors
    if standard and op == "QuantizeLinear":  # per tensor, or blocked along the last axis (per row)
        scale = node.input[1]
        blocked = _attr(node, "block_size") is not None and _attr(node, "axis") == -1
        per_tensor = scale in inits and not inits[scale].dims
        return node.input[0] in tensors and constant_or_region(node.input[1:]) and (blocked or per_tensor)
    if standard and op in ("ReduceMax", "ReduceMin"):  # over the features of each token
        axes = node.input[1] if len(node.input) > 1 else ""
        return (node.input[0] in tensors and axes in inits and _ints(inits[axes]) == [-1]
                and _attr(node, "keepdims", 1) == 1)
    if standard and op == "Expand":
        return node.input[0] in inits and not inits[node.input[0]].dims and node.input[1] in shapes
    if standard and op in ELEMENTWISE:
        return all(i in tensors or (i in inits and _broadcasts_per_token(inits[i])) for i in reads)
    if standard and op == "LayerNormalization":
        return (_attr(node, "axis", -1) == -1 and node.input[0] in tensors and all(i in inits for i in reads[1:])
                and len([o for o in node.output if o]) == 1)
    if domain == MS_DOMAIN and op in ("BiasGelu", "FastGelu", "Gelu"):
        return node.input[0] in tensors and all(i in inits for i in reads[1:])
    return False


def _weight_2d(name, inits) -> bool:
    return name in inits and len(inits[name].dims) == 2


def _ints(init) -> list[int]:

    return numpy_helper.to_array(init).reshape(-1).tolist()


def _widths(region, inits) -> dict[str, int]:
    """The last dim of each region tensor, from the weights: a GEMM's input has its weight's rows
    and its output the columns (QAttention's: a third of them); an elementwise op, LayerNorm,
    GELU or quantization keeps its first input's; a per-row reduction has 1; an attention outputs
    its V's. Inputs that reach a GEMM only through width-keeping ops (the int8 graph's smoothing
    Mul and DynamicQuantizeLinear) get theirs from the other side."""
    widths = {}
    weighted = {id(node) for node in region if ((node.domain or ""), node.op_type) in WEIGHTED}
    for node in region:
        if id(node) in weighted:
            widths.setdefault(node.input[0], inits[node.input[1]].dims[0])

    def keeps_width(node):
        return id(node) not in weighted and node.op_type not in ("ReduceMax", "ReduceMin", "Expand", "Shape",
                                                                    "Attention")

    def forward():
        for node in region:
            if id(node) in weighted:
                width = inits[node.input[1]].dims[1] // (3 if node.op_type == "QAttention" else 1)
            elif node.op_type in ("ReduceMax", "ReduceMin", "Expand"):
                width = 1
            elif node.op_type == "Shape":
                continue
            else:
                width = widths.get(node.input[2] if node.op_type == "Attention" else node.input[0])
            if width is not None and node.output[0]:
                widths[node.output[0]] = width

    forward()
    for node in reversed(region):
        if keeps_width(node) and node.output[0] in widths:
            widths.setdefault(node.input[0], widths[node.output[0]])
    forward()
    return widths


def _region_outputs(graph, region):
    """Region tensors read outside it (the pooling's input), in a stable order."""
    inside = {id(n) for n in region}
    read_outside = {i for n in graph.node if id(n) not in inside for i in n.input}
    read_outside |= {o.name for o in graph.output}
    produced = [o for n in region for o in n.output if o]
    return [t for t in produced if t in read_outside]


def _rebuild(model, region, seed, bias, keep, outputs, widths) -> None:

    graph = model.graph
    p = PREFIX
    num, den = PACK_MIN_PADDING
    consts = {f"{p}/flat": np.array([-1], np.int64), f"{p}/num": np.array(den - num, np.int64),
              f"{p}/den": np.array(den, np.int64), f"{p}/pad_row": np.array([0, 0, 1, 0], np.int64)}
    if not keep:
        consts.update({f"{p}/first": np.array([0, 0], np.int64), f"{p}/second": np.array([1, 1], np.int64),
                       f"{p}/axes": np.array([1, 2], np.int64), f"{p}/zero": np.array(0, np.float32)})
    n = helper.make_node
    # Which slots hold a real token: the bias row of query 0 is 0 exactly where a key is kept
    # (dynamo's SDPA mask, Where(mask, 0, min)); for BERT's padding mask that is the token mask.
    head = [] if keep else [
        n("Slice", [bias, f"{p}/first", f"{p}/second", f"{p}/axes"], [f"{p}/row"], name=f"{p}/row"),
        n("Squeeze", [f"{p}/row", f"{p}/axes"], [f"{p}/row2"], name=f"{p}/row2"),
        n("Equal", [f"{p}/row2", f"{p}/zero"], [f"{p}/keep2"], name=f"{p}/keep2"),
    ]
    keep = keep or f"{p}/keep2"
    head += [
        n("Cast", [keep], [f"{p}/keep_i2"], name=f"{p}/keep_i2", to=TensorProto.INT64),
        n("ReduceSum", [f"{p}/keep_i2"], [f"{p}/tokens0"], name=f"{p}/tokens0", keepdims=0),
        n("Size", [keep], [f"{p}/slots"], name=f"{p}/slots"),
        # pack only when at least num/den of the slots are padding: tokens * den <= slots * (den - num)
        n("Mul", [f"{p}/tokens0", f"{p}/den"], [f"{p}/lhs"], name=f"{p}/lhs"),
        n("Mul", [f"{p}/slots", f"{p}/num"], [f"{p}/rhs"], name=f"{p}/rhs"),
        n("LessOrEqual", [f"{p}/lhs", f"{p}/rhs"], [f"{p}/padded_enough"], name=f"{p}/padded_enough"),
        # ...and never with no real token at all (the empty-batch guard's blank row of an ids-in
        # graph): ORT's ReduceMax/QuantizeLinear of the int8 graph fail on zero rows
        n("Greater", [f"{p}/tokens0", int_const(consts, 0)], [f"{p}/some_tokens"], name=f"{p}/some_tokens"),
        n("And", [f"{p}/padded_enough", f"{p}/some_tokens"], [f"{p}/pack"], name=f"{p}/pack"),
    ]
    then_graph = _packed_branch(region, seed, keep, outputs, widths, consts)
    chunk_loop, else_graph = _padded_branch(region, seed, outputs, {i.name for i in graph.initializer}, consts,
                                            f"{p}/pack")
    head += chunk_loop
    head.append(n("If", [f"{p}/pack"], list(outputs), name=f"{p}/if", then_branch=then_graph,
                  else_branch=else_graph))
    inside = {id(x) for x in region}
    first_reader = next((i for i, x in enumerate(graph.node) if id(x) not in inside
                         and any(t in outputs for t in x.input)), len(graph.node))
    kept = [x for x in graph.node[:first_reader] if id(x) not in inside]
    rest = [x for x in graph.node[first_reader:] if id(x) not in inside]
    del graph.node[:]
    graph.node.extend(kept + head + rest)
    graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items())


def _packed_branch(region, seed, keep, outputs, widths, consts):
    """The region on [T, D] rows: gather the real tokens of `seed`, pad only the attention's
    inputs (per length bucket for the opset-23 op), gather its context back, and pad the region's
    outputs to [B, S, D] at the end."""


    p, q = PREFIX, f"{PREFIX}/packed"
    n = helper.make_node
    rename = {seed: f"{q}/{seed}"}
    nodes = _token_index_nodes(seed, keep, consts)
    if any(node.op_type == "Attention" for node in region):
        nodes += bucket_nodes(keep, consts)
    nodes += [n("Reshape", [seed, int_const(consts, [-1, widths[seed]])], [f"{q}/{seed}/rows"], name=f"{q}/seed_rows"),
              n("Gather", [f"{q}/{seed}/rows", f"{p}/index"], [f"{q}/{seed}"], name=f"{q}/seed_gather", axis=0)]

    def pad(name, to, width):
        # The width is a constant on purpose: ONNX Runtime's shape inference of the opset-23
        # Attention on Q/K/V of unknown dims gets the output width wrong, and the If then fails
        # to load ("Incompatible dimensions for matrix multiplication" at the next MatMul).
        nodes.extend([
            n("Pad", [name, f"{p}/pad_row"], [f"{to}/with_zero_row"], name=f"{to}/zero_row"),
            n("Gather", [f"{to}/with_zero_row", f"{p}/inverse"], [f"{to}/slots"], name=f"{to}/scatter", axis=0),
            n("Concat", [f"{p}/lead", int_const(consts, [width])], [f"{to}/shape"], name=f"{to}/shape", axis=0),
            n("Reshape", [f"{to}/slots", f"{to}/shape"], [to], name=f"{to}/reshape"),
        ])

    for node in region:
        clone = copy.deepcopy(node)
        clone.name = f"{q}/{node.name or node.output[0]}"
        inputs = [rename.get(i, i) for i in node.input]
        if node.op_type == "Attention":  # the opset-23 op: per length bucket (buckets.bucket_nodes)
            nodes.extend(bucketed_attention(clone, inputs, node, widths, consts))
            rename[node.output[0]] = f"{q}/{node.output[0]}"
            continue
        if _is_attention(node):
            for j in _padded_inputs(node):
                padded = f"{inputs[j]}/padded"
                pad(inputs[j], padded, widths[node.input[j]])
                inputs[j] = padded
            context = f"{q}/{node.output[0]}"
            clone.input[:] = inputs
            clone.output[:] = [f"{context}/padded"]
            nodes.extend([
                clone,
                n("Reshape", [f"{context}/padded", int_const(consts, [-1, widths[node.output[0]]])], [f"{context}/rows"],
                  name=f"{context}/rows"),
                n("Gather", [f"{context}/rows", f"{p}/index"], [context], name=f"{context}/gather", axis=0),
            ])
            rename[node.output[0]] = context
            continue
        clone.input[:] = inputs
        outs = []
        for o in node.output:
            if o:
                rename[o] = f"{q}/{o}"
            outs.append(rename.get(o, o) if o else "")
        clone.output[:] = outs
        nodes.append(clone)
    results = []
    for out in outputs:
        final = f"{q}/{out}/result"
        pad(rename[out], final, widths[out])
        results.append(helper.make_tensor_value_info(final, TensorProto.FLOAT, None))
    return helper.make_graph(nodes, "packed_tokens", [], results)


# The packed branch's opset-23 attentions run per length bucket: texts longer than half the
# batch's padded length, and the rest, each padded only to its own longest text. A mixed batch's
# attention is mostly padding otherwise: the bench's 32 x 256 batch holds two texts of 256 tokens
# and thirty of <= 72, so one [32, 256, 256] score tensor per head is 7x the work of [2, 256, 256]
# + [30, 72, 72]. Attention is per text, so which slot a token sits in does not matter, only
# that each text's keys are its own real tokens.
def _token_index_nodes(seed, keep, consts):
    """In the packed branch: `index` [T], the flat slots of the real tokens; `inverse` [B*S],
    each slot's row in [packed; one zero row] (its rank among the real tokens, or T for
    padding); `lead` = [B, S]."""
    p, n = PREFIX, helper.make_node
    return [
        n("Reshape", [keep, f"{p}/flat"], [f"{p}/keep"], name=f"{p}/keep"),
        n("NonZero", [f"{p}/keep"], [f"{p}/nz"], name=f"{p}/nz"),
        n("Reshape", [f"{p}/nz", f"{p}/flat"], [f"{p}/index"], name=f"{p}/index"),
        n("Shape", [f"{p}/index"], [f"{p}/tokens"], name=f"{p}/tokens"),
        n("Cast", [f"{p}/keep"], [f"{p}/keep_i"], name=f"{p}/keep_i", to=TensorProto.INT64),
        n("CumSum", [f"{p}/keep_i", int_const(consts, 0)], [f"{p}/rank1"], name=f"{p}/rank1"),
        n("Sub", [f"{p}/rank1", int_const(consts, 1)], [f"{p}/rank"], name=f"{p}/rank"),
        n("Where", [f"{p}/keep", f"{p}/rank", f"{p}/tokens"], [f"{p}/inverse"], name=f"{p}/inverse"),
        n("Shape", [seed], [f"{p}/lead"], name=f"{p}/lead", end=2),
    ]


def _padded_branch(region, seed, outputs, initializers, consts, pack):
    """(top-level nodes, the If's else branch): the region as it was (renamed: a subgraph may not
    redefine outer names). With chunks.CHUNK_ROWS set, the region runs a few texts at a time in a
    top-level Loop (no trips when `pack` is true) and the branch concatenates its chunks."""


    q = f"{PREFIX}/padded"
    produced = {o for node in region for o in node.output if o}
    nodes = []
    for node in region:
        clone = copy.deepcopy(node)
        clone.name = f"{q}/{node.name or node.output[0]}"
        clone.input[:] = [f"{q}/{i}" if i in produced else i for i in node.input]
        clone.output[:] = [f"{q}/{o}" if o else "" for o in node.output]
        nodes.append(clone)
    names = [f"{q}/{o}" for o in outputs]
    outer = []
    if chunks.CHUNK_ROWS:
        outer, nodes = chunks.loop_over_texts(nodes, names, seed, initializers, consts, skip=pack)
    results = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in names]
    return outer, helper.make_graph(nodes, "padded_tokens", [], results)


def layer_nodes(graph):
    """The graph's nodes as they compute, with an unpadded region counted once: the top level
    with the layers of the chunk Loop (chunks.py) or of the If's padded branch in place (the
    packed branch holds the same layers)."""
    for node in unwrap(graph.node):
        if node.op_type == "If" and node.name == f"{PREFIX}/if":
            yield from unwrap(_attr(node, "else_branch").node)
        else:
            yield node


def inline_padded(model) -> bool:
    """Undo `unpad_tokens`, in place: the If becomes its padded branch again, under the original
    names. quantize_int8 works on the plain layers (its sites, calibration and search), then
    unpads the int8 graph itself. Returns whether there was an If to inline."""
    graph = model.graph
    at = next((i for i, node in enumerate(graph.node) if node.op_type == "If" and node.name == f"{PREFIX}/if"), None)
    if at is None:
        return False
    q = f"{PREFIX}/padded/"
    # the layers: in the chunk Loop at the top level, or (without chunks) in the else branch
    region = list(unwrap(n for n in graph.node if n.op_type == "Loop" and chunks.is_ours(n)))
    region = region or list(_attr(graph.node[at], "else_branch").node)
    nodes = []
    for node in region:
        node.name = node.name[len(q):] if node.name.startswith(q) else node.name
        node.input[:] = [i[len(q):] if i.startswith(q) else i for i in node.input]
        node.output[:] = [o[len(q):] if o.startswith(q) else o for o in node.output]
        nodes.append(node)
    # the head (the If's condition) only served the If
    head = {n.name for n in graph.node if n.name.startswith(f"{PREFIX}/") and n is not graph.node[at]}
    kept = [n for n in graph.node[:at] if n.name not in head and not chunks.is_ours(n)] + nodes + list(graph.node[at + 1:])
    del graph.node[:]
    graph.node.extend(kept)
    used = {i for n in graph.node for i in n.input}
    ours = (f"{PREFIX}/", f"{CHUNKS_PREFIX}/")
    for init in [i for i in graph.initializer if i.name.startswith(ours) and i.name not in used]:
        graph.initializer.remove(init)
    return True


def unpadded_layers(model) -> int:
    """How many attention layers run in `unpad_tokens`' packed branch (0: not unpadded)."""
    node = next((n for n in model.graph.node if n.op_type == "If" and n.name == f"{PREFIX}/if"), None)
    if node is None:
        return 0
    return sum(_is_attention(n) for n in layer_nodes(model.graph))
