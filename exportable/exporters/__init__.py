"""Exporters: one module per format, each with the same verb

    export(module, example, inputs, outputs, path, **options) -> Capture

`example` maps input names to numpy arrays (the capture example, never a validation shape).
"""

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Capture:
    """What an exporter produced: the in-memory model (ONNX) and how it got there."""

    path: Any
    strategy: str
    model: Any = None
    warnings: list[str] = field(default_factory=list)
    tried: dict[str, str] = field(default_factory=dict)  # strategy -> why it failed
    detached: Any = None  # external.Detached: the weights of a big ONNX model, held out of `model`


def distinct_messages(caught) -> list[str]:
    seen = []
    for w in caught:
        msg = str(w.message).splitlines()[0][:200]
        if msg not in seen:
            seen.append(msg)
    return seen
