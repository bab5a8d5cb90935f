"""The model files a bench times: captured through api.capture_artifact, the variants made by
exportable.accelerate's table (the same Builder the export uses), or linked from `--artifact`."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import onnx

from .. import accelerate, api, graph
from ..accelerate.common import json_safe
from ..errors import ExportError, InputError
from ..recipe import Recipe
from .contenders import MODEL_FILES


def build_models(recipe: Recipe, folder: Path, wanted: Sequence[str], opset: int, quick: bool, threads: int,
                 progress: Callable[[str], None], ids_recipe: Callable[[], Recipe] | None = None) -> dict[str, dict]:
    """Write the model files the contenders need into `folder` (those already there, from
    `--artifact`, are kept). Returns what was built and how (capture strategy, each transform's
    detail), or why a variant could not be built ({"error": ...}: it is then unavailable)."""
    folder.mkdir(parents=True, exist_ok=True)
    built: dict[str, dict] = {}
    for fmt in ("onnx", "torchscript"):
        if _needs_format(recipe, fmt, wanted) and not (folder / MODEL_FILES[fmt]).is_file():
            progress(f"bench: capturing {fmt}")
            _, report = api.capture_artifact(recipe, fmt, folder, opset, progress)
            built[fmt] = {"strategy": report.stages[0].detail.get("strategy")}
    context = accelerate.Context(recipe, threads, 1 if quick else accelerate.CALIBRATION_BATCHES, progress)
    base = folder / MODEL_FILES["onnx"]
    artifact_builder = accelerate.Builder(onnx.load(str(base)), context) if base.is_file() else None
    for name in wanted:
        variant = accelerate.BY_NAME.get(name)
        if variant is None or (folder / variant.file).is_file():
            continue
        builder = artifact_builder if variant.base == "artifact" else _ids_builder(ids_recipe, folder, opset,
                                                                                    context, progress)
        if builder is None:
            continue
        progress(f"bench: building {name}")
        try:
            model, details = builder.build(variant)
        except ExportError as exc:  # e.g. a conv net: no GEMMs to quantize; the others still run
            built[name] = {"error": str(exc)}
            continue
        graph.save_model(model, folder / variant.file)
        built[name] = json_safe(details)
    return built


def _needs_format(recipe: Recipe, fmt: str, wanted: Sequence[str]) -> bool:
    if fmt not in recipe.formats or recipe.format_unavailable(fmt):
        return False
    if fmt == "torchscript":
        return "torchscript" in wanted
    return "onnx" in wanted or any(accelerate.BY_NAME[n].base == "artifact" for n in wanted if n in accelerate.BY_NAME)


def _ids_builder(ids_recipe, folder: Path, opset: int, context, progress):
    """A Builder on the ids-in capture of a text recipe (what the in-graph tokenizer costs)."""
    if ids_recipe is None:
        return None
    recipe = ids_recipe()
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        progress("bench: capturing the ids-in graph")
        path, _ = api.capture_artifact(recipe, "onnx", Path(tmp), opset, progress)
        base = onnx.load(str(path))
    return accelerate.Builder(base, accelerate.Context(recipe, context.threads, context.calibration_batches,
                                                       progress))


def fresh_models_folder(out: Path, artifact) -> Path:
    """out/models, emptied: built afresh each run (a stale model must never be timed), or
    holding links to an artifact folder's model files (`--artifact`), the missing ones built."""
    models = out / "models"
    try:
        if models.exists():
            shutil.rmtree(models)
        models.mkdir(parents=True)
    except OSError as exc:
        raise InputError(f"--out {out}: cannot write there ({exc.strerror}); choose a writable folder") from None
    if artifact is not None:
        for file in MODEL_FILES.values():
            source = Path(artifact) / file
            if source.is_file():
                try:
                    os.link(source, models / file)
                except OSError:
                    shutil.copy2(source, models / file)
    return models


def read_build_info(models: Path, built: dict) -> dict:
    info = dict(built)
    for name, file in MODEL_FILES.items():
        path = models / file
        if path.is_file():
            info.setdefault(name, {})["bytes"] = path.stat().st_size
    return json_safe(info)
