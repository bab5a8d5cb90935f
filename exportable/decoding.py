"""Greedy decoding and beam search as one ONNX graph: a Loop around a captured causal-LM step
(blocks.causal_lm), the KV cache carried between iterations, equal token for token to transformers'

    model.generate(input_ids, attention_mask=mask, do_sample=False, num_beams=K, pad_token_id=pad,
                   max_new_tokens=N, min_new_tokens=M, repetition_penalty=R, no_repeat_ngram_size=G,
                   length_penalty=L, early_stopping=E)[:, prompt_len:]

    model = decoding_loop(step_model, DecodingSettings(...))   # input_ids, attention_mask -> generated_ids

Per iteration, as generate does it: positions from the mask (cumsum - 1, 1 where masked); the
step on the new tokens (the whole prompt in iteration 0, with an empty cache); the processors
(`_processors`: repetition penalty, no-repeat n-grams, min_new_tokens, in generate's order).

Greedy (K = 1): argmax of the processed logits (first index on ties, like torch.argmax); rows
that have finished emit the pad id; the loop stops after N tokens or once every row has emitted
EOS, so `generated_ids` has as many columns as generate returns new tokens.

Beam search (K > 1), transformers 5's vectorised `_beam_search` step by step (`_beam_body`): the
prompt repeated K times per row (repeat_interleave), log_softmax, the processors on the log-probs,
running beam scores added (beams 1.. start at -1e9), top 2K over beams x vocab, the best K
unfinished continue (the cache reordered by a Gather on the batch*beam axis), the top K that hit
EOS (or the last step) join the K finished hypotheses, scored by sum / new_length**length_penalty;
the early-stop heuristic; at the end the best finished hypothesis per row, padded with the pad id
to the longest one. Only the generated tokens are kept (the prompt is the same for every beam).

The step's weights become initializers of the outer graph (the Loop bodies read them from
there), so the file holds them once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx.inliner
from onnx import TensorProto, compose, helper

from .onnx_builder import GraphBuilder

STEP_PREFIX = "step/"
STEP_INPUTS = ("input_ids", "attention_mask", "position_ids", "past_keys", "past_values")
STEP_OUTPUTS = ("logits", "present_keys", "present_values")
BOOL, FLOAT, INT64 = TensorProto.BOOL, TensorProto.FLOAT, TensorProto.INT64
NO_SCORE = -1.0e9  # transformers' "very large negative value" for beams that must not be chosen
END = 2**62  # a Slice end past any axis


@dataclass(frozen=True)
class DecodingSettings:
    max_new_tokens: int
    eos_id: int
    pad_id: int
    layers: int
    heads: int
    head_dim: int
    min_new_tokens: int = 0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    bos_id: int | None = None  # an empty prompt starts from it (see start_empty_prompts)
    num_beams: int = 1  # 1: greedy
    length_penalty: float = 1.0  # beam search: a finished hypothesis scores sum / new_length**length_penalty
    early_stopping: bool | str = False  # beam search: True, False (the heuristic) or "never", as generate

    @property
    def fill_id(self) -> int:
        """What beam search pads its output with: generate writes `pad_token_id or eos_token_id[0]`,
        so a pad id of 0 falls back to EOS."""
        return self.pad_id or self.eos_id


def start_empty_prompts(input_ids: np.ndarray, attention_mask: np.ndarray, pad_id: int, bos_id: int):
    """What decoding_loop does to its inputs first, in numpy (the original pipeline applies it too):
    one padding column on the left, and a row with no token gets `bos_id` in its last column, as
    generate() starts from BOS when it is given no prompt. (A row that is all padding has no
    defined continuation: attention over nothing; transformers warns of right-padding then.)"""
    rows = input_ids.shape[0]
    ids = np.concatenate([np.full((rows, 1), pad_id, np.int64), input_ids], axis=1)
    mask = np.concatenate([np.zeros((rows, 1), np.int64), attention_mask], axis=1)
    empty = mask.sum(axis=1) == 0
    ids[empty, -1], mask[empty, -1] = bos_id, 1
    return ids, mask


def decoding_loop(step: onnx.ModelProto, s: DecodingSettings) -> onnx.ModelProto:
    """input_ids, attention_mask [batch, prompt] (left-padded) -> generated_ids [batch, steps]."""
    step = compose.add_prefix(onnx.inliner.inline_local_functions(step), STEP_PREFIX)
    b = GraphBuilder(max(o.version for o in step.opset_import if o.domain in ("", "ai.onnx")))
    batch = b.op("Shape", ["input_ids"], "gen/batch", start=0, end=1)
    has_rows = b.op("Greater", [b.op("Squeeze", [batch], "gen/batch0"), b.const("gen/zero_rows", 0)], "gen/has_rows")
    trips = b.op("Where", [has_rows, b.const("gen/max_new", s.max_new_tokens), b.const("gen/no_trips", 0)],
                 "gen/trips")
    ids, mask = _start_empty_prompts(b, batch, s) if s.bos_id is not None else ("input_ids", "attention_mask")
    b.nodes.extend(_hoisted_weight_transposes(step))
    if s.num_beams == 1:
        _greedy(b, step, s, batch, has_rows, trips, ids, mask)
        kind = "greedy decoding"
    else:
        _beam_search(b, step, s, batch, has_rows, trips, ids, mask)
        kind = f"beam search ({s.num_beams} beams)"
    b.initializers.extend(step.graph.initializer)
    model = b.model("generation",
                    [helper.make_tensor_value_info("input_ids", INT64, ["batch", "prompt"]),
                     helper.make_tensor_value_info("attention_mask", INT64, ["batch", "prompt"])],
                    [helper.make_tensor_value_info("generated_ids", INT64, ["batch", "steps"])],
                    doc=f"{kind}, KV cache carried in a Loop")
    for opset in step.opset_import:  # the step's own domains (com.microsoft, ...)
        if opset.domain not in ("", "ai.onnx") and opset.domain not in {o.domain for o in model.opset_import}:
            model.opset_import.append(opset)
    model.ir_version = max(model.ir_version, step.ir_version)
    return model


def _start_empty_prompts(b: GraphBuilder, batch: str, s: DecodingSettings) -> tuple[str, str]:
    """start_empty_prompts as graph nodes."""
    column = b.op("Concat", [batch, b.const("start/one", [1])], "start/column_shape", axis=0)
    pads = b.op("ConstantOfShape", [column], "start/pads",
                value=helper.make_tensor("pad", INT64, [1], [s.pad_id]))
    unmasked = b.op("ConstantOfShape", [column], "start/zeros",
                    value=helper.make_tensor("zero", INT64, [1], [0]))
    ids = b.op("Concat", [pads, "input_ids"], "start/ids", axis=1)
    mask = b.op("Concat", [unmasked, "attention_mask"], "start/mask", axis=1)
    empty = b.op("Equal", [b.op("ReduceSum", [mask, b.const("start/axis1", [1])], "start/tokens", keepdims=1),
                           b.const("start/none", 0)], "start/empty")
    width = b.op("Shape", [mask], "start/width", start=1, end=2)
    last = b.op("Equal", [b.op("Range", [b.const("start/r0", 0), b.op("Squeeze", [width], "start/w"),
                                         b.const("start/r1", 1)], "start/cols"),
                          b.op("Sub", [width, b.const("start/one_w", 1)], "start/last_col")], "start/is_last")
    put = b.op("And", [empty, last], "start/put_bos")
    ids = b.op("Where", [put, b.const("start/bos", s.bos_id), ids], "start/ids_bos")
    mask = b.op("Where", [put, b.const("start/one_m", 1), mask], "start/mask_bos")
    return ids, mask


def _empty_past(b: GraphBuilder, rows: str, s: DecodingSettings) -> str:
    shape = b.op("Concat", [b.const("gen/layers", [s.layers]), rows, b.const("gen/heads_0_dim", [s.heads, 0, s.head_dim])],
                 "gen/past_shape", axis=0)
    return b.op("ConstantOfShape", [shape], "gen/empty_past", value=helper.make_tensor("zero", FLOAT, [1], [0.0]))


def _hoisted_weight_transposes(step: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The step's Transposes of its own weights (the LM head tied to the embedding reads
    Transpose(wte)), taken out of the step so they run in the outer graph, where ONNX Runtime
    folds them into constants when the session is made. Inside the Loop body they ran on every
    token: on GPT-2 small's architecture a 50,257 x 768 copy per new token, and the artifact was
    only 1.35x `generate` at batch 1."""
    weights = {i.name for i in step.graph.initializer}
    hoisted = [n for n in step.graph.node if n.op_type == "Transpose" and n.input[0] in weights]
    for node in hoisted:
        step.graph.node.remove(node)
    return hoisted


