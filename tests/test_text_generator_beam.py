"""text_generator with --num-beams K and --no-repeat-ngram-size N: token for token what
transformers' `generate(num_beams=K, no_repeat_ngram_size=N, ...)` and `batch_decode` return.

The checkpoint: a seeded GPT-2 with the real GPT-2 tokenizer, initialised wide enough (std 0.5)
that its next-token distributions are peaked, and whose EOS is a token that beam search really
produces, so that beams end early and a finished hypothesis wins (on a near-uniform tiny model
the longest hypothesis always does). The fast tests build the decoding graph around one captured
step for each setting; the slow ones export through the recipe, which verifies its own cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_text_generator import PROMPTS

from exportable import api, registry
from exportable.decoding import DecodingSettings, decoding_loop
from exportable.exporters import onnx as onnx_exporter

NEW = 10  # new tokens at most
MANY = [*PROMPTS, "", "Привет мир", "مرحبا بالعالم", "日本語のテキスト"]  # mixed lengths, scripts, an empty prompt


def peaked_gpt2(tokenizer, eos_id: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(1)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4, n_positions=96,
                        initializer_range=0.5, bos_token_id=tokenizer.eos_token_id, eos_token_id=eos_id)
    model = GPT2LMHeadModel(config).eval()
    model.generation_config.eos_token_id = eos_id
    return model


class Original:
    """tokenizer + generate + batch_decode, from transformers alone, with the recipe's two input
    rules (docs/text-generation.md): one padding column on the left, and an empty prompt starts
    from BOS (a row of padding only has no defined continuation)."""

    def __init__(self, folder):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), padding_side="left")
        self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
        self.eos = int(self.model.generation_config.eos_token_id)

    def encode(self, prompts) -> tuple[np.ndarray, np.ndarray]:
        enc = self.tokenizer(prompts, return_tensors="np", padding=True)
        return enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)

    def __call__(self, prompts, **kwargs) -> tuple[np.ndarray, list[str]]:
        ids, mask = self.encode(prompts)
        ids = np.concatenate([np.full((len(prompts), 1), self.eos), ids], axis=1)
        mask = np.concatenate([np.zeros((len(prompts), 1), np.int64), mask], axis=1)
        empty = mask.sum(axis=1) == 0
        ids[empty, -1], mask[empty, -1] = self.model.generation_config.bos_token_id, 1
        with torch.no_grad():
            out = self.model.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                                      do_sample=False, max_new_tokens=NEW, pad_token_id=self.eos, **kwargs)
        new = out[:, ids.shape[1]:].numpy()
        return new, self.tokenizer.batch_decode(new, skip_special_tokens=True)


@pytest.fixture(scope="module")
def early_beams(tmp_path_factory, gpt2_dir):
    """The peaked checkpoint whose EOS is the first token of beam search's (K=2) answer to the
    first prompt, from the third on, that makes that prompt end early; its folder."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gpt2_dir), padding_side="left")
    enc = tokenizer(PROMPTS[:1], return_tensors="pt")
    probe = peaked_gpt2(tokenizer, tokenizer.eos_token_id)

    def beams(eos):
        probe.generation_config.eos_token_id = eos
        out = probe.generate(**enc, num_beams=2, do_sample=False, max_new_tokens=NEW, pad_token_id=eos)
        return out[0, enc["input_ids"].shape[1]:].tolist()

    answer = beams(tokenizer.eos_token_id)
    eos = next(t for i, t in enumerate(answer) if i >= 2 and t not in answer[:i] and len(beams(t)) < NEW)
    folder = tmp_path_factory.mktemp("gpt2_beams") / "model"
    peaked_gpt2(tokenizer, eos).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def original(early_beams):
    return Original(early_beams)


@pytest.fixture(scope="module")
def step(early_beams, tmp_path_factory):
    """The recipe's captured decoder step of the checkpoint, and its cache shape."""
    recipe = registry.get("text_generator")(model=str(early_beams), inputs="ids")
    path = tmp_path_factory.mktemp("step") / "step.onnx"
    captured = onnx_exporter.export(recipe.wrapper_for("onnx"), recipe.capture_feed("onnx"),
                                    recipe.model_input_specs("onnx"), recipe.model_output_specs("onnx"), path)
    return captured.model, recipe.cache_shape()


