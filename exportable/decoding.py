"""Greedy decoding as one ONNX graph: a Loop around a captured causal-LM step (blocks.causal_lm),
the KV cache carried between iterations, equal token for token to transformers'

    model.generate(input_ids, attention_mask=mask, do_sample=False, num_beams=1, pad_token_id=pad,
                   max_new_tokens=N, min_new_tokens=M, repetition_penalty=R)[:, prompt_len:]

    model = greedy_loop(step_model, GreedySettings(...))   # input_ids, attention_mask -> generated_ids

Per iteration, as generate does it: positions from the mask (cumsum - 1, 1 where masked); the
step on the new tokens (the whole prompt in iteration 0, with an empty cache); the processors on
the last position's logits (repetition penalty over every id so far, padding included;
min_new_tokens hides EOS); argmax (first index on ties, like torch.argmax); rows that have
finished emit the pad id; the mask grows by one. The loop stops after N tokens or once every row
has emitted EOS, so `generated_ids` has as many columns as generate returns new tokens.

The step's weights become initializers of the outer graph (the Loop body reads them from there),
so the file holds them once.
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


@dataclass(frozen=True)
class GreedySettings:
    max_new_tokens: int
    eos_id: int
    pad_id: int
    layers: int
    heads: int
    head_dim: int
    min_new_tokens: int = 0
    repetition_penalty: float = 1.0
    bos_id: int | None = None  # an empty prompt starts from it (see start_empty_prompts)


def start_empty_prompts(input_ids: np.ndarray, attention_mask: np.ndarray, pad_id: int, bos_id: int):
    """What greedy_loop does to its inputs first, in numpy (the original pipeline applies it too):
    one padding column on the left, and a row with no token gets `bos_id` in its last column, as
    generate() starts from BOS when it is given no prompt. (A row that is all padding has no
    defined continuation: attention over nothing; transformers warns of right-padding then.)"""
    rows = input_ids.shape[0]
    ids = np.concatenate([np.full((rows, 1), pad_id, np.int64), input_ids], axis=1)
    mask = np.concatenate([np.zeros((rows, 1), np.int64), attention_mask], axis=1)
    empty = mask.sum(axis=1) == 0
    ids[empty, -1], mask[empty, -1] = bos_id, 1
    return ids, mask


def greedy_loop(step: onnx.ModelProto, s: GreedySettings) -> onnx.ModelProto:
    step = compose.add_prefix(onnx.inliner.inline_local_functions(step), STEP_PREFIX)
    b = GraphBuilder(max(o.version for o in step.opset_import if o.domain in ("", "ai.onnx")))
    batch = b.op("Shape", ["input_ids"], "gen/batch", start=0, end=1)
    has_rows = b.op("Greater", [b.op("Squeeze", [batch], "gen/batch0"), b.const("gen/zero_rows", 0)], "gen/has_rows")
    trips = b.op("Where", [has_rows, b.const("gen/max_new", s.max_new_tokens), b.const("gen/no_trips", 0)],
                 "gen/trips")
    past_shape = b.op("Concat", [b.const("gen/layers", [s.layers]), batch,
                                 b.const("gen/heads_0_dim", [s.heads, 0, s.head_dim])], "gen/past_shape", axis=0)
    empty_past = b.op("ConstantOfShape", [past_shape], "gen/empty_past",
                      value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0]))
    running = b.op("Expand", [b.const("gen/true", True), batch], "gen/running0")
    ids, mask = _start_empty_prompts(b, batch, s) if s.bos_id is not None else ("input_ids", "attention_mask")
    body = _body(b.child(), step, s)
    _, _, _, _, _, _, tokens = b.op(
        "Loop", [trips, has_rows, ids, mask, empty_past, empty_past, running, ids],
        ["gen/last_ids", "gen/last_mask", "gen/last_keys", "gen/last_values", "gen/last_running", "gen/all_ids",
         "gen/tokens"], body=body)
    # Zero iterations leave the scan output without a batch axis: give it [steps, batch] first.
    steps = b.op("Shape", [tokens], "gen/steps", start=0, end=1)
    # allowzero: a 0 in the shape means 0 rows, not "copy the input's dim" (which a [0] scan lacks)
    tokens = b.op("Reshape", [tokens, b.op("Concat", [steps, batch], "gen/scan_shape", axis=0)], "gen/tokens_2d",
                  allowzero=1)
    b.op("Transpose", [tokens], "generated_ids", perm=[1, 0])
    b.initializers.extend(step.graph.initializer)
    model = b.model("greedy_generation",
                    [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "prompt"]),
                     helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "prompt"])],
                    [helper.make_tensor_value_info("generated_ids", TensorProto.INT64, ["batch", "steps"])],
                    doc="greedy decoding, KV cache carried in a Loop")
    for opset in step.opset_import:  # the step's own domains (com.microsoft, ...)
        if opset.domain not in ("", "ai.onnx") and opset.domain not in {o.domain for o in model.opset_import}:
            model.opset_import.append(opset)
    model.ir_version = max(model.ir_version, step.ir_version)
    return model


def _start_empty_prompts(b: GraphBuilder, batch: str, s: GreedySettings) -> tuple[str, str]:
    """start_empty_prompts as graph nodes."""
    column = b.op("Concat", [batch, b.const("start/one", [1])], "start/column_shape", axis=0)
    pads = b.op("ConstantOfShape", [column], "start/pads",
                value=helper.make_tensor("pad", TensorProto.INT64, [1], [s.pad_id]))
    unmasked = b.op("ConstantOfShape", [column], "start/zeros",
                    value=helper.make_tensor("zero", TensorProto.INT64, [1], [0]))
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


def _body(b: GraphBuilder, step: onnx.ModelProto, s: GreedySettings) -> onnx.GraphProto:
    p = "body"
    state = ("ids", "mask", "keys", "values", "running", "all_ids")
    ids, mask, keys, values, running, all_ids = (f"{p}/{n}_in" for n in state)
    new = b.op("Shape", [ids], f"{p}/new", start=1, end=2)
    count = b.op("Sub", [b.op("CumSum", [mask, b.constant(f"{p}/axis1", 1)], f"{p}/cumsum"),
                         b.constant(f"{p}/one", 1)], f"{p}/count")
    positions = b.op("Where", [b.op("Equal", [mask, b.constant(f"{p}/zero", 0)], f"{p}/masked"),
                               b.constant(f"{p}/one_pos", 1), count], f"{p}/positions")
    positions = b.op("Slice", [positions, b.op("Neg", [new], f"{p}/minus_new"), b.constant(f"{p}/end", [2**62]),
                               b.constant(f"{p}/axes1", [1])], f"{p}/new_positions")
    for name, value in zip(STEP_INPUTS, (ids, mask, positions, keys, values)):
        b.op("Identity", [value], STEP_PREFIX + name)
    b.nodes.extend(step.graph.node)
    logits = _processors(b, STEP_PREFIX + "logits", all_ids, f"{p}/iteration", s)
    best = b.op("ArgMax", [logits], f"{p}/best", axis=1, keepdims=0)
    token = b.op("Where", [running, best, b.constant(f"{p}/pad", s.pad_id)], f"{p}/token")
    still = b.op("And", [running, b.op("Not", [b.op("Equal", [token, b.constant(f"{p}/eos", s.eos_id)],
                                                     f"{p}/is_eos")], f"{p}/not_eos")], f"{p}/running")
    go_on = b.op("ReduceMax", [b.op("Cast", [still], f"{p}/running_int", to=TensorProto.INT64)], f"{p}/any_int",
                 keepdims=0)
    go_on = b.op("Cast", [go_on], f"{p}/cond", to=TensorProto.BOOL)
    column = b.op("Unsqueeze", [token, b.constant(f"{p}/axis1u", [1])], f"{p}/token_column")
    grown = b.op("Concat", [mask, b.op("ConstantOfShape", [b.op("Shape", [column], f"{p}/col_shape")],
                                       f"{p}/ones", value=helper.make_tensor("one", TensorProto.INT64, [1], [1]))],
                 f"{p}/mask", axis=1)
    every = b.op("Concat", [all_ids, column], f"{p}/all_ids", axis=1)
    outputs = [go_on, column, grown, STEP_PREFIX + "present_keys", STEP_PREFIX + "present_values", still, every,
               b.op("Identity", [token], f"{p}/scan_token")]
    return helper.make_graph(
        b.nodes, "greedy_step",
        [helper.make_tensor_value_info(f"{p}/iteration", TensorProto.INT64, []),
         helper.make_tensor_value_info(f"{p}/cond_in", TensorProto.BOOL, []),
         *[helper.make_tensor_value_info(n, t, None) for n, t in zip(
             (ids, mask, keys, values, running, all_ids),
             (TensorProto.INT64, TensorProto.INT64, TensorProto.FLOAT, TensorProto.FLOAT, TensorProto.BOOL,
              TensorProto.INT64))]],
        [helper.make_tensor_value_info(o, t, None) for o, t in zip(
            outputs, (TensorProto.BOOL, TensorProto.INT64, TensorProto.INT64, TensorProto.FLOAT, TensorProto.FLOAT,
                      TensorProto.BOOL, TensorProto.INT64, TensorProto.INT64))])


def _processors(b: GraphBuilder, logits: str, all_ids: str, iteration: str, s: GreedySettings) -> str:
    p = "processors"
    if s.repetition_penalty != 1.0:
        # transformers' RepetitionPenaltyLogitsProcessor: every id so far, the prompt's padding too
        seen = b.op("GatherElements", [logits, all_ids], f"{p}/seen", axis=1)
        penalty = b.constant(f"{p}/penalty", np.float32(s.repetition_penalty))
        scaled = b.op("Where", [b.op("Less", [seen, b.constant(f"{p}/zero", np.float32(0))], f"{p}/negative"),
                                b.op("Mul", [seen, penalty], f"{p}/times"), b.op("Div", [seen, penalty], f"{p}/over")],
                      f"{p}/scaled")
        logits = b.op("ScatterElements", [logits, all_ids, scaled], f"{p}/penalised", axis=1)
    if s.min_new_tokens > 0:
        early = b.op("Less", [iteration, b.constant(f"{p}/min_new", s.min_new_tokens)], f"{p}/early")
        vocab = b.op("Shape", [logits], f"{p}/vocab", start=1, end=2)
        is_eos = b.op("Equal", [b.op("Range", [b.constant(f"{p}/r0", 0), b.op("Squeeze", [vocab], f"{p}/v0"),
                                               b.constant(f"{p}/r1", 1)], f"{p}/columns"),
                                b.constant(f"{p}/eos", s.eos_id)], f"{p}/is_eos_column")
        logits = b.op("Where", [b.op("And", [early, is_eos], f"{p}/hide"), b.constant(f"{p}/minus_inf",
                                                                                     np.float32(-np.inf)), logits],
                      f"{p}/min_new_tokens")
    return logits
