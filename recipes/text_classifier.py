"""text_classifier: a BERT sequence classifier with its decision baked into the artifact.

Original: transformers `AutoModelForSequenceClassification` run eagerly, then numpy softmax/sigmoid
and the same thresholds. Artifact: strings in (TextInputs: the model's tokenizer as graph nodes;
`--inputs ids` keeps the ids-in graph; TorchScript takes ids), one of two heads out
(exportable.blocks.decision), chosen by config.problem_type or `--head`:

    single  (single_label_classification)  label_id [batch] int64, score [batch] float32
            softmax over labels, the most probable one (ties: the lowest id) and its probability
    multi   (multi_label_classification)   scores [batch, labels] float32, labels [batch, labels] bool
            sigmoid per label; labels = scores >= threshold (>=: a score equal to it is positive)

Thresholds are float32 graph constants set at export: `--threshold T` for every label (default
0.5) and `--thresholds FILE` with `label<TAB>threshold` lines (labels it omits keep T). They are
recorded in metadata beside the label names.

Decisions are exact, and near thresholds too: the artifact's scores are within ~1e-6 of the
original's (two fp32 BERT implementations), so a decision can only differ when its margin (multi:
|score - threshold|; single: top-1 minus top-2 probability) is within that noise, where both answers
round the same real number. The validation set keeps every text whose margin is >= GUARD (1e-5,
10x the noise) -- texts within 1e-3 included -- and leaves out, and counts, those closer than
that; the measured smallest margin and the count sit in metadata ("validation").

Default (no --model): the bundled all-MiniLM-L6-v2 as a BertForSequenceClassification whose
classifier Linear is trained at export (zero init, full-batch Adam: deterministic, seconds) on its
pooler output for recipes/data/topics.tsv (5 topics; every 4th sentence held out for the reported
accuracy). `--head multi` trains the multi-label variant (sigmoid/BCE, two-topic sentences too).
"""

from __future__ import annotations

import json
import math
import random
from functools import cached_property
from pathlib import Path

import numpy as np

from exportable import samples
from exportable.errors import InputError
from exportable.hashing import sha256_files, sha256_state_dict, weight_files
from exportable.recipe import EXACT, Case, Option, Recipe, Source, TensorSpec, Tolerance
from exportable.registry import register
from exportable.textinput import TextInputs, bundled_model_dir, corpus_cases, load_bert_family, load_hf_tokenizer

DATA = Path(__file__).resolve().parent / "data" / "topics.tsv"
PROBLEM_TYPES = {"single_label_classification": "single", "multi_label_classification": "multi"}
BERT_FAMILY = {"bert", "distilbert", "roberta", "xlm-roberta", "electra", "albert", "camembert"}
GUARD = 1e-5  # decision margins closer than this are fp32 noise territory: left out of validation
NEAR = 1e-3   # "near a threshold": counted in metadata
TRAIN_STEPS, TRAIN_LR, WEIGHT_DECAY = 800, 0.05, 0.0
BATCHES = (1, 3, 5, 17, 32, 64)  # validation batch sizes, never the example's 2



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


def held_out(rows) -> list[bool]:
    """Every 4th row of each label combination: a fixed, stratified split."""
    seen: dict = {}
    out = []
    for labels, _ in rows:
        seen[labels] = seen.get(labels, 0) + 1
        out.append(seen[labels] % 4 == 0)
    return out


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


def softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))


