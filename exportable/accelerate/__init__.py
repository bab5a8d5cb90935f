"""Make an exported ONNX artifact faster, and prove it still answers as the original does.

Each transform is a function on an `onnx.ModelProto` that returns a new one (and what it did):
fusion.py (transformer fusions; Add + LayerNorm instead of the slow SkipLayerNormalization),
attention.py (the standard opset-23 Attention), unpad.py and chunks.py (the layers on real
tokens only, and in chunks of texts), int8.py with calibrate.py (accuracy-aware dynamic int8),
fp16.py (GPU half precision). variants.py is the table that names the variants built from
them; api's accelerate stage writes and verifies them like the artifact itself.
"""

from .calibrate import CALIBRATION_BATCHES, calibration_cases, corpus_texts
from .common import FUSED_OPS, MS_DOMAIN, Transformed, fused_op_counts
from .fp16 import to_fp16
from .fusion import fuse, standardized
from .int8 import quantize_int8
from .variants import (
    BY_NAME,
    EXPORT_VARIANTS,
    VARIANTS,
    Builder,
    Context,
    Transform,
    Variant,
    export_variants,
    fp16_tolerances,
    int8_tolerances,
    variant,
)

__all__ = [
    "BY_NAME", "CALIBRATION_BATCHES", "EXPORT_VARIANTS", "FUSED_OPS", "MS_DOMAIN", "VARIANTS", "Builder",
    "Context", "Transform", "Transformed", "Variant", "calibration_cases", "corpus_texts", "export_variants",
    "fp16_tolerances", "fuse", "fused_op_counts", "int8_tolerances", "quantize_int8", "standardized",
    "to_fp16", "variant",
]
