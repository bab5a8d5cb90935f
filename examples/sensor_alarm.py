"""A recipe file of your own (docs/bring-your-own-model.md): a sensor alarm, not a transformer.

What the user runs today (the original pipeline, the parity reference): raw readings from 8
sensors -> standardise with the training set's mean and std (numpy) -> a small PyTorch MLP ->
sigmoid -> alarm when the score is above a threshold. The artifact does all of it in one graph:
`readings` float32 [batch, 8] in, `score` float32 [batch] and `alarm` bool [batch] out.

    python -m exportable recipe ./sensor_alarm.py --threshold 0.7 --out artifacts/sensor_alarm
"""

import functools

import numpy as np
import torch
from torch import nn

from exportable import Case, Option, Recipe, TensorSpec

SENSORS = 8
MEAN = np.linspace(20.0, 90.0, SENSORS, dtype=np.float32)  # the training set's per-sensor statistics
STD = np.linspace(1.0, 8.0, SENSORS, dtype=np.float32)


class AlarmNet(nn.Module):
    """The model as trained: standardised readings in, one logit per row out."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(SENSORS, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, z):
        return self.layers(z).squeeze(-1)


def load_model(weights: str | None) -> AlarmNet:
    """Your trained model: --weights FILE, or (for this example) a quick seeded training run."""
    model = AlarmNet()
    model.load_state_dict(torch.load(weights, weights_only=True) if weights else trained_weights())
    return model.eval()


@functools.cache
def trained_weights() -> dict:
    """Learn to flag rows with one sensor far (4 std) off normal: 300 Adam steps, under a second."""
    torch.manual_seed(0)
    model, rng = AlarmNet(), np.random.default_rng(0)
    z = rng.normal(size=(1024, SENSORS)).astype(np.float32)
    faulty = rng.random(1024) < 0.3
    z[faulty, rng.integers(0, SENSORS, faulty.sum())] += rng.choice([-4.0, 4.0], faulty.sum())
    x, y = torch.from_numpy(z), torch.from_numpy(faulty.astype(np.float32))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(300):
        optimizer.zero_grad()
        nn.functional.binary_cross_entropy_with_logits(model(x), y).backward()
        optimizer.step()
    return model.state_dict()


class EndToEnd(nn.Module):
    """The export-friendly wrapper: the preprocessing and the threshold head inside the graph."""

    def __init__(self, model: AlarmNet, threshold: float):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.from_numpy(MEAN))
        self.register_buffer("std", torch.from_numpy(STD))
        self.threshold = threshold

    def forward(self, readings):
        score = torch.sigmoid(self.model((readings - self.mean) / self.std))
        return score, score > self.threshold


class SensorAlarm(Recipe):
    name = "sensor_alarm"
    summary = "8 raw sensor readings -> anomaly score and alarm flag"
    inputs = (TensorSpec("readings", "float32", ("batch", SENSORS)),)
    outputs = (TensorSpec("score", "float32", ("batch",)), TensorSpec("alarm", "bool", ("batch",)))
    options = (Option("threshold", "alarm when the score is above this", default=0.5, type=float),
               Option("weights", "a state_dict of AlarmNet saved with torch.save (default: seeded)"))

    def build_original(self):
        model, threshold = load_model(self.settings["weights"]), self.settings["threshold"]

        def original(case):
            z = (case.data["readings"] - MEAN) / STD
            with torch.no_grad():
                score = torch.sigmoid(model(torch.from_numpy(z))).numpy()
            return {"score": score, "alarm": score > threshold}

        return original

    def build_wrapper(self):
        return EndToEnd(load_model(self.settings["weights"]), self.settings["threshold"])

    def example_case(self):
        return Case("example", {"readings": readings(4, seed=0)})

    def validation_cases(self):
        return [Case(f"batch_{n}", {"readings": readings(n, seed=n)}) for n in (1, 3, 16, 64)]


def readings(batch: int, seed: int) -> np.ndarray:
    """Raw readings around the training statistics; every third row has one sensor far off."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(batch, SENSORS))
    z[::3, rng.integers(0, SENSORS)] += 5.0
    return (MEAN + STD * z).astype(np.float32)
