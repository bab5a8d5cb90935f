"""exportable.accelerate on the real all-MiniLM-L6-v2: the fusions fire (counted), the fused graph
keeps the fp32 bar against SentenceTransformer.encode, int8 keeps cosine >= 0.99 on the corpus."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from exportable import accelerate, parity, samples
from exportable.accelerate import (
    attention,
    buckets,
    calibrate,
    chunks,
    fp16,
    fusion,
    unpad,
    variants,
)
from exportable.accelerate.int8 import fold_bias_into_dynamic_matmul, rowwise_matmul
from exportable.bench import bench_case
from exportable.recipe import Case


@pytest.fixture(scope="module")
def ids_recipe():
    from exportable.recipes.sentence_bert import SentenceBert

    return SentenceBert(inputs="ids")


@pytest.fixture(scope="module")
def captured(ids_recipe, tmp_path_factory):
    """The ids-in graph exactly as `recipe sentence_bert --inputs ids` captures it (dynamo)."""
    from exportable.exporters import onnx as onnx_exporter

    path = tmp_path_factory.mktemp("capture") / "model.onnx"
    capture = onnx_exporter.export(ids_recipe.build_wrapper("onnx"), ids_recipe.capture_feed("onnx"),
                                   ids_recipe.model_input_specs("onnx"), ids_recipe.output_specs(), path)
    assert capture.strategy == "dynamo"
    return capture.model


@pytest.fixture(scope="module")
def contrib(captured):
    """Fused with the contrib Attention kept (to_fp16 starts from it; `fused` is built from it)."""
    return accelerate.fuse(captured, standard=False)


@pytest.fixture(scope="module")
def fused(contrib):
    """The fp32 artifact: contrib Attention -> Q/K/V MatMuls + the standard opset-23 Attention."""
    return accelerate.standardized(contrib)


def _run(model, feeds):
    session = calibrate.cpu_session(model)
    return [session.run(None, f)[0] for f in feeds]


def _feeds(recipe, texts, batch=32):
    return [recipe.feed(Case(f"b{i}", texts[i:i + batch]), "onnx") for i in range(0, len(texts), batch)]


def test_fusions_fire_on_the_dynamo_graph(captured, contrib, fused):
    layers = 6
    assert accelerate.fused_op_counts(captured) == {}
    counts = fused.detail["fused_ops"]
    assert counts.get("Attention", 0) + counts.get("MultiHeadAttention", 0) == layers
    assert counts["SkipLayerNormalization"] == 2 * layers
    # ...and then undone: ORT's CPU SkipLayerNormalization is slower than Add + LayerNormalization
    assert fused.detail["skip_layernorm_split"] == 2 * layers
    assert "SkipLayerNormalization" not in fused.detail["ops_after"]
    assert counts.get("BiasGelu", 0) + counts.get("FastGelu", 0) + counts.get("Gelu", 0) == layers
    ops = {n.op_type for n in unpad.layer_nodes(fused.model.graph)}  # the layers sit inside the If
    assert "MatMul" in ops and not ops & {"Softmax", "Erf", "IsNaN"}, "attention or gelu left unfused"
    assert contrib.detail["nodes_after"] < contrib.detail["nodes_before"] / 2  # the fusions (before the
    # standard attention and the unpadding add their Q/K/V MatMuls and the If's head back)
    assert fused.detail["folded_initializers"] == layers  # the packed QKV weights are stored packed
    onnx.checker.check_model(fused.model)
    # ...and the attention itself runs in the standard op (faster on ORT's CPU, docs/performance.md)
    assert fused.detail["standard_attention"] == layers
    assert sum(n.op_type == "Attention" and n.domain == "" for n in unpad.layer_nodes(fused.model.graph)) == layers
    assert "Attention" not in fused.detail["ops_after"]  # no com.microsoft Attention left
    assert next(o.version for o in fused.model.opset_import if o.domain == "") == 23


def test_fuse_finishes_with_the_standard_attention_by_default(captured, fused):
    again = accelerate.fuse(captured)
    assert again.detail["standard_attention"] == fused.detail["standard_attention"]
    assert [n.op_type for n in again.model.graph.node] == [n.op_type for n in fused.model.graph.node]


def test_fused_graph_keeps_the_fp32_bar_against_sentence_transformers(ids_recipe, fused, sentence_transformer):
    texts = samples.sentences(40, seed=21) + ["", "   ", samples.long_text(500, seed=3), "Café 東京 😀"]
    want = sentence_transformer.encode(texts, batch_size=16, convert_to_numpy=True)
    got = np.concatenate(_run(fused.model, _feeds(ids_recipe, texts, batch=16)))
    tol = ids_recipe.tolerances()["sentence_embedding"]
    m = parity.compare_tensor("sentence_embedding", got, want, tol)
    assert parity.failure_reason(m, tol) is None, (m.max_abs, m.min_cosine)
    assert m.max_abs <= 1e-5 and m.min_cosine >= 0.99999


def test_fp16_graph_loads_and_keeps_the_fp16_bar_against_sentence_transformers(ids_recipe, contrib,
                                                                               sentence_transformer):
    """The GPU path's fp16 model (bench --device cuda), run here by the CPU provider: before
    exportable.half, the file did not load at all (a Clip bound to float and float16)."""
    half = accelerate.Transformed(*fp16.to_fp16(contrib.model))
    weights = {i.name: i for i in half.model.graph.initializer}
    matmuls = [n for n in half.model.graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    attention = [n for n in half.model.graph.node if n.op_type == "Attention"]
    assert len(matmuls) == 3 * 6 and len(attention) == 6  # output projection + FFN; QKV in the Attention
    assert all(weights[n.input[1]].data_type == TensorProto.FLOAT16 for n in matmuls + attention)
    assert half.detail["fp32_tail_nodes"] > 0  # pooling + normalization
    texts = samples.sentences(40, seed=22) + ["", samples.long_text(500, seed=4), "Café 東京 😀"]
    want = sentence_transformer.encode(texts, batch_size=16, convert_to_numpy=True)
    got = np.concatenate(_run(half.model, _feeds(ids_recipe, texts, batch=16)))
    assert got.dtype == np.float32 and np.isfinite(got).all()
    tol = accelerate.fp16_tolerances(ids_recipe.tolerances())["sentence_embedding"]
    m = parity.compare_tensor("sentence_embedding", got, want, tol)
    assert parity.failure_reason(m, tol) is None, (m.max_abs, m.min_cosine)
    assert m.min_cosine >= variants.FP16_MIN_COSINE


def test_fused_graph_handles_batch_zero(ids_recipe, fused):
    session = calibrate.cpu_session(fused.model)
    feed = {k: np.zeros((0, 5), np.int64) for k in ids_recipe.id_input_names}
    assert session.run(None, feed)[0].shape == (0, 384)


def _inner_value(model, feed, name):
    """A graph value that is not an output (read as an extra one) for this feed."""
    session = calibrate.cpu_session(model, extra_outputs=[name])
    names = [o.name for o in session.get_outputs()]
    return session.run(None, feed)[names.index(name)]


def _packs(model, feed) -> bool:
    """Whether the graph's If took the packed branch (real tokens only) for this feed."""
    return bool(_inner_value(model, feed, f"{unpad.PREFIX}/pack"))


