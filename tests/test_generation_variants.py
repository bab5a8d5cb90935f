"""text_generator's quantized variants (onnx-int8, onnx-int4): the decoding Loop's weight MatMuls
really are quantized, the report's token-identical fractions are measured against transformers'
`generate`, and the token-agreement gate refuses a variant whose weights are broken."""

from __future__ import annotations

import collections
import json

import numpy as np
import onnx
import pytest
from test_text_generator import generate

from exportable import api, registry
from exportable.accelerate import variants
from exportable.accelerate.loop_weights import loop_bodies
from exportable.errors import ParityError
from exportable.parity import judge_outputs, judge_overall
from exportable.recipe import TOKENS, decoded_tokens
from exportable.runtime import load

NEW_TOKENS = 8


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    out = tmp_path_factory.mktemp("quantized") / "artifact"
    result = api.export_recipe("text_generator", out=out, max_new_tokens=NEW_TOKENS, variants="onnx-int8,onnx-int4")
    assert result.passed
    return out


def body_ops(path) -> collections.Counter:
    model = onnx.load(str(path))
    return collections.Counter(n.op_type for body in loop_bodies(model.graph) for n in body.node)


@pytest.mark.slow
def test_quantized_ops_sit_inside_the_decoding_loop(quantized):
    """Every weight MatMul of the step (attention, MLP, the LM head tied to wte: 13 in the
    2-layer default GPT-Neo) is quantized inside the Loop body; the attention products stay."""
    fp32, int8, int4 = (body_ops(quantized / f) for f in ("model.onnx", "model.int8.onnx", "model.int4.onnx"))
    weights = fp32["MatMul"] - int8["MatMul"]
    assert weights == 13 and int8["DynamicQuantizeMatMul"] == weights and int4["MatMulNBits"] == weights
    assert int8["MatMul"] == int4["MatMul"] == 4  # Q @ K^T and softmax @ V of two layers


@pytest.mark.slow
def test_report_counts_prompts_identical_to_generate(quantized):
    """The report's rows that differ, for the mixed-script case, are the rows where the variant's
    ids differ from transformers' generate run here; overall fractions are in the summary."""
    report = json.loads((quantized / "report.json").read_text())
    prompts = next(c for c in registry.get("text_generator")().validation_cases() if c.name == "mixed").data
    want, _ = generate(registry.get("text_generator")().model_dir, prompts, NEW_TOKENS)
    for name, file in (("onnx-int8", "model.int8.onnx"), ("onnx-int4", "model.int4.onnx")):
        got = load(quantized / file).run({"text": np.array(prompts, dtype=object)})["generated_ids"]
        differ = [i for i in range(len(prompts)) if not np.array_equal(got[i], want[i])]
        case = next(c for c in report["parity"][name]["cases"] if c["case"] == "mixed")
        ids = next(m for m in case["metrics"] if m["output"] == "generated_ids")
        assert ids["differing_rows"] == differ and ids["identical_rows"] == len(prompts) - len(differ)
        summary = next(r for r in report["parity"][name]["summary"] if r["output"] == "generated_ids")
        assert summary["rows"] == 15 and summary["identical_fraction"] == round(summary["identical_rows"] / 15, 4)


@pytest.mark.slow
def test_a_variant_with_broken_weights_fails_the_export(tmp_path, monkeypatch):
    """The int8 transform with every quantized weight zeroed: the first tokens no longer agree
    with generate's, and the export is refused with nothing written."""
    real = variants.quantize_loop_int8

    def zeroed(model):
        done = real(model)
        for init in done.model.graph.initializer:
            if init.name.endswith("/int8") or init.name.endswith("/int8_t"):
                init.CopyFrom(onnx.numpy_helper.from_array(np.zeros_like(onnx.numpy_helper.to_array(init)), init.name))
        return done

    monkeypatch.setattr(variants, "quantize_loop_int8", zeroed)
    with pytest.raises(ParityError, match="onnx-int8 artifact.*first tokens agree on 0/15 rows over all cases"):
        api.export_recipe("text_generator", out=tmp_path / "broken", max_new_tokens=2, variants="onnx-int8")
    assert not (tmp_path / "broken").exists()


def test_token_agreement_gates_first_tokens_over_all_cases_and_text_follows_ids():
    ids_tol, text_tol = TOKENS.token_agreement(0.75), decoded_tokens("generated_ids").token_agreement(0.75)
    tolerances = {"generated_ids": ids_tol, "generated_text": text_tol}
    want = {"generated_ids": np.array([[1, 2, 3], [4, 5, 6]]), "generated_text": np.array(["a", "b"], dtype=object)}

    def case(name, ids, texts):
        return judge_outputs(name, {"generated_ids": np.array(ids), "generated_text": np.array(texts, dtype=object)},
                             want, tolerances)

    # one first token of four differs (75 %: passes); later tokens and a shorter row are reported only
    results = judge_overall([case("a", [[1, 2, 9], [4, 5, 6]], ["a2", "b"]), case("b", [[1, 2], [7, 5]], ["a", "c"])],
                            tolerances)
    assert all(r.passed for r in results)
    assert [m.identical_rows for r in results for m in r.metrics] == [1, 1, 0, 1]
    # two of four: below the bar, the case that holds them fails; a text row that changes where
    # its ids did not breaks `follows`
    results = judge_overall([case("a", [[9, 2, 3], [4, 5, 6]], ["a", "x"]), case("b", [[1, 2, 3], [7, 5, 6]],
                                                                                 ["a", "c"])], tolerances)
    assert "first tokens agree on 2/4 rows over all cases (50%) < 75%" in results[0].failures["generated_ids"]
    assert results[0].failures["generated_text"] == "rows [1] differ where generated_ids is identical"
    assert "generated_ids" in results[1].failures and "generated_text" not in results[1].failures
