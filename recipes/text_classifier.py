"""text_classifier: a sequence classifier with its decision baked into the artifact.

Everything generic (the two heads, thresholds, exact decisions near them, the margin-guarded
validation) is exportable.families.text_classifier.SequenceClassifierFamily; this recipe declares
the default model. Default (no --model): the bundled all-MiniLM-L6-v2 as a
BertForSequenceClassification whose classifier Linear is trained at export (zero init, full-batch
Adam: deterministic, seconds) on its pooler output for recipes/data/topics.tsv (5 topics; every
4th sentence of each label combination held out for the reported accuracy). `--head multi`
trains the multi-label variant (sigmoid/BCE, two-topic sentences too).
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from exportable import samples
from exportable.families.text_classifier import (
    GUARD,
    SequenceClassifierFamily,
    classifier_options,
    held_out,
    sigmoid,
    train_linear_head,
)
from exportable.recipe import Case
from exportable.registry import register

DATA = Path(__file__).resolve().parent / "data" / "topics.tsv"
__all__ = ["DATA", "GUARD", "TextClassifier", "load_topics", "sigmoid", "topic_labels"]


def load_topics(path: Path = DATA) -> list[tuple[tuple[str, ...], str]]:
    """(labels, sentence) rows of a `labels<TAB>sentence` file; labels joined by commas."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            labels, text = line.split("\t", 1)
            rows.append((tuple(labels.split(",")), text))
    return rows


def topic_labels() -> list[str]:
    return sorted({label for labels, _ in load_topics() for label in labels})


@register
class TextClassifier(SequenceClassifierFamily):
    name = "text_classifier"
    summary = "BERT sequence classifier (default MiniLM + topic head trained at export) -> decisions"
    options = classifier_options("the bundled all-MiniLM-L6-v2 + a 5-topic head trained at export")

    def default_labels(self) -> list[str]:
        return topic_labels()

    def default_source_name(self) -> str:
        return f"{self.default_model_name} + {self.head}-label topic head trained at export on recipes/data/{DATA.name}"

    def fit_default_head(self, model) -> dict:
        rows = load_topics()
        if self.head == "single":  # softmax over one topic: train and score on single-topic sentences
            rows = [r for r in rows if len(r[0]) == 1]
        ids = [self.tokenize([t for _, t in rows[i:i + 64]]) for i in range(0, len(rows), 64)]
        features = torch.cat([self.run_model(model.bert, batch).pooler_output for batch in ids])
        targets = torch.tensor([[float(label in labels) for label in self.labels] for labels, _ in rows])
        fit = train_linear_head(model, features, targets, held_out([labels for labels, _ in rows]), self.head == "single", self.thresholds)
        return {"data": f"recipes/data/{DATA.name}", "features": "BertForSequenceClassification pooler output", **fit}

    def example_case(self) -> Case:
        return Case("example", ["The striker scored in the final minute.", "Rain tomorrow."])

    def validation_texts(self) -> list[str]:
        """Every labelled sentence, 60 two-topic mixes (ambiguous: near-ties and near-thresholds),
        and the edge cases: empty, whitespace, a text over max length."""
        rows = load_topics()
        rng = random.Random(0)
        singles = [t for labels, t in rows if len(labels) == 1]
        mixes = [f"{a} {b}" for a, b in (rng.sample(singles, 2) for _ in range(60))]
        return [t for _, t in rows] + mixes + ["", "   ", samples.long_text(self.max_length + 100)]