def test_padded_batches_run_the_layers_on_real_tokens_only(ids_recipe, fused, sentence_transformer):
    assert fused.detail["token_unpadding"] == 6
    top = [n.op_type for n in fused.model.graph.node]
    assert top.count("If") == 1 and "Attention" not in top and "MatMul" not in top  # the layers are in the If
    texts = [samples.long_text(180, seed=5)] + samples.sentences(15, seed=9)  # one long text, 15 short ones
    feed = ids_recipe.feed(Case("mixed", texts), "onnx")
    assert 1 - feed["attention_mask"].mean() >= 0.5  # mostly padding
    assert _packs(fused.model, feed)
    got = calibrate.cpu_session(fused.model).run(None, feed)[0]
    want = sentence_transformer.encode(texts, batch_size=16, convert_to_numpy=True)
    tol = ids_recipe.tolerances()["sentence_embedding"]
    m = parity.compare_tensor("sentence_embedding", got, want, tol)
    assert parity.failure_reason(m, tol) is None and m.max_abs <= 1e-5, (m.max_abs, m.min_cosine)
    # texts of one length have no padding: the If runs the layers as they were
    equal = ids_recipe.feed(bench_case(ids_recipe, "short", 8), "onnx")
    assert equal["attention_mask"].all() and not _packs(fused.model, equal)