def _run_step(b: GraphBuilder, step: onnx.ModelProto, p: str, ids: str, mask: str, keys: str, values: str) -> None:
    """The captured step on the new tokens `ids`, positions from the mask as generate derives them."""
    new = b.op("Shape", [ids], f"{p}/new", start=1, end=2)
    count = b.op("Sub", [b.op("CumSum", [mask, b.constant(f"{p}/axis1", 1)], f"{p}/cumsum"),
                         b.constant(f"{p}/one", 1)], f"{p}/count")
    positions = b.op("Where", [b.op("Equal", [mask, b.constant(f"{p}/zero", 0)], f"{p}/masked"),
                               b.constant(f"{p}/one_pos", 1), count], f"{p}/positions")
    positions = b.op("Slice", [positions, b.op("Neg", [new], f"{p}/minus_new"), b.constant(f"{p}/end", [END]),
                               b.constant(f"{p}/axes1", [1])], f"{p}/new_positions")
    for name, value in zip(STEP_INPUTS, (ids, mask, positions, keys, values)):
        b.op("Identity", [value], STEP_PREFIX + name)
    b.nodes.extend(step.graph.node)


def _grown(b: GraphBuilder, p: str, mask: str) -> str:
    """The mask one column longer (the token chosen now is attended to from the next step on)."""
    rows = b.op("Shape", [mask], f"{p}/mask_rows", start=0, end=1)
    ones = b.op("ConstantOfShape", [b.op("Concat", [rows, b.constant(f"{p}/one_col", [1])], f"{p}/col_shape", axis=0)],
                f"{p}/ones", value=helper.make_tensor("one", INT64, [1], [1]))
    return b.op("Concat", [mask, ones], f"{p}/mask", axis=1)


