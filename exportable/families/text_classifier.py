"""SequenceClassifierFamily: a Hugging Face sequence classifier with its decision in the artifact.

Original: transformers `AutoModelForSequenceClassification` run eagerly, then numpy softmax/sigmoid
and the same thresholds. Artifact: strings in (or ids), one of two heads out
(exportable.blocks.decision), chosen by config.problem_type or `--head`:

    single  (single_label_classification)  label_id [batch] int64, score [batch] float32
            softmax over labels, the most probable one (ties: the lowest id) and its probability
    multi   (multi_label_classification)   scores [batch, labels] float32, labels [batch, labels] bool
            sigmoid per label; labels = scores >= threshold (>=: a score equal to it is positive)

Thresholds are float32 graph constants set at export: `--threshold T` for every label (default
0.5) and `--thresholds FILE` with `label<TAB>threshold` lines (labels it omits keep T).

Decisions are exact, and near thresholds too: the artifact's scores are within ~1e-6 of the
original's (two fp32 implementations), so a decision can only differ when its margin (multi:
|score - threshold|; single: top-1 minus top-2 probability) is within that noise, where both
answers round the same real number. Validation keeps every text whose margin is >= GUARD (1e-5,
10x the noise) and leaves out, and counts, those closer; the smallest margin kept and the count
sit in metadata ("validation").

A subclass declares its name and options (classifier_options()), `default_labels()` and
`fit_default_head(model)` for the model used without `--model` (the bundled encoder: its head
must be made at export), `validation_texts()` and `example_case()`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification

from exportable.blocks.decision import (
    MultiLabelDecision,
    SequenceClassifierDecision,
    SingleLabelDecision,
)
from exportable.errors import InputError
from exportable.recipe import EXACT, Case, Option, TensorSpec, Tolerance

from .text import INPUTS, TextFamily, model_option

PROBLEM_TYPES = {"single_label_classification": "single", "multi_label_classification": "multi"}
GUARD = 1e-5  # decision margins closer than this are fp32 noise territory: left out of validation
NEAR = 1e-3   # "near a threshold": counted in metadata
BATCHES = (1, 3, 5, 17, 32, 64)  # validation batch sizes, never the example's 2
SAVED_WITH = "AutoModelForSequenceClassification.save_pretrained(DIR)"


def classifier_options(default: str) -> tuple[Option, ...]:
    return (
        model_option(f"a sequence classifier saved with {SAVED_WITH} and its tokenizer", default),
        Option("head", "decision head (default: the model's config.problem_type, else single)",
               choices=("single", "multi")),
        Option("threshold", "multi head: decision threshold for every label, score >= T (default 0.5)", type=float),
        Option("thresholds", "multi head: a file of `label<TAB>threshold` lines (labels it omits keep --threshold)"),
        INPUTS,
    )


def check_threshold(value, where: str) -> float:
    try:
        t = float(value)
    except (TypeError, ValueError):
        t = math.nan
    if not 0.0 <= t <= 1.0:  # NaN fails too
        raise InputError(f"{where}: threshold {value!r} is not a probability in [0, 1]; pass e.g. 0.5")
    return t


def read_thresholds(path: Path) -> dict[str, float]:
    if not path.is_file():
        raise InputError(f"--thresholds {path}: no such file; pass a file of `label<TAB>threshold` lines")
    out = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.rstrip("\r\n").split("\t")
        if len(parts) != 2:
            raise InputError(f"--thresholds {path}:{n}: expected `label<TAB>threshold`, got {line.strip()!r}")
        out[parts[0].strip()] = check_threshold(parts[1].strip(), f"--thresholds {path}:{n}")
    return out


def config_labels(config: dict) -> list[str]:
    id2label = config.get("id2label") or {}
    n = len(id2label) or int(config.get("num_labels", 2))
    return [str(id2label.get(str(i), f"LABEL_{i}")) for i in range(n)]


def softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))


class SequenceClassifierFamily(TextFamily):
    original_pipeline = "transformers AutoModelForSequenceClassification + numpy softmax/sigmoid + thresholds"
    model_files = (("config.json", SAVED_WITH),)

    def default_labels(self) -> list[str]:
        raise InputError(f"recipe {self.name!r} has no default model; pass --model DIR (saved with {SAVED_WITH})")

    def fit_default_head(self, model) -> dict:
        """Make the default model's head (train or seed model.classifier); returns what metadata
        records about it ("training")."""
        raise NotImplementedError

    def validation_texts(self) -> list[str]:
        raise NotImplementedError(f"recipe {self.name!r} must define validation_texts()")

    def validate_settings(self) -> None:
        """Everything that needs no weights: the folder, head, thresholds and their label names."""
        super().validate_settings()
        config = self.config if self.custom else {}
        if self.custom:
            archs = config.get("architectures") or []
            if not any(a.endswith("ForSequenceClassification") for a in archs):
                raise InputError(f"--model {self.model_dir}: {archs or 'no architectures'} is not a sequence "
                                 f"classifier; pass a folder saved from {SAVED_WITH}")
        self.labels = config_labels(config) if self.custom else self.default_labels()
        self.head = self._head(config.get("problem_type"))
        given = self.settings["threshold"] is not None or self.settings["thresholds"]
        if self.head == "single" and given:
            raise InputError("--threshold/--thresholds apply to the multi-label head; add --head multi "
                             "(the single head takes the most probable label)")
        default = check_threshold(0.5 if self.settings["threshold"] is None else self.settings["threshold"],
                                  "--threshold")
        per_label = read_thresholds(self.option_path("thresholds")) if self.settings["thresholds"] else {}
        unknown = sorted(set(per_label) - set(self.labels))
        if unknown:
            raise InputError(f"--thresholds {self.settings['thresholds']}: unknown label(s) {unknown}; "
                             f"the model's labels are {self.labels}")
        self.thresholds = [per_label.get(label, default) for label in self.labels]

    def _head(self, problem: str | None) -> str:
        if self.settings["head"]:
            return self.settings["head"]
        if problem in PROBLEM_TYPES:
            return PROBLEM_TYPES[problem]
        if problem is None and len(self.labels) > 1:
            return "single"
        raise InputError(f"--model {self.model_dir}: problem_type {problem!r} with {len(self.labels)} label(s) "
                         "has no class decision; pass --head single or --head multi")

    # --- the original pipeline ------------------------------------------------------------
    @cached_property
    def classifier(self):
        """The transformers sequence classifier (eval mode); the default's head made here."""
        problem = {"single": "single_label_classification", "multi": "multi_label_classification"}[self.head]
        extra = {"problem_type": problem}
        if not self.custom:
            extra.update(num_labels=len(self.labels), id2label=dict(enumerate(self.labels)),
                         label2id={t: i for i, t in enumerate(self.labels)})
        model = self.load_model(AutoModelForSequenceClassification, "sequence classifier", **extra)
        if not self.custom:
            self.training = self.fit_default_head(model)
        return model

    def logits(self, texts: list[str]) -> np.ndarray:
        if not texts:  # the HF tokenizer rejects an empty batch
            return np.zeros((0, len(self.labels)), np.float32)
        return self.run_model(self.classifier, self.tokenize(texts)).logits.float().numpy()

    def decide(self, logits: np.ndarray) -> dict[str, np.ndarray]:
        """The decision in numpy, from the original's logits (float64 math, float32 scores)."""
        if self.head == "single":
            p = softmax(logits)
            return {"label_id": p.argmax(-1).astype(np.int64), "score": p.max(-1).astype(np.float32)}
        scores = sigmoid(logits)
        return {"scores": scores.astype(np.float32), "labels": scores >= np.array(self.thresholds)}

    def margins(self, logits: np.ndarray) -> np.ndarray:
        """Per text: how far its decision is from flipping (probability units)."""
        if self.head == "single":
            p = np.sort(softmax(logits), axis=-1)
            return p[:, -1] - p[:, -2]
        return np.abs(sigmoid(logits) - np.array(self.thresholds)).min(-1)

    def build_original(self):
        _ = self.classifier  # load (and make the head) now, so a bad --model fails in the build stage
        return lambda case: self.decide(self.logits(list(case.data)))

    # --- the wrapper ------------------------------------------------------------------------
    def build_wrapper(self, fmt: str = "onnx"):
        head = SingleLabelDecision() if self.head == "single" else MultiLabelDecision(self.thresholds)
        return SequenceClassifierDecision(self.classifier, head).eval()

    def output_specs(self):
        n = len(self.labels)
        if self.head == "single":
            return (TensorSpec("label_id", "int64", ("batch",), "most probable label (index into `labels` metadata)"),
                    TensorSpec("score", "float32", ("batch",), "its softmax probability"))
        return (TensorSpec("scores", "float32", ("batch", n), "sigmoid probability per label"),
                TensorSpec("labels", "bool", ("batch", n), "scores >= the label's threshold (metadata `thresholds`)"))

    def tolerances(self):
        # Decisions exact (see the module doc for why near-threshold texts stay exact); probabilities
        # at the fp32 bar.
        if self.head == "single":
            return {"label_id": EXACT, "score": Tolerance()}
        return {"scores": Tolerance(), "labels": EXACT}

    def default_state(self):
        return self.classifier.state_dict()

    def preprocessing(self) -> dict:
        _, stats = self._validation
        out = {**super().preprocessing(), "head": self.head, "problem_type": self.classifier.config.problem_type,
               "labels": self.labels}
        if self.head == "single":
            out["decision"] = "label_id = argmax softmax(logits) (ties: lowest id); score = its probability"
        else:
            out["thresholds"] = dict(zip(self.labels, self.thresholds))
            out["decision"] = "labels[b, c] = sigmoid(logits)[b, c] >= thresholds[c] (float32; equal counts as positive)"
        out["validation"] = stats
        if not self.custom:
            out["training"] = self.training
        return out

    # --- data --------------------------------------------------------------------------------
    @cached_property
    def _validation(self) -> tuple[list[str], dict]:
        """validation_texts() and their decision margins, minus any within GUARD."""
        texts = self.validation_texts()
        margins = np.concatenate([self.margins(self.logits(texts[i:i + 64])) for i in range(0, len(texts), 64)])
        keep = margins >= GUARD
        stats = {"texts": int(keep.sum()), "rule": f"texts whose decision margin is < {GUARD} are left out "
                 "(fp32 noise decides them); margin = |score - threshold| (multi) or top-1 minus top-2 (single)",
                 "min_margin": float(margins[keep].min()), f"within_{NEAR}": int((margins[keep] < NEAR).sum()),
                 "left_out_within_guard": int((~keep).sum())}
        return [t for t, k in zip(texts, keep) if k], stats

    def validation_cases(self) -> list[Case]:
        """The kept texts at batch sizes cycling through BATCHES, and in text mode a sixth of the
        tokenizer corpus cases (the empty batch among them)."""
        return self.text_cases(self._validation[0], BATCHES, corpus_every=6)