def test_the_packed_branch_matches_encode_without_padding_too(ids_recipe, contrib, sentence_transformer, monkeypatch):
    monkeypatch.setattr(unpad, "PACK_MIN_PADDING", (0, 1))  # pack every batch
    forced = accelerate.standardized(contrib).model
    texts = list(bench_case(ids_recipe, "short", 6).data) + ["", "Café 東京 😀"]
    feed = ids_recipe.feed(Case("any", texts), "onnx")
    assert _packs(forced, feed)
    got = calibrate.cpu_session(forced).run(None, feed)[0]
    want = sentence_transformer.encode(texts, batch_size=8, convert_to_numpy=True)
    assert np.abs(got - want).max() <= 1e-5
    assert calibrate.cpu_session(forced).run(None, {k: np.zeros((0, 5), np.int64)
                                                 for k in ids_recipe.id_input_names})[0].shape == (0, 384)


def _trips(model, feed) -> int:
    """How many chunks of texts the graph's Loop ran for this feed (0: the packed branch ran)."""
    return int(_inner_value(model, feed, f"{chunks.PREFIX}/trips"))


def test_long_unpadded_batches_run_a_few_texts_at_a_time(ids_recipe, contrib, fused, sentence_transformer,
                                                         monkeypatch):
    """A batch of more than CHUNK_ROWS tokens without padding runs the layers in chunks of texts
    (chunks.py), uneven last chunk included; the answers are the unchunked graph's and encode's."""
    monkeypatch.setattr(chunks, "CHUNK_ROWS", 0)
    whole = accelerate.standardized(contrib).model
    assert "Loop" not in [n.op_type for n in whole.graph.node]
    texts = list(bench_case(ids_recipe, "long", 7).data)
    feed = ids_recipe.feed(Case("long", texts), "onnx")
    tokens = feed["input_ids"].shape[1]
    assert feed["attention_mask"].all() and tokens > 64
    monkeypatch.setattr(chunks, "CHUNK_ROWS", 3 * tokens)  # 3 texts a chunk: 3 + 3 + 1
    chunked = accelerate.standardized(contrib).model
    assert [n.op_type for n in chunked.graph.node].count("Loop") == 1
    assert _trips(chunked, feed) == 3 and not _packs(chunked, feed)
    got = calibrate.cpu_session(chunked).run(None, feed)[0]
    assert np.abs(got - calibrate.cpu_session(whole).run(None, feed)[0]).max() <= 1e-6
    want = sentence_transformer.encode(texts, batch_size=7, convert_to_numpy=True)
    assert np.abs(got - want).max() <= 1e-5
    # the default: 512 token rows a chunk; a padded batch packs its tokens instead (no chunks)
    assert _trips(fused.model, ids_recipe.feed(bench_case(ids_recipe, "long", 8), "onnx")) == 8 * tokens // 512
    assert _trips(fused.model, ids_recipe.feed(bench_case(ids_recipe, "short", 1), "onnx")) == 1
    mixed = ids_recipe.feed(Case("mixed", [samples.long_text(180, seed=5)] + samples.sentences(15, seed=9)), "onnx")
    assert _packs(fused.model, mixed) and _trips(fused.model, mixed) == 0