def _loop_body(b: GraphBuilder, name: str, state: list[tuple[str, int]], outputs: list[tuple[str, int]]):
    """A Loop body graph: iteration, condition, then the carried state in and out."""
    return helper.make_graph(
        b.nodes, name,
        [helper.make_tensor_value_info(f"{name}/iteration", INT64, []),
         helper.make_tensor_value_info(f"{name}/cond_in", BOOL, []),
         *[helper.make_tensor_value_info(n, t, None) for n, t in state]],
        [helper.make_tensor_value_info(n, t, None) for n, t in outputs])


# --- greedy ------------------------------------------------------------------------------------
def _greedy(b: GraphBuilder, step, s: DecodingSettings, batch: str, has_rows: str, trips: str, ids: str,
            mask: str) -> None:
    empty_past = _empty_past(b, batch, s)
    running = b.op("Expand", [b.const("gen/true", True), batch], "gen/running0")
    body = _greedy_body(b.child(), step, s)
    *_, tokens = b.op(
        "Loop", [trips, has_rows, ids, mask, empty_past, empty_past, running, ids],
        ["gen/last_ids", "gen/last_mask", "gen/last_keys", "gen/last_values", "gen/last_running", "gen/all_ids",
         "gen/tokens"], body=body)
    # Zero iterations leave the scan output without a batch axis: give it [steps, batch] first.
    steps = b.op("Shape", [tokens], "gen/steps", start=0, end=1)
    # allowzero: a 0 in the shape means 0 rows, not "copy the input's dim" (which a [0] scan lacks)
    tokens = b.op("Reshape", [tokens, b.op("Concat", [steps, batch], "gen/scan_shape", axis=0)], "gen/tokens_2d",
                  allowzero=1)
    b.op("Transpose", [tokens], "generated_ids", perm=[1, 0])


def _greedy_body(b: GraphBuilder, step: onnx.ModelProto, s: DecodingSettings) -> onnx.GraphProto:
    p = "body"
    names = ("ids", "mask", "keys", "values", "running", "all_ids")
    types = (INT64, INT64, FLOAT, FLOAT, BOOL, INT64)
    ids, mask, keys, values, running, all_ids = (f"{p}/{n}_in" for n in names)
    _run_step(b, step, p, ids, mask, keys, values)
    logits = _processors(b, STEP_PREFIX + "logits", all_ids, mask, f"{p}/iteration", s)
    best = b.op("ArgMax", [logits], f"{p}/best", axis=1, keepdims=0)
    token = b.op("Where", [running, best, b.constant(f"{p}/pad", s.pad_id)], f"{p}/token")
    still = b.op("And", [running, b.op("Not", [b.op("Equal", [token, b.constant(f"{p}/eos", s.eos_id)],
                                                     f"{p}/is_eos")], f"{p}/not_eos")], f"{p}/running")
    go_on = b.op("ReduceMax", [b.op("Cast", [still], f"{p}/running_int", to=INT64)], f"{p}/any_int", keepdims=0)
    go_on = b.op("Cast", [go_on], f"{p}/cond", to=BOOL)
    column = b.op("Unsqueeze", [token, b.constant(f"{p}/axis1u", [1])], f"{p}/token_column")
    every = b.op("Concat", [all_ids, column], f"{p}/all_ids", axis=1)
    outputs = [go_on, column, _grown(b, p, mask), STEP_PREFIX + "present_keys", STEP_PREFIX + "present_values",
               still, every, b.op("Identity", [token], f"{p}/scan_token")]
    return _loop_body(b, p, list(zip((ids, mask, keys, values, running, all_ids), types)),
                      list(zip(outputs, (BOOL, *types, INT64))))


# --- beam search -------------------------------------------------------------------------------
BEAM_STATE = (("next_ids", INT64), ("mask", INT64), ("keys", FLOAT), ("values", FLOAT),
              ("running_tokens", INT64), ("running_scores", FLOAT),
              ("done_tokens", INT64), ("done_scores", FLOAT), ("done", BOOL), ("done_lengths", INT64),
              ("improvable", BOOL))


