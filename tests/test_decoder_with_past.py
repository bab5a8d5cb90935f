"""text_generator --inputs past: the decoder step alone, in the shape Optimum's
ORTModelForCausalLM and onnxruntime-genai users drive from their own loop. The export verifies
each step against the transformers forward on real caches; here a plain loop over the file, run
by onnxruntime, generates exactly what transformers' generate does."""

from __future__ import annotations

import numpy as np
import pytest
from test_text_generator import PROMPTS, generate, gpt2_checkpoint

from exportable import api
from exportable.runtime import load


def greedy_with_the_step(runner, input_ids: np.ndarray, mask: np.ndarray, layers: int, steps: int) -> np.ndarray:
    """How an Optimum user drives decoder_with_past: prefill, then one token at a time, present -> past."""
    first = runner.run({"input_ids": input_ids, "attention_mask": mask, "position_ids": positions(mask),
                        **empty_cache(input_ids.shape[0], runner, layers)})
    out, tokens = first, []
    for _ in range(steps):
        token = out["logits"][:, -1].argmax(axis=1).astype(np.int64)[:, None]
        tokens.append(token)
        mask = np.concatenate([mask, np.ones_like(token)], axis=1)
        past = {f"past_key_values.{i}.{k}": out[f"present.{i}.{k}"] for i in range(layers) for k in ("key", "value")}
        out = runner.run({"input_ids": token, "attention_mask": mask, "position_ids": positions(mask)[:, -1:], **past})
    return np.concatenate(tokens, axis=1)


def positions(mask):
    return np.where(mask == 0, 1, np.cumsum(mask, axis=1) - 1).astype(np.int64)


def empty_cache(rows, runner, layers):
    spec = next(i for i in runner.session.get_inputs() if i.name == "past_key_values.0.key")
    heads, dim = spec.shape[1], spec.shape[3]
    return {f"past_key_values.{i}.{k}": np.zeros((rows, heads, 0, dim), np.float32)
            for i in range(layers) for k in ("key", "value")}


@pytest.mark.slow
def test_decoder_with_past_drives_a_loop_equal_to_generate(tmp_path, gpt2_dir):
    from transformers import AutoTokenizer

    folder = gpt2_checkpoint(tmp_path / "gpt2", gpt2_dir)
    result = api.export_recipe("text_generator", out=tmp_path / "past", model=str(folder), inputs="past")
    assert result.passed
    runner = load(tmp_path / "past" / "model.onnx")
    names = [i.name for i in runner.session.get_inputs()]
    assert names == ["input_ids", "attention_mask", "position_ids", "past_key_values.0.key",
                     "past_key_values.0.value", "past_key_values.1.key", "past_key_values.1.value"]
    assert [o.name for o in runner.session.get_outputs()][:2] == ["logits", "present.0.key"]
    tokenizer = AutoTokenizer.from_pretrained(str(folder), padding_side="left")
    tokenizer.pad_token = tokenizer.eos_token
    enc = tokenizer(PROMPTS, return_tensors="np", padding=True)
    got = greedy_with_the_step(runner, enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64),
                               layers=2, steps=8)
    np.testing.assert_array_equal(got, generate(folder, PROMPTS, 8)[0])


def test_what_the_step_alone_cannot_honour_is_refused_up_front(tmp_path):
    from conftest import run_cli

    for args, message in ((["--variants", "onnx-int8"], "export them with --inputs text or ids"),
                          (["--num-beams", "3"], "--num-beams set the decoding loop, which --inputs past leaves")):
        done = run_cli("recipe", "text_generator", "--inputs", "past", *args, "--out", tmp_path / "x")
        assert done.returncode == 2 and message in done.stderr, done.stderr
        assert done.stderr.strip().count("\n") == 0 and not (tmp_path / "x").exists()