@pytest.mark.parametrize("keep", [
    [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]],  # both texts longer than half the width: no short bucket
    [[1, 1, 1, 1, 1], [1, 0, 0, 0, 0]],  # one text per length bucket
    [[1, 1, 0, 0, 0], [1, 0, 0, 0, 0]],  # ids padded past the longest text: no long bucket
    [[1, 0, 1, 1, 0], [1, 1, 1, 1, 1]],  # a mask with holes
], ids=["no-short", "both", "no-long", "holes"])
def test_unpadding_keeps_real_token_rows_and_zeroes_the_padding(keep):
    """On one attention layer: the packed graph (the attention per length bucket) takes the real
    rows to what the padded graph computes, its pad rows come back as zeros (masked pooling ignores
    them). An empty bucket runs as one dummy row (ORT's kernel rejects a zero-row batch)."""
    model, feed = _attention_model()
    keep = np.array(keep, bool)
    feed["bias"] = np.broadcast_to(np.where(keep, 0, -3.4e38)[:, None, None, :], (2, 1, 5, 5)).astype(np.float32)
    assert attention.standard_attention(model) == 1
    want = calibrate.cpu_session(model).run(None, feed)[0]
    assert unpad.unpad_tokens(model) == 1
    onnx.checker.check_model(model, full_check=True)
    packed = next(a.g for a in model.graph.node[[n.op_type for n in model.graph.node].index("If")].attribute
                  if a.name == "then_branch")
    assert [n.op_type for n in packed.node].count("Attention") == len(buckets.BUCKETS)  # one per bucket
    assert _packs(model, feed)
    got = calibrate.cpu_session(model).run(None, feed)[0]
    np.testing.assert_allclose(got[keep], want[keep], rtol=1e-6, atol=1e-6)
    assert not got[~keep].any() and want[~keep].any()


def test_unpadding_leaves_graphs_without_the_standard_attention_alone():
    model, _ = _attention_model()  # contrib Attention: nothing to pad for
    before = [n.op_type for n in model.graph.node]
    assert unpad.unpad_tokens(model) == 0
    assert [n.op_type for n in model.graph.node] == before


def _calibration_feeds(recipe):
    texts = accelerate.corpus_texts()
    return _feeds(recipe, [t for i, t in enumerate(texts) if i % 8 == 0])  # 150 texts, disjoint from the checks


@pytest.fixture(scope="module")
def int8(ids_recipe, fused):
    """From the fp32 artifact's graph, as `recipe --quantize int8` does."""
    return accelerate.quantize_int8(fused.model, _calibration_feeds(ids_recipe))


def test_int8_keeps_cosine_on_the_corpus(ids_recipe, fused, int8):
    """Cosine >= 0.99 per text against fp32 on corpus texts the calibration never saw."""
    texts = [t for i, t in enumerate(accelerate.corpus_texts()) if i % 8 != 0][::3] + samples.sentences(64, seed=8)
    feeds = _feeds(ids_recipe, texts)
    worst = min(float(parity.row_cosines(q, f).min())
                for q, f in zip(_run(int8.model, feeds), _run(fused.model, feeds)))
    assert worst >= variants.INT8_MIN_COSINE, worst
    assert len(texts) >= 400


def test_int8_graph_handles_batch_zero(ids_recipe, int8):
    """ORT's int8 kernels end the process with SIGFPE on zero rows; graph.guard_empty_batch runs
    one blank row instead and returns [0, 384]."""
    assert int8.detail["empty_batch_guard"] is True
    session = calibrate.cpu_session(int8.model)
    feed = {k: np.zeros((0, 5), np.int64) for k in ids_recipe.id_input_names}
    assert session.run(None, feed)[0].shape == (0, 384)
    feed = {k: np.ones((2, 5), np.int64) for k in ids_recipe.id_input_names}
    assert session.run(None, feed)[0].shape == (2, 384)