def _beam_search(b: GraphBuilder, step, s: DecodingSettings, batch: str, has_rows: str, trips: str, ids: str,
                 mask: str) -> None:
    """Beam search around `step`; the state per row and beam: the running hypotheses' new tokens
    [B, K, N] (filled with the pad id) and scores, the finished ones' tokens, scores, flags and
    lengths, and per row whether a running beam may still beat the finished ones."""
    p, k, n = "beam", s.num_beams, s.max_new_tokens
    rows = b.op("Mul", [batch, b.const(f"{p}/k", [k])], f"{p}/rows")
    flat_shape = b.op("Concat", [rows, b.op("Shape", [ids], f"{p}/width", start=1, end=2)], f"{p}/flat_shape", axis=0)
    ids = _repeat_rows(b, f"{p}/prompt_ids", ids, k, flat_shape)
    mask = _repeat_rows(b, f"{p}/prompt_mask", mask, k, flat_shape)
    beams = b.op("Concat", [batch, b.const(f"{p}/k_shape", [k])], f"{p}/beam_shape", axis=0)
    tokens_shape = b.op("Concat", [beams, b.const(f"{p}/n_shape", [n])], f"{p}/tokens_shape", axis=0)
    filled = b.op("ConstantOfShape", [tokens_shape], f"{p}/filled",
                  value=helper.make_tensor("fill", INT64, [1], [s.fill_id]))
    # beams 1.. start at -1e9, so that the first step chooses among the first beam's tokens only
    running_scores = b.op("Expand", [b.const(f"{p}/first_beam", [[0.0] + [NO_SCORE] * (k - 1)], np.float32), beams],
                          f"{p}/running_scores0")
    done_scores = b.op("Expand", [b.const(f"{p}/no_score", np.float32(NO_SCORE)), beams], f"{p}/done_scores0")
    done = b.op("Expand", [b.const(f"{p}/false", False), beams], f"{p}/done0")
    lengths = b.op("Expand", [b.const(f"{p}/zero", np.int64(0)), beams], f"{p}/done_lengths0")
    improvable = b.op("Expand", [b.const(f"{p}/true", True),
                                 b.op("Concat", [batch, b.const(f"{p}/one", [1])], f"{p}/row_shape", axis=0)],
                      f"{p}/improvable0")
    empty_past = _empty_past(b, rows, s)
    body = _beam_body(b.child(), step, s, ids)
    final = [f"{p}/final_{name}" for name, _ in BEAM_STATE]
    b.op("Loop", [trips, has_rows, ids, mask, empty_past, empty_past, filled, running_scores, filled, done_scores,
                  done, lengths, improvable], final, body=body)
    done_tokens, done_lengths = final[6], final[9]
    # the best finished hypothesis per row, cut to the longest of them (generate's output width)
    best = b.op("Gather", [done_tokens, b.const(f"{p}/slot0", np.int64(0))], f"{p}/best_tokens", axis=1)
    best_lengths = b.op("Gather", [done_lengths, b.const(f"{p}/slot0_len", np.int64(0))], f"{p}/best_lengths", axis=1)
    longest = b.op("ReduceMax", [b.op("Concat", [best_lengths, b.const(f"{p}/no_rows", [0])], f"{p}/lengths_or_0",
                                      axis=0)], f"{p}/longest", keepdims=1)
    b.op("Slice", [best, b.const(f"{p}/start", [0]), longest, b.const(f"{p}/axis1", [1])], "generated_ids")


def _repeat_rows(b: GraphBuilder, name: str, tensor: str, k: int, flat_shape: str) -> str:
    """repeat_interleave(k) over rows, as generate expands its inputs: row r becomes rows r*k .. r*k + k-1."""
    column = b.op("Unsqueeze", [tensor, b.const(f"{name}/axis1", [1])], f"{name}/unsqueezed")
    return b.op("Reshape", [b.op("Expand", [column, b.const(f"{name}/beams", [1, k, 1])], f"{name}/expanded"),
                            flat_shape], name)


