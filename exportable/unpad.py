"""Run a transformer's per-token layers on the real tokens only (issue 10: "doing less work").

A padded batch [B, S] spends most of its GEMMs on padding when lengths differ: the mixed-length
bench batch of 32 texts is 1,234 real tokens in 32 x 256 slots (85 % padding), and
`SentenceTransformer.encode` pays for all of them. Every op of a BERT layer except the attention
itself works on each token alone (the projections, bias adds, residual sums, LayerNorm, GELU), so
`unpad_tokens` runs them on a packed [T, D] matrix of the real tokens and scatters to [B, S, D]
only where the attention needs it. Token rows compute the same sums as before, so the answers
match the padded graph (the pad rows come back as zeros, which masked pooling ignores; parity on
every validation case gates the result).

With little or no padding the gathers are pure overhead, so the graph decides per call: an `If`
runs the packed layers only when at least PACK_MIN_PADDING of the slots are padding, and the
untouched padded layers otherwise (measured numbers in docs/performance.md). Both branches read
the same weights from the outer graph: nothing is stored twice.
"""

from __future__ import annotations

import numpy as np

MS_DOMAIN = "com.microsoft"
PREFIX = "exportable_unpad"
# Below this share of padding the packed branch's gathers cost more than the GEMM rows they save.
PACK_MIN_PADDING = (1, 8)  # numerator, denominator
ELEMENTWISE = {"Add", "Sum", "Mul"}


def unpad_tokens(model) -> int:
    """Rewrite the layers between the first attention's input and the pooling so that they run
    on real tokens only when a batch is padded. Needs standard (opset-23) Attention nodes that
    share one additive attention bias [B, 1|N, S, S] (0 where a key is kept). Returns the number
    of attention layers moved into the packed branch (0: graph untouched)."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    attentions = [n for n in graph.node if n.op_type == "Attention" and n.domain in ("", "ai.onnx")]
    if not attentions or len({n.input[3] if len(n.input) > 3 else "" for n in attentions}) != 1:
        return 0
    bias = attentions[0].input[3]
    if not bias:
        return 0
    seed = _layer_input(graph, attentions[0], inits)
    if seed is None:
        return 0
    region = _per_token_region(graph, seed, bias, inits)
    if not all(any(n is r for r in region) for n in attentions):
        return 0
    outputs = _region_outputs(graph, region)
    if not outputs:
        return 0
    widths = _widths(region, inits)
    attention_io = [t for a in attentions for t in (*a.input[:3], a.output[0])]
    if any(t not in widths for t in (seed, *outputs, *attention_io)):
        return 0
    _rebuild(model, region, seed, bias, outputs, widths)
    return len(attentions)


def _producer(graph, name):
    return next((n for n in graph.node if name in n.output), None)


def _layer_input(graph, attention, inits):
    """The tensor the first attention's query projection reads: MatMul(x, W) [+ bias]."""
    node = _producer(graph, attention.input[0])
    if node is not None and node.op_type == "Add":
        node = next((_producer(graph, i) for i in node.input if i not in inits), None)
    if node is None or node.op_type != "MatMul" or node.input[1] not in inits:
        return None
    return node.input[0]


def _broadcasts_per_token(init) -> bool:
    """A constant that an elementwise op applies alike to every token: [D], [1, D], [1, 1, D]."""
    dims = list(init.dims)
    return all(d == 1 for d in dims[:-1])


def _per_token_region(graph, seed, bias, inits):
    """The nodes downstream of `seed` that treat each token alone, plus the attentions (which
    read the shared bias and are padded for), in graph order."""
    tensors, region = {seed}, []
    for node in graph.node:
        reads = [i for i in node.input if i]
        if not any(i in tensors for i in reads):
            continue
        if not _token_wise(node, reads, tensors, bias, inits):
            continue
        region.append(node)
        tensors.update(o for o in node.output if o)
    return region


def _token_wise(node, reads, tensors, bias, inits) -> bool:
    op, domain = node.op_type, node.domain or ""
    if domain in ("", "ai.onnx") and op == "Attention":
        return (len(node.output) == 1 and all(i in tensors for i in node.input[:3]) and node.input[3] == bias
                and len([i for i in node.input if i]) == 4)
    if domain in ("", "ai.onnx") and op == "MatMul":
        return node.input[0] in tensors and node.input[1] in inits and len(inits[node.input[1]].dims) == 2
    if domain in ("", "ai.onnx") and op in ELEMENTWISE:
        return all(i in tensors or (i in inits and _broadcasts_per_token(inits[i])) for i in reads)
    if domain in ("", "ai.onnx") and op == "LayerNormalization":
        axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
        return (axis == -1 and node.input[0] in tensors and all(i in inits for i in reads[1:])
                and len([o for o in node.output if o]) == 1)
    if domain == MS_DOMAIN and op in ("BiasGelu", "FastGelu", "Gelu"):
        return node.input[0] in tensors and all(i in inits for i in reads[1:])
    return False