def test_int8_runs_padded_batches_on_real_tokens_only(ids_recipe, fused, int8, sentence_transformer):
    """The int8 graph is unpadded like the fp32 one (quantized in its padded form, then unpadded):
    a mixed batch takes the packed branch and keeps cosine >= 0.99 per text against `encode`."""
    assert int8.detail["token_unpadding"] == 6
    top = [n.op_type for n in int8.model.graph.node]
    assert top.count("If") == 1 and "DynamicQuantizeMatMul" not in top and "MatMulIntegerToFloat" not in top
    texts = [samples.long_text(180, seed=5)] + samples.sentences(15, seed=9)
    feed = ids_recipe.feed(Case("mixed", texts), "onnx")
    assert _packs(int8.model, feed)
    got = calibrate.cpu_session(int8.model).run(None, feed)[0]
    want = sentence_transformer.encode(texts, batch_size=16, convert_to_numpy=True)
    assert parity.row_cosines(got, want).min() >= variants.INT8_MIN_COSINE
    equal = ids_recipe.feed(bench_case(ids_recipe, "short", 8), "onnx")
    assert not _packs(int8.model, equal)


def test_int8_from_the_contrib_attention_is_unpadded_around_qattention(ids_recipe, contrib, fused):
    """quantize_int8 on a `fuse(standard=False)` graph (QAttention): the packed branch pads the
    quantized layer input for each QAttention, and a mixed batch still keeps cosine >= 0.99."""
    q = accelerate.quantize_int8(contrib.model, _calibration_feeds(ids_recipe)[:2])
    assert q.detail["token_unpadding"] == 6 and q.detail["ops"].get("QAttention") == 6
    texts = [samples.long_text(150, seed=6)] + samples.sentences(7, seed=10)
    feed = ids_recipe.feed(Case("mixed", texts), "onnx")
    assert _packs(q.model, feed)
    got, want = _run(q.model, [feed])[0], _run(fused.model, [feed])[0]
    assert parity.row_cosines(got, want).min() >= variants.INT8_MIN_COSINE


def test_inline_padded_undoes_the_unpadding(fused):
    model = onnx.ModelProto()
    model.CopyFrom(fused.model)
    assert unpad.inline_padded(model)
    onnx.checker.check_model(model)
    assert not {"If", "Loop"} & {n.op_type for n in model.graph.node}
    assert not any(n.name.startswith((unpad.PREFIX, chunks.PREFIX)) for n in model.graph.node)
    assert not any(i.name.startswith((unpad.PREFIX, chunks.PREFIX)) for i in model.graph.initializer)
    assert unpad.unpad_tokens(model) == 6
    assert not unpad.inline_padded(onnx.ModelProto())


def test_int8_quantizes_most_gemms_and_says_which_stay_fp32(int8):
    d = int8.detail
    assert d["sites"] == 36  # 6 layers x (Q, K, V, attention out, FFN in, FFN out); the attention stays fp32
    assert d["int8"] >= 34 and d["int8"] + len(d["kept_fp32"]) == d["sites"]
    per_row = sum(p["activations"].startswith("per row") for p in d["plans"] if p["node"] not in d["kept_fp32"])
    assert d["ops"].get("MatMulIntegerToFloat", 0) == per_row
    assert d["ops"].get("DynamicQuantizeMatMul", 0) + per_row == d["int8"]
    # the GELU outputs (>= -0.17) measured best with a low zero point, the attention context with 128
    zero_points = {p["activations"] for p in d["plans"] if p["activations"].startswith("per row")}
    assert "per row, zero point 128" in zero_points and len(zero_points) > 1
    assert d["calibration_min_cosine"] >= variants.INT8_MIN_COSINE
    assert any(p["smoothing"] for p in d["plans"])  # outlier channels were measured and smoothed
    assert all(p["error"] <= p["error_per_tensor_unsmoothed"] for p in d["plans"])


# --- pieces, on tiny graphs ------------------------------------------------------------------

def _model(nodes, inputs, outputs, inits, opset=18):
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)],
                             ir_version=10)