def _beam_body(b: GraphBuilder, step: onnx.ModelProto, s: DecodingSettings, prompt_ids: str) -> onnx.GraphProto:
    """One iteration of transformers' _beam_search (the letters are its comments' a. to g.)."""
    p, k = "beam_body", s.num_beams
    state = [f"{p}/{name}_in" for name, _ in BEAM_STATE]
    ids, mask, keys, values, tokens, scores, done_tokens, done_scores, done, done_lengths, improvable = state
    t = f"{p}/iteration"
    batch = b.op("Shape", [scores], f"{p}/batch", start=0, end=1)
    rows = b.op("Mul", [batch, b.constant(f"{p}/k", [k])], f"{p}/rows")
    # a. the step, b. log-probs, processed, plus the running beam scores: [B, K * vocab]
    _run_step(b, step, p, ids, mask, keys, values)
    log_probs = b.op("LogSoftmax", [STEP_PREFIX + "logits"], f"{p}/log_probs", axis=-1)
    if _has_processors(s):
        so_far = b.op("Slice", [b.op("Reshape", [tokens, b.op("Concat", [rows, b.constant(f"{p}/minus1", [-1])],
                                                               f"{p}/flat_shape", axis=0)], f"{p}/flat_tokens"),
                                b.constant(f"{p}/zero_start", [0]), b.op("Unsqueeze", [t, b.constant(f"{p}/ax0", [0])],
                                                                        f"{p}/t_1d"),
                                b.constant(f"{p}/so_far_axis", [1])], f"{p}/tokens_so_far")
        sequences = b.op("Concat", [prompt_ids, so_far], f"{p}/sequences", axis=1)
        log_probs = _processors(b, log_probs, sequences, mask, t, s)
    vocab = b.op("Shape", [log_probs], f"{p}/vocab", start=1, end=2)
    by_beam_shape = b.op("Concat", [batch, b.constant(f"{p}/k_shape", [k]), vocab], f"{p}/by_beam_shape", axis=0)
    by_beam = b.op("Reshape", [log_probs, by_beam_shape], f"{p}/by_beam")
    summed = b.op("Add", [by_beam, b.op("Unsqueeze", [scores, b.constant(f"{p}/axis2", [2])], f"{p}/scores_3d")],
                  f"{p}/summed")
    summed = b.op("Reshape", [summed, b.op("Concat", [batch, b.constant(f"{p}/minus1_b", [-1])], f"{p}/row_shape",
                                           axis=0)], f"{p}/candidates")
    # c. the top 2K continuations over all beams: which beam, which token; their new tokens so far
    top_scores, top_index = b.op("TopK", [summed, b.constant(f"{p}/2k", [2 * k])], [f"{p}/top_scores", f"{p}/top_index"],
                                 axis=1, largest=1, sorted=1)
    vocab0 = b.op("Squeeze", [vocab], f"{p}/vocab0")
    source = b.op("Div", [top_index, vocab0], f"{p}/source_beam")
    token = b.op("Mod", [top_index, vocab0], f"{p}/token")
    column = b.op("Equal", [b.op("Range", [b.constant(f"{p}/r0", np.int64(0)), b.constant(f"{p}/n", np.int64(
        s.max_new_tokens)), b.constant(f"{p}/r1", np.int64(1))], f"{p}/columns"), t], f"{p}/this_column")
    candidates = b.op("Where", [column, b.op("Unsqueeze", [token, b.constant(f"{p}/axis2_t", [2])], f"{p}/token_3d"),
                                _gather_beams(b, f"{p}/from_source", tokens, source)], f"{p}/candidate_tokens")
    # d. which of them end here: EOS, or the last token generate may make
    new_length = b.op("Add", [t, b.constant(f"{p}/one_new", np.int64(1))], f"{p}/new_length")
    last = b.op("GreaterOrEqual", [new_length, b.constant(f"{p}/max_new", np.int64(s.max_new_tokens))], f"{p}/last_step")
    ends = b.op("Or", [b.op("Equal", [token, b.constant(f"{p}/eos", s.eos_id)], f"{p}/is_eos"), last], f"{p}/ends")
    # e. the best K that go on; the cache follows them
    kept_scores = b.op("Add", [top_scores, _penalty(b, f"{p}/ended", ends)], f"{p}/kept_scores")
    _, keep = b.op("TopK", [kept_scores, b.constant(f"{p}/k1", [k])], [f"{p}/keep_scores", f"{p}/keep"], axis=1,
                   largest=1, sorted=1)
    next_tokens = _gather_beams(b, f"{p}/next_tokens", candidates, keep)
    next_scores = b.op("GatherElements", [kept_scores, keep], f"{p}/next_scores", axis=1)
    parent = b.op("GatherElements", [source, keep], f"{p}/parent", axis=1)
    offsets = b.op("Mul", [b.op("Range", [b.constant(f"{p}/b0", np.int64(0)), b.op("Squeeze", [batch], f"{p}/batch0"),
                                          b.constant(f"{p}/b1", np.int64(1))], f"{p}/row_index"),
                           b.constant(f"{p}/k0", np.int64(k))], f"{p}/row_offset")
    parent_rows = b.op("Reshape", [b.op("Add", [parent, b.op("Unsqueeze", [offsets, b.constant(f"{p}/offset_axis", [1])],
                                                             f"{p}/offset_column")], f"{p}/parent_row"),
                                   b.constant(f"{p}/flat", [-1])], f"{p}/parent_rows")
    next_keys = b.op("Gather", [STEP_PREFIX + "present_keys", parent_rows], f"{p}/next_keys", axis=1)
    next_values = b.op("Gather", [STEP_PREFIX + "present_values", parent_rows], f"{p}/next_values", axis=1)
    next_ids = b.op("Reshape", [b.op("GatherElements", [token, keep], f"{p}/kept_token", axis=1),
                                b.constant(f"{p}/column_shape", [-1, 1])], f"{p}/next_ids")
    # f. finished hypotheses: the top K of the old ones and those of the first K candidates that end here
    length_scale = _length_scale(b, p, new_length, s)
    first_k = b.constant(f"{p}/first_k", [True] * k + [False] * k)
    just_done = b.op("And", [ends, first_k], f"{p}/just_done")
    final = b.op("Div", [top_scores, length_scale], f"{p}/final_scores")
    if s.early_stopping is True:  # a row whose K slots are all finished takes no more
        full = b.op("Cast", [b.op("ReduceMin", [b.op("Cast", [done], f"{p}/done_int", to=INT64),
                                                b.constant(f"{p}/axes1_full", [1])], f"{p}/full_int", keepdims=1)],
                    f"{p}/full", to=BOOL)
        final = b.op("Add", [final, _penalty(b, f"{p}/full", full)], f"{p}/not_when_full")
    final = b.op("Add", [final, _penalty(b, f"{p}/settled", b.op("Not", [improvable], f"{p}/not_improvable"))],
                 f"{p}/not_when_settled")
    final = b.op("Add", [final, _penalty(b, f"{p}/running", b.op("Not", [just_done], f"{p}/not_just_done"))],
                 f"{p}/not_when_running")
    merged_scores = b.op("Concat", [done_scores, final], f"{p}/merged_scores", axis=1)
    _, best = b.op("TopK", [merged_scores, b.constant(f"{p}/k2", [k])], [f"{p}/best_scores", f"{p}/best"], axis=1,
                   largest=1, sorted=1)
    merged_lengths = b.op("Concat", [done_lengths, b.op("Expand", [new_length, b.op("Shape", [token], f"{p}/2k_shape")],
                                                        f"{p}/candidate_lengths")], f"{p}/merged_lengths", axis=1)
    next_done_tokens = _gather_beams(b, f"{p}/next_done_tokens", b.op(
        "Concat", [done_tokens, candidates], f"{p}/merged_tokens", axis=1), best)
    next_done_scores = b.op("GatherElements", [merged_scores, best], f"{p}/next_done_scores", axis=1)
    next_done = b.op("GatherElements", [b.op("Concat", [done, just_done], f"{p}/merged_done", axis=1), best],
                     f"{p}/next_done", axis=1)
    next_lengths = b.op("GatherElements", [merged_lengths, best], f"{p}/next_lengths", axis=1)
    # g. can a running beam still beat the worst finished one? (generate's early-stop heuristic)
    next_improvable = _improvable(b, p, s, improvable, next_scores, next_done_scores, next_done, length_scale)
    go_on = b.op("And", [_any(b, f"{p}/any_improvable", next_improvable),
                         b.op("Not", [_all(b, f"{p}/all_end", ends)], f"{p}/some_go_on")], f"{p}/go_on")
    if s.early_stopping is True:
        go_on = b.op("And", [go_on, b.op("Not", [_all(b, f"{p}/all_done", next_done)], f"{p}/open")], f"{p}/go_on_open")
    outputs = [go_on, next_ids, _grown(b, p, mask), next_keys, next_values, next_tokens, next_scores,
               next_done_tokens, next_done_scores, next_done, next_lengths, next_improvable]
    return _loop_body(b, p, [(name, dtype) for name, (_, dtype) in zip(state, BEAM_STATE)],
                      list(zip(outputs, (BOOL, *(dtype for _, dtype in BEAM_STATE)))))