def run_graph(step, original, prompts, **settings) -> np.ndarray:
    import onnxruntime as ort

    model, (layers, heads, head_dim) = step
    graph = decoding_loop(model, DecodingSettings(
        max_new_tokens=NEW, eos_id=original.eos, pad_id=original.eos, layers=layers, heads=heads, head_dim=head_dim,
        bos_id=int(original.model.generation_config.bos_token_id), **settings))
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    ids, mask = original.encode(prompts)
    return session.run(["generated_ids"], {"input_ids": ids, "attention_mask": mask})[0]


@pytest.mark.parametrize("beams", [2, 3])
def test_beam_search_equals_generate(step, original, beams):
    """Batch 1, whose best hypothesis ends with EOS before max_new_tokens (so generate returns
    fewer columns), and a mixed batch of many scripts with an empty prompt, which runs to
    max_new_tokens while that row is padded with EOS after its end."""
    alone = run_graph(step, original, PROMPTS[:1], num_beams=beams)
    np.testing.assert_array_equal(alone, original(PROMPTS[:1], num_beams=beams)[0])
    assert alone.shape[1] < NEW and alone[0, -1] == original.eos  # ended by EOS
    batch = run_graph(step, original, MANY, num_beams=beams)
    np.testing.assert_array_equal(batch, original(MANY, num_beams=beams)[0])
    assert batch.shape == (len(MANY), NEW)  # another row ran to max_new_tokens
    assert (batch[0, alone.shape[1]:] == original.eos).all()  # the early row, padded


@pytest.mark.parametrize("settings", [
    {"no_repeat_ngram_size": 2},
    {"num_beams": 2, "no_repeat_ngram_size": 1},
    {"num_beams": 4, "no_repeat_ngram_size": 3, "repetition_penalty": 1.3, "min_new_tokens": 5},
], ids=["greedy_ngram2", "beams2_ngram1", "beams4_ngram3_penalty_min5"])
def test_processors_equal_generate(step, original, settings):
    """no_repeat_ngram_size (over the whole sequence, prompt padding included), greedy and with
    beams, beside the repetition penalty and min_new_tokens, as generate applies them to the
    logits (greedy) or the log-probs (beams); the setting changes what generate returns."""
    got = run_graph(step, original, MANY, **settings)
    want = original(MANY, **settings)[0]
    np.testing.assert_array_equal(got, want)
    plain = original(MANY, num_beams=settings.get("num_beams", 1))[0]
    assert plain.shape != want.shape or (plain != want).any()


def test_repetition_penalty_skips_the_prompts_padding(step, original):
    """generate 5 leaves the prompt's leading padding out of the repetition penalty (its
    prompt_ignore_length); the padding id is EOS here, and penalising it would keep the first
    prompt from ending."""
    got = run_graph(step, original, PROMPTS, repetition_penalty=1.3)
    want = original(PROMPTS, repetition_penalty=1.3)[0]
    np.testing.assert_array_equal(got, want)
    assert (want[0] == original.eos).any()


@pytest.mark.slow
def test_recipe_with_beams_and_ngrams_text_in_text_out(early_beams, original, tmp_path):
    """The recipe's export (its own cases verified against generate) with --num-beams 3
    --no-repeat-ngram-size 2; fresh prompts run by onnxruntime equal generate + batch_decode."""
    from exportable.runtime import load

    options = {"num_beams": 3, "no_repeat_ngram_size": 2}
    result = api.export_recipe("text_generator", out=tmp_path / "artifact", model=str(early_beams),
                               max_new_tokens=NEW, **options)
    assert result.passed
    runner = load(tmp_path / "artifact" / "model.onnx")
    for batch in (PROMPTS[:1], MANY):
        got = runner.run({"text": np.array(batch, dtype=object)})
        ids, texts = original(batch, **options)
        np.testing.assert_array_equal(got["generated_ids"], ids)
        assert got["generated_text"].tolist() == texts
    empty = runner.run({"text": np.zeros(0, dtype=object)})
    assert empty["generated_ids"].shape == (0, 0) and empty["generated_text"].shape == (0,)


@pytest.mark.slow
def test_default_model_exports_with_beams(tmp_path):
    """The default GPT-Neo with --num-beams 2: the recipe verifies its validation cases (batch 1,
    mixed scripts, an empty prompt, past the local window, over the context) against generate."""
    result = api.export_recipe("text_generator", out=tmp_path / "artifact", num_beams=2)
    assert result.passed
