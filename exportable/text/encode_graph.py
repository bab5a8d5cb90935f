"""The tokenizer of any supported kind as one ONNX graph: text [batch] -> input_ids, attention_mask
(and token_type_ids when the model takes them) [batch, sequence], equal to the Hugging Face fast
tokenizer called with padding=True, truncation=True, max_length=plan.max_length.

    plan = plan_from_hf(AutoTokenizer.from_pretrained(DIR), max_length=256)
    model = build_text_graph(plan, opset=18)

Stages: rows (one extra row, so no string op sees an empty tensor; dropped at the end), the
kind's content ids (ragged), then pack: the post-processor's specials, truncation (specials kept),
padding on the tokenizer's side (exportable.text.ragged.pack_template). WordPiece keeps its own
graph (bert_graph), built from the model's files by TokenizerSettings.
"""

from __future__ import annotations

import json

import onnx
from onnx import TensorProto, helper

from ..onnx_builder import GraphBuilder
from .added import added_tokens, split_added
from .bytelevel import byte_level_ids, byte_level_problem, nul_as_standin
from .plan import TokenizerPlan
from .ragged import append_optional, pack_template, split_bounds
from .sentencepiece import sentencepiece_problem, sentencepiece_segment_ids
from .settings import TokenizerError

MIN_OPSET = 13
IN_GRAPH = ("wordpiece", "bytelevel-bpe", "unigram", "sentencepiece-bpe")  # the kinds exportable builds as graph nodes
DUMMY_ROW = "\x01"  # the appended row: never empty, so every per-row op has a column to work on


def text_graph_problem(plan: TokenizerPlan) -> str | None:
    """Why `plan` cannot be built as a graph (one line), or None."""
    if plan.kind == "bytelevel-bpe":
        return byte_level_problem(plan.backend)
    if plan.kind in ("unigram", "sentencepiece-bpe"):
        return sentencepiece_problem(plan.backend)
    return f"model.type: {plan.kind} tokenizers are not built into the graph yet (supported: {', '.join(IN_GRAPH)})"


def content_ids(b: GraphBuilder, texts: str, plan: TokenizerPlan) -> tuple[str, str]:
    """(ids, splits): each text's content ids, the kind's own stage."""
    if plan.kind == "bytelevel-bpe":
        return byte_level_ids(b, texts, plan.backend)
    # SentencePiece kinds: added tokens cut out first (on NUL-free text: the ortx regex op reads C
    # strings), each text run through sentencepiece, the added ids put back in their places.
    sent, marker_is_nul = nul_as_standin(b, texts)
    pieces = split_added(b, sent, added_tokens(plan.backend), "added")
    runs = b.op("Where", [pieces.is_added, b.const("spm/no_text", ""), pieces.segments], "spm/runs")
    ids, segment_splits = sentencepiece_segment_ids(b, runs, pieces.first, plan.backend, marker_is_nul)
    ids, segment_splits = append_optional(b, ids, segment_splits, pieces.added_ids, pieces.is_added, "spm/added")
    return ids, b.op("Gather", [segment_splits, pieces.splits], "spm/splits", axis=0)


def build_text_graph(plan: TokenizerPlan, opset: int = 18) -> onnx.ModelProto:
    newest = onnx.defs.onnx_opset_version()
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise TokenizerError(f"opset={opset!r} is not supported; use {MIN_OPSET}..{newest}")
    problem = text_graph_problem(plan)
    if problem:
        raise TokenizerError(f"{plan.source}: tokenizer.json {problem}")
    b = GraphBuilder(opset)
    texts = b.op("Concat", ["text", b.const("rows/dummy", [DUMMY_ROW])], "rows/texts", axis=0)
    ids, splits = content_ids(b, texts, plan)
    real = b.op("Slice", [splits, b.const("rows/0", [0]), b.const("rows/-1", [-1])], "rows/real_splits")
    starts, _, lengths = split_bounds(b, real, "rows/span")
    pack_template(b, ids, starts, lengths, max_length=plan.max_length, prefix=plan.prefix, suffix=plan.suffix,
                  pad=plan.pad, text_type=plan.text_type, padding_side=plan.padding_side,
                  truncation_side=plan.truncation_side, outputs=plan.outputs)
    model = b.model(
        f"{plan.kind.replace('-', '_')}_tokenizer",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["batch"])],
        [helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"]) for name in plan.outputs],
        doc=f"{plan.kind} tokenizer from {plan.source}: UTF-8 text -> model inputs, HF fast-tokenizer parity",
    )
    helper.set_model_props(model, {"exportable.tokenizer": json.dumps(plan.metadata(), sort_keys=True)})
    return model