def _gather_beams(b: GraphBuilder, name: str, tokens: str, beams: str) -> str:
    """tokens [B, K, N] at beams [B, M] -> [B, M, N] (generate's _gather_beams)."""
    index = b.op("Unsqueeze", [beams, b.constant(f"{name}/axis2", [2])], f"{name}/index")
    shape = b.op("Concat", [b.op("Shape", [beams], f"{name}/beams_shape"), b.op("Shape", [tokens], f"{name}/n",
                                                                                 start=2, end=3)],
                 f"{name}/shape", axis=0)
    return b.op("GatherElements", [tokens, b.op("Expand", [index, shape], f"{name}/index_3d")], name, axis=1)


def _penalty(b: GraphBuilder, name: str, flags: str) -> str:
    """flags as generate adds them to scores: flag.to(float32) * -1e9."""
    return b.op("Mul", [b.op("Cast", [flags], f"{name}/float", to=FLOAT), b.constant(f"{name}/no_score", np.float32(
        NO_SCORE))], f"{name}/penalty")


def _length_scale(b: GraphBuilder, p: str, new_length: str, s: DecodingSettings) -> str:
    """new_length ** length_penalty, in double as Python computes it, then float32 as torch divides by it."""
    length = b.op("Cast", [new_length], f"{p}/length_double", to=TensorProto.DOUBLE)
    power = b.op("Pow", [length, b.constant(f"{p}/length_penalty", np.float64(s.length_penalty))], f"{p}/power")
    return b.op("Cast", [power], f"{p}/length_scale", to=FLOAT)


