"""Which Hugging Face encoders exportable exports: the one table that the text families and the
recipes read.

An encoder listed in ENCODERS exports with `--inputs ids` (the caller tokenizes): its wrapper
captures through torch.export like BERT (tests/test_families_text.py exports a seeded classifier
of every type listed). Whether it also exports with `--inputs text` (strings in) is decided by
its tokenizer's own pipeline, not by the model type: exportable.text.plan names the kind
(WordPiece, byte-level BPE, ...) and refuses a component it cannot reproduce exactly.
"""

from __future__ import annotations

# Encoders whose models export.
ENCODERS: tuple[str, ...] = ("albert", "bert", "camembert", "distilbert", "electra", "mpnet", "roberta",
                             "xlm-roberta")
# Position ids that start after the padding id (RoBERTa's create_position_ids_from_input_ids):
# max_position_embeddings 514 holds 512 tokens. Truncating at 514 would index past the table.
POSITION_OFFSET: dict[str, int] = {"camembert": 2, "mpnet": 2, "roberta": 2, "xlm-roberta": 2}


def encoder_problem(model_type: str) -> str | None:
    """Why a model of `model_type` cannot be exported (one line), or None."""
    if model_type not in ENCODERS:
        return f"model type {model_type!r} is not a supported encoder; supported: {', '.join(ENCODERS)}"
    return None


def max_tokens(config: dict) -> int:
    """The longest sequence a model of this config.json takes (positions it can embed)."""
    return int(config.get("max_position_embeddings", 512)) - POSITION_OFFSET.get(config.get("model_type", ""), 0)