@register
class TextClassifier(TextInputs, Recipe):
    name = "text_classifier"
    formats = ("onnx", "torchscript")
    summary = "BERT sequence classifier (default MiniLM + topic head trained at export) -> decisions"
    original_pipeline = "transformers AutoModelForSequenceClassification + numpy softmax/sigmoid + thresholds"
    options = (
        Option("model", "a local folder saved with AutoModelForSequenceClassification.save_pretrained() and its "
                        "tokenizer (default: bundled MiniLM + a 5-topic head trained at export)"),
        Option("head", "decision head (default: the model's config.problem_type, else single)",
               choices=("single", "multi")),
        Option("threshold", "multi head: decision threshold for every label, score >= T (default 0.5)", type=float),
        Option("thresholds", "multi head: a file of `label<TAB>threshold` lines (labels it omits keep --threshold)"),
        Option("inputs", "ONNX graph inputs: raw strings (tokenizer in the graph) or token ids",
               default="text", choices=("text", "ids")),
    )

    def validate_settings(self) -> None:
        """Everything that needs no weights: paths, head, thresholds and their label names."""
        path = self.option_path("model")
        config = {}
        if path is not None:
            if not path.is_dir() or not (path / "config.json").is_file():
                raise InputError(f"--model {path}: no config.json there; pass a folder saved with "
                                 "AutoModelForSequenceClassification.save_pretrained(DIR)")
            config = json.loads((path / "config.json").read_text())
            archs = config.get("architectures") or []
            if not any(a.endswith("ForSequenceClassification") for a in archs):
                raise InputError(f"--model {path}: {archs or 'no architectures'} is not a sequence classifier; "
                                 "pass a folder saved from AutoModelForSequenceClassification.save_pretrained(DIR)")
        self.labels = self._config_labels(config) if path is not None else topic_labels()
        problem = config.get("problem_type")
        if self.settings["head"]:
            self.head = self.settings["head"]
        elif problem in PROBLEM_TYPES:
            self.head = PROBLEM_TYPES[problem]
        elif problem is None and len(self.labels) > 1:
            self.head = "single"
        else:
            raise InputError(f"--model {path}: problem_type {problem!r} with {len(self.labels)} label(s) has no "
                             "class decision; pass --head single or --head multi")
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

    @staticmethod
    def _config_labels(config: dict) -> list[str]:
        id2label = config.get("id2label") or {}
        n = len(id2label) or int(config.get("num_labels", 2))
        return [str(id2label.get(str(i), f"LABEL_{i}")) for i in range(n)]

    @property
    def model_dir(self) -> Path:
        return self.option_path("model") or bundled_model_dir()

    @property
    def custom(self) -> bool:
        return self.option_path("model") is not None

    # --- the original pipeline ------------------------------------------------------------
    @cached_property
    def classifier(self):
        """The transformers sequence classifier (eval mode); the default's head trained here."""
        from transformers import AutoModelForSequenceClassification

        problem = {"single": "single_label_classification", "multi": "multi_label_classification"}[self.head]
        extra = {"problem_type": problem}
        if not self.custom:
            extra.update(num_labels=len(self.labels), id2label=dict(enumerate(self.labels)),
                         label2id={t: i for i, t in enumerate(self.labels)})
        model = load_bert_family(AutoModelForSequenceClassification, self.model_dir, "sequence classifier",
                                 BERT_FAMILY, **extra)
        model.eval()
        if not self.custom:
            self.training = self._train_head(model)
        return model

    def _train_head(self, model) -> dict:
        """Logistic regression on the pooler output, written into model.classifier (the Linear that
        BertForSequenceClassification applies to it): the original stays a genuine transformers model."""
        import torch

        rows = load_topics()
        if self.head == "single":  # softmax over one topic: train and score on single-topic sentences
            rows = [r for r in rows if len(r[0]) == 1]
        test = np.array(held_out(rows))
        feats = []
        with torch.no_grad():
            for i in range(0, len(rows), 64):
                ids = self.tokenize([t for _, t in rows[i:i + 64]])
                feats.append(model.bert(**{k: torch.from_numpy(v) for k, v in ids.items()}).pooler_output)
        x = torch.cat(feats)
        index = {label: i for i, label in enumerate(self.labels)}
        y = torch.zeros(len(rows), len(self.labels))
        for r, (labels, _) in enumerate(rows):
            for label in labels:
                y[r, index[label]] = 1.0
        train = torch.from_numpy(~test)
        head = model.classifier
        with torch.no_grad():
            head.weight.zero_()
            head.bias.zero_()
        # The head may be trained lazily from inside a caller's no_grad (a recipe property first
        # read while computing references): gradients are switched on here explicitly.
        head.requires_grad_(True)
        opt = torch.optim.Adam(head.parameters(), lr=TRAIN_LR, weight_decay=WEIGHT_DECAY)
        with torch.enable_grad():
            for _ in range(TRAIN_STEPS):
                opt.zero_grad()
                logits = head(x[train])
                if self.head == "single":
                    loss = torch.nn.functional.cross_entropy(logits, y[train].argmax(1))
                else:
                    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y[train])
                loss.backward()
                opt.step()
        with torch.no_grad():
            logits = head(x).numpy()
        head.requires_grad_(False)
        truth = y.numpy().astype(bool)
        if self.head == "single":
            right = logits.argmax(1) == truth.argmax(1)
            metric = {"metric": "accuracy (top-1)"}
        else:
            guess = sigmoid(logits) >= np.array(self.thresholds)
            right = (guess == truth).all(1)
            tp = (guess & truth)[test].sum()
            metric = {"metric": "exact-match accuracy (every label right)",
                      "micro_f1_held_out": round(float(2 * tp / (guess[test].sum() + truth[test].sum())), 4)}
        return {"data": f"recipes/data/{DATA.name}", "features": "BertForSequenceClassification pooler output",
                "method": f"logistic regression ({'softmax' if self.head == 'single' else 'sigmoid'}), zero init, "
                          f"full-batch Adam lr {TRAIN_LR} x {TRAIN_STEPS}, weight decay {WEIGHT_DECAY}",
                "train_sentences": int((~test).sum()), "held_out_sentences": int(test.sum()), **metric,
                "train_accuracy": round(float(right[~test].mean()), 4),
                "held_out_accuracy": round(float(right[test].mean()), 4)}

    @cached_property
    def tokenizer(self):
        return load_hf_tokenizer(self.model_dir)

    def logits(self, texts: list[str]) -> np.ndarray:
        import torch

        if not texts:  # the HF tokenizer rejects an empty batch
            return np.zeros((0, len(self.labels)), np.float32)
        ids = self.tokenize(texts)
        with torch.no_grad():
            return self.classifier(**{k: torch.from_numpy(v) for k, v in ids.items()}).logits.float().numpy()

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
        self.classifier  # load (and train) now, so a bad --model fails in the build stage
        return lambda case: self.decide(self.logits(list(case.data)))

    # --- the wrapper ------------------------------------------------------------------------
    def build_wrapper(self, fmt: str = "onnx"):
        from exportable.blocks.decision import MultiLabelDecision, SequenceClassifierDecision, SingleLabelDecision

        head = SingleLabelDecision() if self.head == "single" else MultiLabelDecision(self.thresholds)
        return SequenceClassifierDecision(self.classifier, head).eval()

    # --- specs (TextInputs provides input_specs / model_input_specs / feed) --------------------
    @property
    def id_input_names(self) -> list[str]:
        return self.ordered_id_names(self.tokenizer.model_input_names)  # SequenceClassifierDecision.forward's order

    @property
    def max_length(self) -> int:
        config = json.loads((self.model_dir / "config.json").read_text())
        return int(min(self.tokenizer.model_max_length, config.get("max_position_embeddings", 512)))

    def tokenize(self, texts: list[str]) -> dict[str, np.ndarray]:
        return self.hf_tokenize(self.tokenizer, texts)

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

    def source(self) -> Source:
        if self.custom:
            return Source(self.model_dir.name, sha256_files(weight_files(self.model_dir)), str(self.model_dir))
        return Source(f"sentence-transformers/all-MiniLM-L6-v2 + {self.head}-label topic head trained at export "
                      f"on recipes/data/{DATA.name}", sha256_state_dict(self.classifier.state_dict()),
                      str(self.model_dir))

    def preprocessing(self) -> dict:
        texts, stats = self._validation
        out = {**self.text_preprocessing(), "padding": "longest", "truncation": True,
               "head": self.head, "problem_type": self.classifier.config.problem_type, "labels": self.labels}
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
    def example_case(self) -> Case:
        return Case("example", ["The striker scored in the final minute.", "Rain tomorrow."])

    @cached_property
    def _validation(self) -> tuple[list[str], dict]:
        """The validation texts and their decision margins: every labelled sentence, 60 two-topic
        mixes (ambiguous: near-ties and near-thresholds), edge cases; minus any within GUARD."""
        rows = load_topics()
        rng = random.Random(0)
        singles = [t for labels, t in rows if len(labels) == 1]
        mixes = [f"{a} {b}" for a, b in (rng.sample(singles, 2) for _ in range(60))]
        texts = [t for _, t in rows] + mixes + ["", "   ", samples.long_text(self.max_length + 100)]
        margins = np.concatenate([self.margins(self.logits(texts[i:i + 64])) for i in range(0, len(texts), 64)])
        keep = margins >= GUARD
        stats = {"texts": int(keep.sum()), "rule": f"texts whose decision margin is < {GUARD} are left out "
                 "(fp32 noise decides them); margin = |score - threshold| (multi) or top-1 minus top-2 (single)",
                 "min_margin": float(margins[keep].min()), f"within_{NEAR}": int((margins[keep] < NEAR).sum()),
                 "left_out_within_guard": int((~keep).sum())}
        return [t for t, k in zip(texts, keep) if k], stats

    def validation_cases(self) -> list[Case]:
        """The texts above at batch sizes cycling through BATCHES (never the example's 2), and in text
        mode a sixth of the tokenizer corpus cases (the empty batch among them)."""
        texts, _ = self._validation
        cases, i, k = [], 0, 0
        while i < len(texts):
            size = BATCHES[k % len(BATCHES)]
            chunk = texts[i:i + size]
            if len(chunk) == 2:  # the example's batch size
                chunk = texts[i:i + 1]
            cases.append(Case(f"batch{len(chunk)}_{i:03d}", chunk))
            i, k = i + len(chunk), k + 1
        if self.text_mode:
            cases += corpus_cases()[::6]
        return cases
