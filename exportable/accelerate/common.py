"""What every transform returns, and the small pieces all of them share."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

import numpy as np

from .. import graph
from .unpad import layer_nodes

# Fused com.microsoft ops we count (and test for): what a transformer graph should turn into.
FUSED_OPS = ("Attention", "MultiHeadAttention", "QAttention", "SkipLayerNormalization", "EmbedLayerNormalization",
             "BiasGelu", "FastGelu", "Gelu", "DynamicQuantizeMatMul", "MatMulIntegerToFloat")
MS_DOMAIN = "com.microsoft"
# Per-row activations are u8 around one fixed zero point per site (ORT's MatMulInteger takes a


def fused_op_counts(model) -> dict[str, int]:
    """com.microsoft ops in the graph, by type (only the ones that are present)."""
    counts = collections.Counter(n.op_type for n in layer_nodes(model.graph)
                                 if n.domain == MS_DOMAIN and n.op_type in FUSED_OPS)
    return dict(sorted(counts.items()))


@dataclass
class Transformed:
    """A transformed model and what was done to it (recorded in report.json and metadata)."""
    model: object  # onnx.ModelProto
    detail: dict = field(default_factory=dict)


def annotate(model, key: str, detail: dict) -> None:
    """Record what a transform did in the model's metadata (its bulky search trace left out)."""
    keep = {k: v for k, v in detail.items() if k not in ("plans", "search", "rules")}
    graph.set_metadata(model, {key: json_safe(keep)})


def json_safe(value):
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