def held_out(label_sets: Sequence, every: int = 4) -> list[bool]:
    """Every `every`-th row of each label combination: a fixed, stratified split."""
    seen: dict = {}
    out = []
    for labels in label_sets:
        seen[labels] = seen.get(labels, 0) + 1
        out.append(seen[labels] % every == 0)
    return out


def train_linear_head(model, features, targets, held_out: Sequence[bool], single: bool, thresholds,
                      steps: int = 800, lr: float = 0.05) -> dict:
    """Logistic regression on `features` [rows, hidden] for `targets` [rows, labels] (0/1), written
    into model.classifier (the Linear a BERT classifier applies to its pooler output), so the
    original stays a genuine transformers model. Zero init, full-batch Adam: deterministic.
    Returns the accuracies on the training and held-out rows."""
    test = np.asarray(held_out)
    train = torch.from_numpy(~test)
    head = model.classifier
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
    # The head may be trained lazily from inside a caller's no_grad (a recipe property first
    # read while computing references): gradients are switched on here explicitly.
    head.requires_grad_(True)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad()
            logits = head(features[train])
            if single:
                loss = torch.nn.functional.cross_entropy(logits, targets[train].argmax(1))
            else:
                loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets[train])
            loss.backward()
            opt.step()
    with torch.no_grad():
        logits = head(features).numpy()
    head.requires_grad_(False)
    truth = targets.numpy().astype(bool)
    if single:
        right = logits.argmax(1) == truth.argmax(1)
        metric = {"metric": "accuracy (top-1)"}
    else:
        guess = sigmoid(logits) >= np.array(thresholds)
        right = (guess == truth).all(1)
        tp = (guess & truth)[test].sum()
        metric = {"metric": "exact-match accuracy (every label right)",
                  "micro_f1_held_out": round(float(2 * tp / (guess[test].sum() + truth[test].sum())), 4)}
    return {"method": f"logistic regression ({'softmax' if single else 'sigmoid'}), zero init, "
                      f"full-batch Adam lr {lr} x {steps}, weight decay 0.0",
            "train_sentences": int((~test).sum()), "held_out_sentences": int(test.sum()), **metric,
            "train_accuracy": round(float(right[~test].mean()), 4),
            "held_out_accuracy": round(float(right[test].mean()), 4)}
