"""What an ONNX artifact needs and promises, read without running it."""

from __future__ import annotations

from pathlib import Path

import onnx

from . import graph
from .errors import InputError


def inspect_model(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no file at {path}; pass a .onnx file, e.g. artifacts/sentence_bert/model.onnx")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise InputError(f"{path} is not a readable ONNX model ({type(exc).__name__}); pass a .onnx file") from None
    initializers = {t.name for t in model.graph.initializer}
    return {
        "path": str(path),
        "size_bytes": path.stat().st_size,
        "ir_version": model.ir_version,
        "opset": graph.opset_of(model),
        "opset_imports": {o.domain or "ai.onnx": o.version for o in model.opset_import},
        "custom_op_domains": graph.custom_domains(model),
        "nodes": len(model.graph.node),
        "inputs": graph.describe_values(i for i in model.graph.input if i.name not in initializers),
        "outputs": graph.describe_values(model.graph.output),
        "metadata": {p.key: p.value for p in model.metadata_props},
    }
