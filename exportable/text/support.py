"""Which Hugging Face encoders exportable exports, and which of their tokenizers it builds as graph
nodes: the one table that the text families, the recipes and the tokenizer reader all read.

An encoder listed in ENCODERS exports with `--inputs ids` (the caller tokenizes): its wrapper
captures through torch.export like BERT
(tests/test_families_text.py exports a seeded classifier of every type listed). One listed in GRAPH_TOKENIZERS also exports with
`--inputs text` (strings in), because exportable.text reproduces its tokenizer class exactly.
"""

from __future__ import annotations

# model_type (config.json) -> the tokenizer classes the in-graph tokenizer reproduces (WordPiece).
GRAPH_TOKENIZERS: dict[str, tuple[str, ...]] = {
    "bert": ("BertTokenizer", "BertTokenizerFast"),
    "distilbert": ("DistilBertTokenizer", "DistilBertTokenizerFast"),
}
# Encoders whose models export; those not in GRAPH_TOKENIZERS take ids only (BPE, Unigram and
# SentencePiece tokenizers in the graph are issue 24).
ENCODERS: tuple[str, ...] = ("albert", "bert", "camembert", "distilbert", "electra", "mpnet", "roberta",
                             "xlm-roberta")
# Position ids that start after the padding id (RoBERTa's create_position_ids_from_input_ids):
# max_position_embeddings 514 holds 512 tokens. Truncating at 514 would index past the table.
POSITION_OFFSET: dict[str, int] = {"camembert": 2, "mpnet": 2, "roberta": 2, "xlm-roberta": 2}
GRAPH_TOKENIZER_CLASSES: tuple[str, ...] = tuple(c for classes in GRAPH_TOKENIZERS.values() for c in classes)


def encoder_problem(model_type: str, tokenizer_in_graph: bool) -> str | None:
    """Why a model of `model_type` cannot be exported this way (one line), or None."""
    if model_type not in ENCODERS:
        return f"model type {model_type!r} is not a supported encoder; supported: {', '.join(ENCODERS)}"
    if tokenizer_in_graph and model_type not in GRAPH_TOKENIZERS:
        return (f"model type {model_type!r}: its tokenizer is not built into the graph yet (text inputs support "
                f"{', '.join(GRAPH_TOKENIZERS)}); pass --inputs ids to export the ids-in graph")
    return None


def max_tokens(config: dict) -> int:
    """The longest sequence a model of this config.json takes (positions it can embed)."""
    return int(config.get("max_position_embeddings", 512)) - POSITION_OFFSET.get(config.get("model_type", ""), 0)