def test_fold_constant_concats_and_drop_unused_outputs():
    a = numpy_helper.from_array(np.ones((2, 3), np.float32), "a")
    b = numpy_helper.from_array(np.zeros((2, 3), np.float32), "b")
    g = numpy_helper.from_array(np.ones(6, np.float32), "g")
    nodes = [helper.make_node("Concat", ["a", "b"], ["w"], axis=1),
             helper.make_node("MatMul", ["x", "w"], ["y"]),
             helper.make_node("SkipLayerNormalization", ["y", "y", "g", "g"], ["z", "mean", "inv", "sum"],
                              domain="com.microsoft", epsilon=1e-12)]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                   [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 6])], [a, b, g])
    assert fusion.fold_constant_concats(model) == 1
    assert {i.name for i in model.graph.initializer} == {"w", "g"}
    assert fusion.drop_unused_outputs(model) == 3
    assert list(model.graph.node[-1].output) == ["z"]
    out = calibrate.cpu_session(model).run(None, {"x": np.ones((1, 2), np.float32)})[0]
    assert out.shape == (1, 6) and np.isfinite(out).all()


def test_smoothing_reduces_the_error_of_outlier_channels():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((512, 64)).astype(np.float32)
    x[:, 3] *= 40  # one outlier channel, as BERT's LayerNorm outputs have
    w = rng.standard_normal((64, 32)).astype(np.float32)
    st = calibrate.Stats(np.abs(x).max(0), [(x.min(0), x.max(0), x)])
    plain = calibrate.simulated_error(st, w, None)
    smooth = calibrate.simulated_error(st, w, calibrate.smoothing(st, w, 0.75))
    assert smooth < plain / 2
    wq, ws = calibrate.quantize_weight(w)
    assert wq.dtype == np.int8 and np.abs(wq).max() == 127 and ws.shape == (32,)


def test_row_zero_point_follows_the_data_and_the_graph_computes_what_the_planner_simulates():
    rng = np.random.default_rng(1)
    k, n = 96, 24
    pre = rng.standard_normal((64, k)) * 1.5 - 1.0  # FFN1 outputs: mostly negative, some large
    gelu_like = (0.5 * pre * (1 + np.tanh(0.7978845608 * (pre + 0.044715 * pre ** 3)))).astype(np.float32)
    gelu_like[::7, 5] = 20.0  # a few tokens with one large activation, as FFN2's input has
    w = rng.standard_normal((k, n)).astype(np.float32)
    st = calibrate.Stats(np.abs(gelu_like).max(0), [(gelu_like.min(0), gelu_like.max(0), gelu_like)])
    errors = {z: calibrate.simulated_error(st, w, None, True, z) for z in calibrate.ROW_ZERO_POINTS}
    assert min(errors, key=errors.get) < 128 and min(errors.values()) < errors[128] * 0.8
    # the graph: quantize per row around zero point 16, MatMulIntegerToFloat, scale the rows
    wq, ws = calibrate.quantize_weight(w)
    nodes, consts = rowwise_matmul("x", "wq", "ws", "y", "site", k, 16)
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                   consts + [numpy_helper.from_array(wq, "wq"), numpy_helper.from_array(ws, "ws")],
                   opset=calibrate.ROW_QUANTIZE_OPSET)
    session = calibrate.cpu_session(model)
    scale = calibrate.row_scales(gelu_like.min(1, keepdims=True), gelu_like.max(1, keepdims=True), 16)
    xq = np.clip(np.round(gelu_like / scale) + 16, 0, 255)
    expected = ((xq - 16) @ wq.astype(np.float32)) * ws * scale
    # padded [B, S, K] and packed [T, K] rows alike (unpad.py moves the site onto packed rows)
    for shape in ((2, 32, k), (64, k)):
        got = session.run(None, {"x": gelu_like.reshape(shape)})[0].reshape(64, n)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_bias_add_after_dynamic_quantize_matmul_is_folded_into_it():
    rng = np.random.default_rng(2)
    wq = rng.integers(-127, 128, (8, 4)).astype(np.int8)
    inits = [numpy_helper.from_array(wq, "wq"), numpy_helper.from_array(np.full(4, 0.01, np.float32), "ws"),
             numpy_helper.from_array(np.arange(4, dtype=np.float32), "bias")]
    nodes = [helper.make_node("DynamicQuantizeMatMul", ["x", "wq", "ws"], ["mm"], domain="com.microsoft"),
             helper.make_node("Add", ["mm", "bias"], ["y"])]
    io = ([helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 8])],
          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])])
    model = _model(nodes, *io, inits)
    x = rng.standard_normal((3, 8)).astype(np.float32)
    before = calibrate.cpu_session(model).run(None, {"x": x})[0]
    assert fold_bias_into_dynamic_matmul(model) == 1
    assert [n.op_type for n in model.graph.node] == ["DynamicQuantizeMatMul"]
    np.testing.assert_allclose(calibrate.cpu_session(model).run(None, {"x": x})[0], before, rtol=1e-6, atol=1e-6)
    # a bias that is not a constant [N] vector stays an Add
    nodes[1] = helper.make_node("Add", ["mm", "x2"], ["y"])
    other = _model(nodes, [*io[0], helper.make_tensor_value_info("x2", TensorProto.FLOAT, [3, 4])], io[1], inits)
    assert fold_bias_into_dynamic_matmul(other) == 0