def _improvable(b: GraphBuilder, p: str, s: DecodingSettings, improvable: str, scores: str, done_scores: str,
                done: str, length_scale: str) -> str:
    """_check_early_stop_heuristic: the best running beam's score at the best length it may reach
    against the worst finished score (-1e9 while a slot is still empty)."""
    if s.early_stopping == "never" and s.length_penalty > 0:
        length_scale = b.constant(f"{p}/max_length_scale", np.float32(float(s.max_new_tokens) ** s.length_penalty))
    best = b.op("Div", [b.op("Slice", [scores, b.constant(f"{p}/s0", [0]), b.constant(f"{p}/s1", [1]),
                                       b.constant(f"{p}/s_axis", [1])], f"{p}/best_running"), length_scale],
                f"{p}/best_possible")
    worst = b.op("Where", [done, b.op("ReduceMin", [done_scores, b.constant(f"{p}/axes1_min", [1])], f"{p}/worst_done",
                                      keepdims=1), b.constant(f"{p}/no_score_w", np.float32(NO_SCORE))],
                 f"{p}/worst_finished")
    better = _any(b, f"{p}/beats", b.op("Greater", [best, worst], f"{p}/better"), axis=1)
    return b.op("And", [improvable, better], f"{p}/improvable")


def _any(b: GraphBuilder, name: str, flags: str, axis: int | None = None) -> str:
    """torch.any (over everything, or over `axis` keeping it)."""
    axes = [b.constant(f"{name}/axes", [axis])] if axis is not None else []
    most = b.op("ReduceMax", [b.op("Cast", [flags], f"{name}/int", to=INT64), *axes], f"{name}/max", keepdims=1)
    return b.op("Cast", [most if axis is not None else b.op("Squeeze", [most], f"{name}/scalar")], name, to=BOOL)


def _all(b: GraphBuilder, name: str, flags: str) -> str:
    least = b.op("ReduceMin", [b.op("Cast", [flags], f"{name}/int", to=INT64)], f"{name}/min", keepdims=0)
    return b.op("Cast", [least], name, to=BOOL)


# --- logits processors -------------------------------------------------------------------------
def _has_processors(s: DecodingSettings) -> bool:
    return s.repetition_penalty != 1.0 or s.no_repeat_ngram_size > 0 or s.min_new_tokens > 0


def _processors(b: GraphBuilder, scores: str, sequences: str, mask: str, iteration: str, s: DecodingSettings) -> str:
    """generate's processors, in its order, on `scores` [rows, vocab] (the logits for greedy, the
    log-probs for beam search) given `sequences` [rows, length] (prompt, its padding included, and
    the tokens so far) and the attention mask over them."""
    p = "processors"
    if s.repetition_penalty != 1.0:
        scores = _repetition_penalty(b, p, scores, sequences, mask, s.repetition_penalty)
    if s.no_repeat_ngram_size > 0:
        scores = _no_repeat_ngram(b, p, scores, sequences, s.no_repeat_ngram_size)
    if s.min_new_tokens > 0:
        early = b.op("Less", [iteration, b.constant(f"{p}/min_new", s.min_new_tokens)], f"{p}/early")
        vocab = b.op("Shape", [scores], f"{p}/vocab", start=1, end=2)
        is_eos = b.op("Equal", [b.op("Range", [b.constant(f"{p}/r0", 0), b.op("Squeeze", [vocab], f"{p}/v0"),
                                               b.constant(f"{p}/r1", 1)], f"{p}/columns"),
                                b.constant(f"{p}/eos", s.eos_id)], f"{p}/is_eos_column")
        scores = b.op("Where", [b.op("And", [early, is_eos], f"{p}/hide"), b.constant(f"{p}/minus_inf",
                                                                                     np.float32(-np.inf)), scores],
                      f"{p}/min_new_tokens")
    return scores


def _spare_column(b: GraphBuilder, name: str, scores: str) -> tuple[str, str]:
    """scores with one more column, where indices that must change nothing can point (generate's
    trick: pad, scatter, cut); returns (padded, vocab as [1])."""
    rows = b.op("Shape", [scores], f"{name}/rows", start=0, end=1)
    spare = b.op("ConstantOfShape", [b.op("Concat", [rows, b.constant(f"{name}/one", [1])], f"{name}/spare_shape",
                                          axis=0)], f"{name}/spare", value=helper.make_tensor("z", FLOAT, [1], [0.0]))
    return (b.op("Concat", [scores, spare], f"{name}/padded", axis=1),
            b.op("Shape", [scores], f"{name}/vocab", start=1, end=2))


