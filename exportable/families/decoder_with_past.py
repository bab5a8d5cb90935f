"""`text_generator --inputs past`: the decoder alone, one step with its KV cache in and out, in
the shape Optimum's ORTModelForCausalLM (`decoder_with_past_model.onnx`) and onnxruntime-genai
users drive from their own loop:

    input_ids [B, T], attention_mask [B, past + T], position_ids [B, T],
    past_key_values.{i}.key / .value [B, heads, past, head_dim]
      -> logits [B, T, vocab], present.{i}.key / .value [B, heads, past + T, head_dim]

The original is the transformers model's forward with a DynamicCache holding the same past. Each
validation case is a batch of the recipe's prompts, tokenized as generate() gets them (left
padding, an empty prompt started from BOS), cut into a past and new tokens; the past tensors
are what the transformers model itself returns on the past part, so the cases are real caches.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import DynamicCache

from exportable.recipe import Case, TensorSpec, Tolerance

# Per case, in turn: the whole prompt (prefill, empty cache), one new token (the decode step),
# three new tokens after a cache (a chunk, as speculative decoders and chunked prefill feed).
SPLITS = ("prefill", 1, 3)
# Float32 logits and caches of a different kernel order: a few ulps of the largest values.
TOLERANCES = {"logits": Tolerance(atol=1e-4, rtol=1e-4), "present": Tolerance(atol=1e-5, rtol=1e-4)}


def cache_names(layers: int, prefix: str) -> list[str]:
    return [f"{prefix}.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]


def input_specs(layers: int, heads: int, head_dim: int) -> tuple[TensorSpec, ...]:
    past = ("batch", heads, "past", head_dim)
    return (TensorSpec("input_ids", "int64", ("batch", "new"), "the new tokens"),
            TensorSpec("attention_mask", "int64", ("batch", "total"), "past + new; 0 for left padding"),
            TensorSpec("position_ids", "int64", ("batch", "new"), "cumsum(mask) - 1 of the new tokens"),
            *(TensorSpec(n, "float32", past, "the cache of the tokens so far")
              for n in cache_names(layers, "past_key_values")))


def output_specs(layers: int, heads: int, head_dim: int, vocab: int) -> tuple[TensorSpec, ...]:
    present = ("batch", heads, "total", head_dim)
    return (TensorSpec("logits", "float32", ("batch", "new", vocab), "logits of every new position"),
            *(TensorSpec(n, "float32", present, "past + new: the next step's past")
              for n in cache_names(layers, "present")))


def tolerances(layers: int) -> dict[str, Tolerance]:
    return {"logits": TOLERANCES["logits"], **dict.fromkeys(cache_names(layers, "present"), TOLERANCES["present"])}


def positions(mask: np.ndarray) -> np.ndarray:
    """generate()'s position ids: cumsum(mask) - 1, and 1 on padding."""
    count = np.cumsum(mask, axis=1) - 1
    return np.where(mask == 0, 1, count).astype(np.int64)


def run_step(model, feed: dict[str, np.ndarray], layers: int) -> dict[str, np.ndarray]:
    """The original: the transformers model's forward on the new tokens, its cache holding the past."""
    past = [torch.from_numpy(np.ascontiguousarray(feed[n])) for n in cache_names(layers, "past_key_values")]
    cache = DynamicCache(ddp_cache_data=[(past[2 * i], past[2 * i + 1]) for i in range(layers)], config=model.config)
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(feed["input_ids"]), attention_mask=torch.from_numpy(feed["attention_mask"]),
                    position_ids=torch.from_numpy(feed["position_ids"]), past_key_values=cache, use_cache=True)
    result = {"logits": out.logits.numpy()}
    for i, layer in enumerate(out.past_key_values.layers[:layers]):
        result[f"present.{i}.key"], result[f"present.{i}.value"] = layer.keys.numpy(), layer.values.numpy()
    return result


def step_case(model, name: str, ids: np.ndarray, mask: np.ndarray, split, shape: tuple[int, int, int]) -> Case:
    """A prompt batch (already as generate() gets it) cut at `split` into a real cache and new tokens.

    The new tokens are real tokens in every row: a left-padding position attends to nothing, and
    what a kernel returns there differs (the exported graph's -inf-free mask vs torch's sdpa:
    0.04 apart on a seeded GPT-2) though no later step reads it. So columns that are padding in
    every row are dropped, and the new tokens are at most the shortest row's length."""
    layers, heads, head_dim = shape
    keep = mask.sum(axis=0) > 0
    ids, mask = ids[:, keep], mask[:, keep]
    width, shortest = ids.shape[1], int(mask.sum(axis=1).min())
    new = min(width if split == "prefill" else split, shortest)
    cut = width - new
    empty = np.zeros((ids.shape[0], heads, 0, head_dim), np.float32)
    feed = {"input_ids": ids[:, :cut], "attention_mask": mask[:, :cut], "position_ids": positions(mask)[:, :cut],
            **dict.fromkeys(cache_names(layers, "past_key_values"), empty)}
    past = run_step(model, feed, layers) if cut else {}
    data = {"input_ids": ids[:, cut:], "attention_mask": mask, "position_ids": positions(mask)[:, cut:]}
    for n in cache_names(layers, "past_key_values"):
        data[n] = past.get(n.replace("past_key_values", "present"), empty)
    return Case(f"{name}_past{cut}_new{new}", data)
