"""Deterministic sample texts for examples and validation (varied lengths, seeded)."""

from __future__ import annotations

import random

WORDS = (
    "model export graph runtime token sentence embedding vector parity artifact checkpoint layer "
    "attention batch padding truncation inference latency throughput server client request answer "
    "question river mountain city morning coffee library window garden engine signal market music "
    "the a of and to in is was for on with as by at from that this it be are not or which"
).split()


def sentences(count: int, seed: int = 0, max_words: int = 60) -> list[str]:
    """`count` sentences whose word counts spread from 1 to `max_words`, punctuated like prose."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        n = 1 + (i * 7919 + rng.randrange(max_words)) % max_words
        words = [rng.choice(WORDS) for _ in range(n)]
        words[0] = words[0].capitalize()
        if n > 6:
            words[n // 2] += ","
        out.append(" ".join(words) + rng.choice([".", "!", "?", ""]))
    return out


def long_text(words: int, seed: int = 1) -> str:
    """A text far over a 256-token limit, to exercise truncation."""
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(words)) + "."