def _cut_spare(b: GraphBuilder, name: str, padded: str, vocab: str) -> str:
    return b.op("Slice", [padded, b.constant(f"{name}/start", [0]), vocab, b.constant(f"{name}/axis", [1])], name)


def _repetition_penalty(b: GraphBuilder, p: str, scores: str, sequences: str, mask: str, penalty: float) -> str:
    """RepetitionPenaltyLogitsProcessor as generate builds it: every id so far but the prompt's
    leading padding (prompt_ignore_length = the first unmasked position)."""
    name = f"{p}/repetition"
    padded, vocab = _spare_column(b, name, scores)
    first = b.op("ArgMax", [b.op("Cast", [b.op("Not", [b.op("Equal", [mask, b.constant(f"{name}/zero", 0)],
                                                            f"{name}/masked")], f"{name}/unmasked")],
                                 f"{name}/unmasked_int", to=TensorProto.INT32)], f"{name}/first", axis=1, keepdims=1)
    length = b.op("Squeeze", [b.op("Shape", [sequences], f"{name}/length_1d", start=1, end=2)], f"{name}/length")
    positions = b.op("Range", [b.constant(f"{name}/r0", np.int64(0)), length, b.constant(f"{name}/r1", np.int64(1))],
                     f"{name}/positions")
    ignored = b.op("Less", [positions, first], f"{name}/ignored")
    vocab0 = b.op("Squeeze", [vocab], f"{name}/vocab0")
    ids = b.op("Where", [ignored, vocab0, b.op("Min", [sequences, vocab0], f"{name}/clamped")], f"{name}/ids")
    seen = b.op("GatherElements", [padded, ids], f"{name}/seen", axis=1)
    factor = b.constant(f"{name}/penalty", np.float32(penalty))
    scaled = b.op("Where", [b.op("Less", [seen, b.constant(f"{name}/zero_f", np.float32(0))], f"{name}/negative"),
                            b.op("Mul", [seen, factor], f"{name}/times"), b.op("Div", [seen, factor], f"{name}/over")],
                  f"{name}/scaled")
    return _cut_spare(b, f"{name}/penalised", b.op("ScatterElements", [padded, ids, scaled], f"{name}/scattered",
                                                   axis=1), vocab)


def _no_repeat_ngram(b: GraphBuilder, p: str, scores: str, sequences: str, size: int) -> str:
    """NoRepeatNGramLogitsProcessor: every window of `size` ids so far (the prompt's padding
    included) whose first size-1 ids equal the last size-1 ids bans its last id. Windows that do
    not match point at the spare column; before the first full window nothing matches."""
    name = f"{p}/no_repeat"
    padded, vocab = _spare_column(b, name, scores)
    axis = b.constant(f"{name}/axis1", [1])
    # window j (0..L-size) covers ids j..j+size-1; its i-th id is sequences[:, i : L-size+1+i]
    matches = None
    for i in range(size - 1):
        window_ids = b.op("Slice", [sequences, b.constant(f"{name}/from_{i}", [i]),
                                    b.constant(f"{name}/to_{i}", [i - size + 1]), axis], f"{name}/window_{i}")
        suffix_id = b.op("Slice", [sequences, b.constant(f"{name}/suffix_from_{i}", [i - size + 1]),
                                   b.constant(f"{name}/suffix_to_{i}", [i - size + 2] if i < size - 2 else [END]), axis],
                         f"{name}/suffix_{i}")
        same = b.op("Equal", [window_ids, suffix_id], f"{name}/same_{i}")
        matches = same if matches is None else b.op("And", [matches, same], f"{name}/match_{i}")
    banned = b.op("Slice", [sequences, b.constant(f"{name}/last_from", [size - 1]), b.constant(f"{name}/last_to", [END]),
                            axis], f"{name}/banned")
    if matches is None:  # size 1: every id so far is banned
        matches = b.op("Equal", [banned, banned], f"{name}/match_all")
    vocab0 = b.op("Squeeze", [vocab], f"{name}/vocab0")
    target = b.op("Where", [matches, b.op("Min", [banned, vocab0], f"{name}/clamped"), vocab0], f"{name}/target")
    minus_inf = b.op("Expand", [b.constant(f"{name}/minus_inf", np.float32(-np.inf)),
                                b.op("Shape", [target], f"{name}/target_shape")], f"{name}/minus_infs")
    return _cut_spare(b, f"{name}/banned_scores", b.op("ScatterElements", [padded, target, minus_inf],
                                                       f"{name}/scattered", axis=1), vocab)