def _attention_model(opset=18, out_projection=True):
    """A contrib Attention (packed QKV, biases, additive key mask [B, 1, S, S]), optionally
    followed by an output projection MatMul + Add, as fuse() leaves BERT's attention."""
    rng = np.random.default_rng(3)
    d, heads = 16, 2
    arrays = {"w": rng.standard_normal((d, 3 * d)) / 4, "b": rng.standard_normal(3 * d),
              "w_o": rng.standard_normal((d, d)) / 4, "b_o": rng.standard_normal(d)}
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in arrays.items()]
    y = "context" if out_projection else "y"
    nodes = [helper.make_node("Attention", ["x", "w", "b", "", "", "bias"], [y], domain="com.microsoft",
                              num_heads=heads)]
    if out_projection:
        nodes += [helper.make_node("MatMul", ["context", "w_o"], ["projected"]),
                  helper.make_node("Add", ["projected", "b_o"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, d]),
                                           helper.make_tensor_value_info("bias", TensorProto.FLOAT, [2, 1, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5, d])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                    helper.make_opsetid("com.microsoft", 1)], ir_version=10)
    keep = np.ones((2, 5), bool)
    keep[1, 3:] = False  # row 1 is padded: its last two keys are masked
    feed = {"x": rng.standard_normal((2, 5, d)).astype(np.float32),
            "bias": np.broadcast_to(np.where(keep, 0, -3.4e38)[:, None, None, :], (2, 1, 5, 5)).astype(np.float32)}
    return model, feed


@pytest.mark.parametrize("out_projection", [True, False])
def test_standard_attention_computes_what_the_contrib_attention_did(out_projection):
    model, feed = _attention_model(out_projection=out_projection)
    want = calibrate.cpu_session(model).run(None, feed)[0]
    assert attention.standard_attention(model) == 1
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Attention") == 1 and ops.count("MatMul") == 3 + out_projection
    # Q keeps its bias Add; K's is dropped (softmax ignores a per-row constant); V's folds into
    # the output projection's bias, or is added after the attention when there is none
    adds = sorted(n.name.rsplit("/", 1)[-1] for n in model.graph.node if n.op_type == "Add")
    assert adds == (["", "q_bias"] if out_projection else ["q_bias", "v_bias"])
    got = calibrate.cpu_session(model).run(None, feed)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_standard_attention_leaves_graphs_before_opset_18_alone():
    model, _ = _attention_model(opset=17)
    assert attention.standard_attention(model) == 0
    assert [n.op_type for n in model.graph.node] == ["Attention", "MatMul", "Add"]