def _widths(region, inits) -> dict[str, int]:
    """The last dim of each region tensor, from the weights: a MatMul's input has its weight's
    rows and its output the columns; an elementwise op, LayerNorm or GELU keeps its first
    input's; an attention outputs its V's."""
    widths = {}
    for node in region:
        if node.op_type == "MatMul":
            widths.setdefault(node.input[0], inits[node.input[1]].dims[0])
    for node in region:
        if node.op_type == "MatMul":
            width = inits[node.input[1]].dims[1]
        else:
            width = widths.get(node.input[2] if node.op_type == "Attention" else node.input[0])
        if width is not None and node.output[0]:
            widths[node.output[0]] = width
    return widths


def _const(consts, value) -> str:
    """An int64 initializer named after its value (a scalar, or a list for a 1-D tensor)."""
    flat = value if isinstance(value, list) else [value]
    name = f"{PREFIX}/const{'_1d' if isinstance(value, list) else ''}_{'_'.join(str(v).replace('-', 'm') for v in flat)}"
    consts[name] = np.array(value, np.int64)
    return name


def _region_outputs(graph, region):
    """Region tensors read outside it (the pooling's input), in a stable order."""
    inside = {id(n) for n in region}
    read_outside = {i for n in graph.node if id(n) not in inside for i in n.input}
    read_outside |= {o.name for o in graph.output}
    produced = [o for n in region for o in n.output if o]
    return [t for t in produced if t in read_outside]


def _rebuild(model, region, seed, bias, outputs, widths) -> None:
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    p = PREFIX
    num, den = PACK_MIN_PADDING
    consts = {f"{p}/first": np.array([0, 0], np.int64), f"{p}/second": np.array([1, 1], np.int64),
              f"{p}/axes": np.array([1, 2], np.int64), f"{p}/zero": np.array(0, np.float32),
              f"{p}/flat": np.array([-1], np.int64), f"{p}/num": np.array(den - num, np.int64),
              f"{p}/den": np.array(den, np.int64), f"{p}/pad_row": np.array([0, 0, 1, 0], np.int64)}
    n = helper.make_node
    # Which slots hold a real token: the bias row of query 0 is 0 exactly where a key is kept
    # (dynamo's SDPA mask, Where(mask, 0, min)); for BERT's padding mask that is the token mask.
    head = [
        n("Slice", [bias, f"{p}/first", f"{p}/second", f"{p}/axes"], [f"{p}/row"], name=f"{p}/row"),
        n("Squeeze", [f"{p}/row", f"{p}/axes"], [f"{p}/row2"], name=f"{p}/row2"),
        n("Equal", [f"{p}/row2", f"{p}/zero"], [f"{p}/keep2"], name=f"{p}/keep2"),
        n("Cast", [f"{p}/keep2"], [f"{p}/keep_i2"], name=f"{p}/keep_i2", to=TensorProto.INT64),
        n("ReduceSum", [f"{p}/keep_i2"], [f"{p}/tokens0"], name=f"{p}/tokens0", keepdims=0),
        n("Size", [f"{p}/keep2"], [f"{p}/slots"], name=f"{p}/slots"),
        # pack only when at least num/den of the slots are padding: tokens * den <= slots * (den - num)
        n("Mul", [f"{p}/tokens0", f"{p}/den"], [f"{p}/lhs"], name=f"{p}/lhs"),
        n("Mul", [f"{p}/slots", f"{p}/num"], [f"{p}/rhs"], name=f"{p}/rhs"),
        n("LessOrEqual", [f"{p}/lhs", f"{p}/rhs"], [f"{p}/pack"], name=f"{p}/pack"),
    ]
    then_graph = _packed_branch(region, seed, outputs, widths, consts)
    else_graph = _padded_branch(region, outputs)
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


