"""Loading a user's `--weights FILE` (vision recipes): a torch state_dict, safely."""

from __future__ import annotations

from pathlib import Path

from .errors import InputError


def load_state_dict(path: Path) -> dict:
    """A state_dict from a .pt/.pth (torch.load with weights_only=True: no pickled code runs) or
    a .safetensors file; {"state_dict": ...} checkpoints are unwrapped. One-line InputErrors."""
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"--weights {path}: cannot read it ({type(exc).__name__}: {' '.join(str(exc).split())[:160]}); "
                         "pass torch.save(model.state_dict(), PATH) or a .safetensors file") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"--weights {path}: holds a {type(state).__name__}, not a state_dict (a dict of tensors); "
                         "save model.state_dict()")
    return state
