"""What a bench feeds: texts of exactly 16 / 128 tokens, the varied corpus, or the recipe's own
bench cases; and the work in them (real tokens, FLOPs per token)."""

from __future__ import annotations

import random

from .. import accelerate, samples
from ..accelerate.unpad import layer_nodes
from ..errors import InputError
from ..recipe import Case
from ..textinput import TextInputs

LENGTHS = {"short": 16, "long": 128}
BATCHES = (1, 8, 32)


def text_of_tokens(recipe, tokens: int, seed: int) -> str:
    """A text that the recipe's own tokenizer turns into exactly `tokens` ids ([CLS] and [SEP]
    included), built from the sample vocabulary; deterministic for a seed."""
    rng = random.Random(seed)
    words = list(samples.WORDS)

    def count(text):
        return int(recipe.tokenize([text])[recipe.id_input_names[0]].shape[1])

    special = count("")
    text = ""
    for _ in range(tokens * 4):
        have = count(text)
        if have >= tokens:
            break
        rng.shuffle(words)
        for word in words:
            candidate = f"{text} {word}".strip()
            if count(candidate) <= tokens:
                text = candidate
                break
        else:
            break
    if count(text) != tokens and tokens > special:
        raise InputError(f"bench: cannot build a text of exactly {tokens} tokens for {recipe.name}")
    return text


def bench_case(recipe, length: str, batch: int) -> Case:
    """The inputs for one (length, batch): the recipe's `bench_case` when it has one; for text
    recipes `batch` different texts of exactly 16 (short) or 128 (long) tokens, or for `mixed`
    the varied corpus in order (real padding); else the validation cases' data, repeated."""
    if recipe.declares_bench_case():
        return recipe.bench_case(length, batch)

    if isinstance(recipe, TextInputs):
        if length == "mixed":
            texts = [t for t in accelerate.corpus_texts() if t.strip()]
            return Case(f"mixed_b{batch}", texts[:batch])
        tokens = LENGTHS[length]
        cache = _text_cache.setdefault((recipe.name, tokens), {})
        texts = []
        for i in range(batch):
            if i not in cache:
                cache[i] = text_of_tokens(recipe, tokens, seed=1000 * tokens + i)
            texts.append(cache[i])
        return Case(f"{length}_b{batch}", texts)
    data = []
    for case in recipe.validation_cases():
        if isinstance(case.data, (list, tuple)):
            data.extend(case.data)
    if not data:
        raise InputError(f"bench: recipe {recipe.name} declares no bench_case(length, batch) and its validation "
                         "cases are not lists; add a bench_case method")
    return Case(f"{length}_b{batch}", (data * (batch // len(data) + 1))[:batch])


_text_cache: dict = {}


def real_tokens(recipe, case: Case) -> int | None:
    """Non-padding tokens in a text case (the work a perfect engine must do), else None."""
    if not isinstance(case.data, (list, tuple)) or not all(isinstance(t, str) for t in case.data):
        return None
    ids = recipe.tokenize(list(case.data))
    if ids is None:
        return None
    mask = ids.get("attention_mask")
    return int(mask.sum()) if mask is not None else int(next(iter(ids.values())).size)


def flops_per_token(model) -> float | None:
    """2 * K * N per token for every MatMul/Gemm/Attention with a constant 2-D weight (the dense
    layers); the attention score products (O(sequence) per token) are not counted."""
    if model is None:
        return None

    inits = {i.name: list(i.dims) for i in model.graph.initializer}
    total = 0
    for node in layer_nodes(model.graph):  # an optimized graph keeps its layers inside an If
        if node.op_type in ("MatMul", "Gemm", "Attention", "DynamicQuantizeMatMul", "QAttention") and len(node.input) > 1:
            dims = inits.get(node.input[1])
            if dims and len(dims) == 2:
                total += 2 * dims[0] * dims[1]
    return float(total) or None
