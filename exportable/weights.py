"""Weights of vision recipes: a user's `--weights FILE` (a torch state_dict, loaded safely and
checked with one-line errors), and the BatchNorm calibration that makes seeded weights behave."""

from __future__ import annotations

import contextlib
import pickle
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from .errors import InputError


def load_state_dict(path: Path) -> dict:
    """A state_dict from a .pt/.pth (torch.load with weights_only=True: no pickled code runs) or
    a .safetensors file; {"state_dict": ...} checkpoints are unwrapped. One-line InputErrors."""
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # weights_only refused a global: the file holds code or objects
        refused = re.search(r"Unsupported global: GLOBAL [\w.]+|Unsupported operand \d+", str(exc))
        raise InputError(f"--weights {path}: holds pickled objects other than tensors, which are never unpickled "
                         f"({refused.group(0) if refused else 'refused by torch.load(weights_only=True)'}); pass "
                         "torch.save(model.state_dict(), PATH) or a .safetensors file") from None
    except Exception as exc:
        raise InputError(f"--weights {path}: cannot read it ({type(exc).__name__}: {' '.join(str(exc).split())[:160]}); "
                         "pass torch.save(model.state_dict(), PATH) or a .safetensors file") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"--weights {path}: holds a {type(state).__name__}, not a state_dict (a dict of tensors); "
                         "save model.state_dict()")
    return state


WEIGHT_SUFFIXES = (".pt", ".pth", ".safetensors")


def check_weights_file(path: Path) -> None:
    """Refuse a `--weights` path that is not a file of a kind load_state_dict reads, before any
    model is built (a one-line InputError)."""
    if not path.is_file():
        raise InputError(f"--weights {path}: no such file; pass a state_dict saved with torch.save "
                         "(.pt/.pth) or safetensors (.safetensors)")
    if path.suffix not in WEIGHT_SUFFIXES:
        raise InputError(f"--weights {path}: expected a .pt, .pth or .safetensors file")


def rows_of(state: dict, key: str, path: Path, what: str) -> int:
    """The first dimension of state[key] (e.g. a class count, read off a classifier layer's
    weight); a state_dict without the key is not one of `what`."""
    if key not in state:
        raise InputError(f"--weights {path}: no {key!r} in it, so it is not a {what} state_dict; "
                         "check --arch, and save model.state_dict()")
    return int(state[key].shape[0])


def load_into(model, state: dict, path: Path, what: str):
    """model.load_state_dict(state) (strict), a mismatch as a one-line InputError; returns model."""
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = " ".join(str(exc).split())[:240]
        raise InputError(f"--weights {path}: not a state_dict of {what} ({first}); check --arch") from None
    return model


@contextlib.contextmanager
def calibrating_batchnorm(model):
    """Seeded weights that behave like trained ones: inside this block the model is in train mode
    and every BatchNorm's running statistics start over as a plain average of the batches run
    through it (torchvision's init leaves them at mean 0, variance 1, with which activations
    vanish or explode and the answer hardly depends on the input). Eval mode and each layer's
    momentum come back afterwards."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a plain average over the calibration batch
    model.train()
    try:
        yield model
    finally:
        model.eval()
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
