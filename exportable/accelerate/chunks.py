"""Run a padded batch's layers a few texts at a time (issue 10: long inputs at batch 32).

At 32 x 128 tokens a layer's intermediates are 6 MB ([4096, 384]) and 25 MB (the FFN's
[4096, 1536]), far beyond this CPU's 2 MB of L2 per core, so every GEMM, GELU, residual sum
and LayerNorm streams them through the shared cache. In chunks of about CHUNK_ROWS token rows
they stay close to the core. Every op of the layers is per text (the attention reads its own
text's keys only), so a chunk computes bit for bit what the whole batch computes for it.

`loop_over_texts` wraps the nodes in an ONNX Loop over ceil(B / texts_per_chunk) chunks, with
texts_per_chunk = max(1, CHUNK_ROWS // S) decided per call; a batch of up to CHUNK_ROWS tokens
runs as one chunk. Measured numbers are in docs/performance.md ("Chunks of texts").
"""

from __future__ import annotations

import copy

from onnx import TensorProto, helper

from ..graph import attribute, int64_constant

# Token rows per chunk: 512 and 1,024 measured alike at 32 x 128 (paired A/B, 0.92x the
# unchunked time), 256 only 0.98x; cutting 32 x 16 (512 rows) into 256- or 128-row chunks was
# slower than one piece (the GEMMs re-read the weights per chunk and run on fewer rows).
CHUNK_ROWS = 512
PREFIX = "exportable_chunks"
SUFFIX = "/chunk"  # inside the Loop body: a sliced input, and a chunk of an output


def loop_over_texts(nodes, outputs, first, constants, consts, skip: str | None = None):
    """`nodes` compute `outputs` (float tensors [B, ...]) from `first` ([B, S, ...]), other
    tensors with the batch on axis 0 (the attention masks) and `constants` (initializer names).
    Returns (outer, inner): `outer` runs them in a Loop over chunks of texts (none when the bool
    `skip` is true) and must sit in the top-level graph; `inner` concatenates the chunks into
    `outputs` (unpad.py puts it in its If's padded branch). int64 constants go into `consts`.

    The Loop is not put inside the If: ONNX Runtime 1.31 did not prepack the MatMul weights of a
    Loop nested in an If branch (batch 1 went from 8.2 to 12.9 ms, as slow as with
    session.disable_prepacking); a top-level Loop's body and an If branch are prepacked."""
    produced = {o for node in nodes for o in node.output if o}
    sliced = [first] + [i for i in _external_inputs(nodes) if i not in produced and i not in constants and i != first]

    p, n = PREFIX, helper.make_node

    def c(value):
        return int64_constant(consts, p, value)

    outer = [
        n("Shape", [first], [f"{p}/lead"], name=f"{p}/lead", start=0, end=2),
        n("Gather", [f"{p}/lead", c(0)], [f"{p}/texts"], name=f"{p}/texts", axis=0),
        n("Gather", [f"{p}/lead", c(1)], [f"{p}/length"], name=f"{p}/length", axis=0),
        n("Div", [c(CHUNK_ROWS), f"{p}/length"], [f"{p}/per0"], name=f"{p}/per0"),
        n("Max", [f"{p}/per0", c(1)], [f"{p}/per"], name=f"{p}/per"),
        # chunks = ceil(texts / per)
        n("Add", [f"{p}/texts", f"{p}/per"], [f"{p}/over"], name=f"{p}/over"),
        n("Sub", [f"{p}/over", c(1)], [f"{p}/over1"], name=f"{p}/over1"),
        n("Div", [f"{p}/over1", f"{p}/per"], [f"{p}/chunks"], name=f"{p}/chunks"),
    ]
    trips = f"{p}/chunks"
    if skip:
        outer.append(n("Where", [skip, c(0), f"{p}/chunks"], [f"{p}/trips"], name=f"{p}/trips"))
        trips = f"{p}/trips"
    outer += [n("SequenceEmpty", [], [f"{p}/empty{k}"], name=f"{p}/empty{k}", dtype=TensorProto.FLOAT)
              for k in range(len(outputs))]
    body = [
        n("Mul", ["i", f"{p}/per"], [f"{p}/start"], name=f"{p}/start"),
        n("Add", [f"{p}/start", f"{p}/per"], [f"{p}/stop0"], name=f"{p}/stop0"),
        n("Min", [f"{p}/stop0", f"{p}/texts"], [f"{p}/stop"], name=f"{p}/stop"),
        n("Unsqueeze", [f"{p}/start", c([0])], [f"{p}/starts"], name=f"{p}/starts"),
        n("Unsqueeze", [f"{p}/stop", c([0])], [f"{p}/stops"], name=f"{p}/stops"),
    ]
    body += [n("Slice", [x, f"{p}/starts", f"{p}/stops", c([0])], [x + SUFFIX], name=f"{p}/slice{k}")
             for k, x in enumerate(sliced)]
    inside = {x: x + SUFFIX for x in sliced} | {o: o + SUFFIX for o in outputs}
    for node in nodes:
        node.input[:] = [inside.get(i, i) for i in node.input]
        node.output[:] = [inside.get(o, o) for o in node.output]
        body.append(node)
    body += [n("SequenceInsert", [f"seq{k}", o + SUFFIX], [f"seq{k}/out"], name=f"{p}/insert{k}")
             for k, o in enumerate(outputs)]
    body.append(n("Identity", ["go"], ["go/out"], name=f"{p}/go"))
    seq = helper.make_tensor_sequence_value_info
    graph = helper.make_graph(
        body, "chunk_of_texts",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("go", TensorProto.BOOL, []),
         *[seq(f"seq{k}", TensorProto.FLOAT, None) for k in range(len(outputs))]],
        [helper.make_tensor_value_info("go/out", TensorProto.BOOL, []),
         *[seq(f"seq{k}/out", TensorProto.FLOAT, None) for k in range(len(outputs))]])
    outer.append(n("Loop", [trips, "", *[f"{p}/empty{k}" for k in range(len(outputs))]],
                   [f"{p}/done{k}" for k in range(len(outputs))], name=f"{p}/loop", body=graph))
    inner = [n("ConcatFromSequence", [f"{p}/done{k}"], [o], name=f"{p}/concat{k}", axis=0)
             for k, o in enumerate(outputs)]
    return outer, inner


def is_ours(node) -> bool:
    return node.name.startswith(f"{PREFIX}/")


def unwrap(nodes):
    """`nodes` with the Loop of `loop_over_texts` replaced by copies of the nodes it runs (under
    their own names again), and its helpers (slicing, concatenating) left out."""


    for node in nodes:
        if node.op_type == "Loop" and node.name == f"{PREFIX}/loop":
            for inner in attribute(node, "body").node:
                if is_ours(inner):
                    continue
                inner = copy.deepcopy(inner)
                inner.input[:] = [i[:-len(SUFFIX)] if i.endswith(SUFFIX) else i for i in inner.input]
                inner.output[:] = [o[:-len(SUFFIX)] if o.endswith(SUFFIX) else o for o in inner.output]
                yield inner
        elif not is_ours(node):
            yield node


def _external_inputs(nodes) -> list[str]:
    seen = []
    for node in nodes:
        for i in node.input:
            if i and i not in seen:
                seen.append(i)
    return seen