def _packed_branch(region, seed, outputs, widths, consts):
    """The region on [T, D] rows: gather the real tokens of `seed`, pad to [B, S, D] only the
    attention's Q, K, V, gather its context back, and pad the region's outputs at the end."""
    import copy

    from onnx import TensorProto, helper

    p, q = PREFIX, f"{PREFIX}/packed"
    n = helper.make_node
    rename = {seed: f"{q}/{seed}"}
    nodes = _token_index_nodes(seed, consts)
    nodes += [n("Reshape", [seed, _const(consts, [-1, widths[seed]])], [f"{q}/{seed}/rows"], name=f"{q}/seed_rows"),
              n("Gather", [f"{q}/{seed}/rows", f"{p}/index"], [f"{q}/{seed}"], name=f"{q}/seed_gather", axis=0)]

    def pad(name, to, width):
        # The width is a constant on purpose: ONNX Runtime's shape inference of the opset-23
        # Attention on Q/K/V of unknown dims gets the output width wrong, and the If then fails
        # to load ("Incompatible dimensions for matrix multiplication" at the next MatMul).
        nodes.extend([
            n("Pad", [name, f"{p}/pad_row"], [f"{to}/with_zero_row"], name=f"{to}/zero_row"),
            n("Gather", [f"{to}/with_zero_row", f"{p}/inverse"], [f"{to}/slots"], name=f"{to}/scatter", axis=0),
            n("Concat", [f"{p}/lead", _const(consts, [width])], [f"{to}/shape"], name=f"{to}/shape", axis=0),
            n("Reshape", [f"{to}/slots", f"{to}/shape"], [to], name=f"{to}/reshape"),
        ])

    for node in region:
        clone = copy.deepcopy(node)
        clone.name = f"{q}/{node.name or node.output[0]}"
        inputs = [rename.get(i, i) for i in node.input]
        if node.op_type == "Attention":
            for j in range(3):
                padded = f"{inputs[j]}/padded"
                pad(inputs[j], padded, widths[node.input[j]])
                inputs[j] = padded
            context = f"{q}/{node.output[0]}"
            clone.input[:] = inputs
            clone.output[:] = [f"{context}/padded"]
            nodes.extend([
                clone,
                n("Reshape", [f"{context}/padded", _const(consts, [-1, widths[node.output[0]]])], [f"{context}/rows"],
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


def _token_index_nodes(seed, consts):
    """In the packed branch: `index` [T], the flat slots of the real tokens; `inverse` [B*S],
    each slot's row in [packed; one zero row] (its rank among the real tokens, or T for
    padding); `lead` = [B, S]."""
    from onnx import TensorProto, helper

    p, n = PREFIX, helper.make_node
    return [
        n("Reshape", [f"{p}/keep2", f"{p}/flat"], [f"{p}/keep"], name=f"{p}/keep"),
        n("NonZero", [f"{p}/keep"], [f"{p}/nz"], name=f"{p}/nz"),
        n("Reshape", [f"{p}/nz", f"{p}/flat"], [f"{p}/index"], name=f"{p}/index"),
        n("Shape", [f"{p}/index"], [f"{p}/tokens"], name=f"{p}/tokens"),
        n("Cast", [f"{p}/keep"], [f"{p}/keep_i"], name=f"{p}/keep_i", to=TensorProto.INT64),
        n("CumSum", [f"{p}/keep_i", _const(consts, 0)], [f"{p}/rank1"], name=f"{p}/rank1"),
        n("Sub", [f"{p}/rank1", _const(consts, 1)], [f"{p}/rank"], name=f"{p}/rank"),
        n("Where", [f"{p}/keep", f"{p}/rank", f"{p}/tokens"], [f"{p}/inverse"], name=f"{p}/inverse"),
        n("Shape", [seed], [f"{p}/lead"], name=f"{p}/lead", end=2),
    ]


def _padded_branch(region, outputs):
    """The region exactly as it was (renamed: a subgraph may not redefine outer names)."""
    import copy

    from onnx import TensorProto, helper

    q = f"{PREFIX}/padded"
    produced = {o for node in region for o in node.output if o}
    nodes = []
    for node in region:
        clone = copy.deepcopy(node)
        clone.name = f"{q}/{node.name or node.output[0]}"
        clone.input[:] = [f"{q}/{i}" if i in produced else i for i in node.input]
        clone.output[:] = [f"{q}/{o}" if o else "" for o in node.output]
        nodes.append(clone)
    results = [helper.make_tensor_value_info(f"{q}/{o}", TensorProto.FLOAT, None) for o in outputs]
    return helper.make_graph(nodes, "padded_tokens", [], results)


def layer_nodes(graph):
    """The graph's nodes as they compute, with an unpadded region counted once: the top level
    plus the padded branch of `unpad_tokens`' If (the packed branch holds the same layers)."""
    for node in graph.node:
        if node.op_type == "If" and node.name == f"{PREFIX}/if":
            yield from next(a.g.node for a in node.attribute if a.name == "else_branch")
        else:
            yield node