def test_int8_tolerance_is_a_cosine_bar():
    from exportable.recipe import Tolerance

    tol = accelerate.int8_tolerances({"e": Tolerance(min_cosine=0.99999), "ids": Tolerance(exact=True)})
    assert tol["e"].min_cosine == 0.99 and tol["e"].atol == float("inf") and tol["ids"].exact


@pytest.mark.slow
def test_export_writes_gated_optimized_and_int8_models(tmp_path):
    from exportable import api

    result = api.export_recipe("sentence_bert", out=tmp_path / "a", inputs="ids", optimize=True, quantize="int8",
                               variants="onnx-int8-static")
    assert result.passed
    assert {"onnx", "onnx-optimized", "onnx-int8", "onnx-int8-static"} <= set(result.report.parity)
    # every variant is in the vectors with its own tolerance, and `verify` replays it
    replayed = api.verify_artifact(tmp_path / "a")
    assert set(replayed) == {"onnx", "onnx-optimized", "onnx-int8", "onnx-int8-static"}
    assert all(r.passed for rs in replayed.values() for r in rs)
    static = onnx.load(str(tmp_path / "a" / accelerate.BY_NAME["onnx-int8-static"].file))
    ops = {n.op_type for n in unpad.layer_nodes(static.graph)}
    assert "MatMulIntegerToFloat" in ops and "QuantizeLinear" in ops and "DynamicQuantizeMatMul" not in ops
    detail = {s.name: s for s in result.report.stages}["accelerate:onnx-int8-static"].detail["static-int8"]
    assert detail["scheme"].startswith("static") and detail["int8"] >= detail["sites"] // 2
    for name in (accelerate.BY_NAME["onnx-optimized"].file, accelerate.BY_NAME["onnx-int8"].file):
        model = onnx.load(str(tmp_path / "a" / name))
        meta = {p.key: p.value for p in model.metadata_props}
        assert meta["exportable.recipe"] == "sentence_bert"
        assert meta["exportable.opset"] == str(next(o.version for o in model.opset_import if o.domain == ""))
    stages = {s.name: s for s in result.report.stages}
    assert stages["accelerate:onnx-optimized"].detail["fuse"]["fused_ops"]["Attention"] == 6
    assert stages["verify:onnx-int8"].status == "ok"


def test_bad_quantize_choice_is_a_usage_error(tmp_path):
    from exportable import api
    from exportable.errors import InputError

    with pytest.raises(InputError, match="int8"):
        api.export_recipe("sentence_bert", out=tmp_path / "x", quantize="int4")


def test_cli_optimize_flags_are_checked_before_any_work(tmp_path):
    from conftest import run_cli

    for args, message in ((["--quantize", "int4"], "int4"), (["--optimize", "--threads", "0"], "--threads"),
                          (["--variants", "onnx-int2"], "unknown variant 'onnx-int2'"),
                          # onnx-int4 quantizes a decoding Loop's weights: made for text_generator only
                          (["--variants", "onnx-int4"], "variant onnx-int4 is not made for sentence_bert's artifact"),
                          (["--variants", "onnx-ids-optimized"], "bench-only"),
                          (["--variants", "onnx-int8", "--format", "torchscript"], "add onnx to --format")):
        proc = run_cli("recipe", "sentence_bert", *args, "--out", tmp_path / "x")
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_optimize_keeps_a_scripted_viterbi_loop_loadable(tmp_path):
    """token_tagger's legacy-exported graph carries a sequence through a Loop; onnx-ir's inferred
    value_info typed it as a tensor and ONNX Runtime refused the fused file (a traceback)."""
    from exportable import api

    result = api.export_recipe("token_tagger", out=tmp_path / "t", optimize=True)
    assert result.passed
    assert all(r.passed for r in result.report.parity["onnx-optimized"])
    model = onnx.load(str(tmp_path / "t" / accelerate.BY_NAME["onnx-optimized"].file))
    assert any(n.op_type == "Loop" for n in model.graph.node)
