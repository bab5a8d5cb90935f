"""What an ONNX artifact needs and promises, read without running it."""

from __future__ import annotations

from pathlib import Path

from . import graph, integrity
from .errors import InputError
from .modelfile import check_not_blank, read_onnx


def inspect_model(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no file at {path}; pass a .onnx file, e.g. artifacts/sentence_bert/model.onnx")
    check_not_blank(path)
    model = read_onnx(path)  # damaged, cut short or not ONNX: one line naming the file
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
        "integrity": integrity_of(path),
    }


def integrity_of(path: Path) -> str:
    """Whether the file matches the sha256 its artifact recorded (inspect reports, never refuses)."""
    folder = integrity.artifact_folder_of(path)
    if folder is None or not any(path.name in files for files in integrity.recorded(folder).values()):
        return "no recorded sha256"
    try:
        integrity.check_files(folder, [path.name])
    except integrity.IntegrityError as exc:
        return f"DIFFERS: {exc}"
    return "matches the recorded sha256"
