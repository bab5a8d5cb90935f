"""A tiny causal LM with peaked logits, to measure what quantization does to greedy decoding.

The recipe's default model is a seeded random GPT-Neo: its logits are near-flat (std 0.16, median
top-2 margin 0.04), so any rounding flips argmaxes. This trains the same shape (GPT-Neo, hidden
64, a global and a local layer, the real GPT-2 tokenizer) for a few hundred steps on this
repository's own docs, which makes its next-token predictions as peaked as a small real LM's on
familiar text. docs/text-generation.md quotes the int8/int4 numbers measured on it:

    python examples/trained_tiny_lm.py OUT_DIR [--steps 400]
    python -m exportable recipe text_generator --model OUT_DIR --variants onnx-int8,onnx-int4
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, GPTNeoConfig, GPTNeoForCausalLM

from exportable import registry

ROOT = Path(__file__).resolve().parent.parent


def corpus_ids(tokenizer) -> torch.Tensor:
    text = "\n\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    return torch.tensor(tokenizer(text)["input_ids"], dtype=torch.long)


def train(out: Path, steps: int, batch: int = 16, length: int = 64, seed: int = 0) -> Path:
    default = registry.get("text_generator")()  # the default model's tokenizer: the real GPT-2 one
    tokenizer = AutoTokenizer.from_pretrained(str(default.model_dir))
    window = default.lm.config.window_size
    ids = corpus_ids(tokenizer)
    torch.manual_seed(seed)
    config = GPTNeoConfig(vocab_size=len(tokenizer), hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128,
                          attention_types=[[["global", "local"], 1]], window_size=window, max_position_embeddings=256,
                          bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = GPTNeoForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    start = time.perf_counter()
    for step in range(steps):
        at = torch.randint(0, len(ids) - length - 1, (batch,))
        x = torch.stack([ids[i:i + length] for i in at])
        loss = model(input_ids=x, labels=x).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == steps - 1:
            print(f"step {step}: loss {loss.item():.3f} ({time.perf_counter() - start:.0f}s)", flush=True)
    model.eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, default=400)
    args = parser.parse_args()
    print(f"wrote {train(args.out, args.steps)}")
