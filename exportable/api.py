"""The public Python API: export_recipe(), verify_artifact(), load_artifact(), capture_artifact().

export_recipe() reads as the stages of an export (exportable/stages.py), in order; each is
timed and recorded in report.json, and a failure names its stage.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from . import accelerate, integrity, parity, registry, runtime, stages, vectors
from .errors import InputError
from .exporters import onnx as onnx_exporter
from .recipe import FORMATS, Recipe
from .report import Report
from .stages import MODEL_FILES, quiet_libraries

__all__ = ["MODEL_FILES", "ExportResult", "capture_artifact", "export_recipe", "load_artifact", "quiet_libraries",
           "resolve_recipe", "verify_artifact"]
DEFAULT_OPSET = 18
QUANTIZE_CHOICES = ("int8",)


@dataclass
class ExportResult:
    out: Path
    report: Report

    @property
    def passed(self) -> bool:
        return all(r.passed for results in self.report.parity.values() for r in results)


def _silent(_msg: str) -> None:
    pass


def parse_formats(formats: str | Iterable[str] | None, recipe) -> list[str]:
    """The formats asked for, each one the recipe (a class, or an instance whose settings may
    rule one out: format_unavailable) supports; default onnx."""
    if formats is None:
        return ["onnx"]
    wanted = [f.strip() for f in (formats.split(",") if isinstance(formats, str) else formats) if f.strip()]
    for fmt in wanted:
        if fmt not in FORMATS:
            raise InputError(f"unknown format {fmt!r}; choose from: {', '.join(FORMATS)}")
        if fmt not in recipe.formats:
            raise InputError(f"recipe {recipe.name} does not support {fmt!r}; it supports: {', '.join(recipe.formats)}")
        why = recipe.format_unavailable(fmt) if isinstance(recipe, Recipe) else None
        if why:
            raise InputError(f"recipe {recipe.name} does not support {fmt!r} {why}")
    if not wanted:
        raise InputError(f"no format given; choose from: {', '.join(FORMATS)}")
    return wanted


def check_opset(opset: int) -> int:
    top = onnx_exporter.max_opset()
    if not isinstance(opset, int) or not onnx_exporter.MIN_OPSET <= opset <= top:
        raise InputError(f"opset {opset} is not supported; choose {onnx_exporter.MIN_OPSET} to {top} "
                         f"(default {DEFAULT_OPSET})")
    return opset


def resolve_recipe(recipe: str | type | Recipe, options: dict) -> Recipe:
    """A Recipe instance from a name / `./file.py[:Class]` / `pkg.mod:Class` (registry.resolve),
    a Recipe subclass, or an instance (which already holds its options)."""
    if isinstance(recipe, Recipe):
        if options:
            raise InputError(f"export_recipe got a {type(recipe).__name__} instance and options "
                             f"{sorted(options)}; pass the options to the class instead ({type(recipe).__name__}(...))")
        return recipe
    if isinstance(recipe, str):
        recipe = registry.resolve(recipe)
    if not (isinstance(recipe, type) and issubclass(recipe, Recipe)):
        raise InputError(f"export_recipe takes a recipe name, file, Recipe subclass or instance, not "
                         f"{type(recipe).__name__}")
    return recipe(**options)


def export_recipe(recipe: str | type | Recipe, out: str | Path | None = None, formats=None,
                  opset: int = DEFAULT_OPSET, allow_mismatch: bool = False,
                  progress: Callable[[str], None] = _silent, optimize: bool = False, quantize: str | None = None,
                  threads: int | None = None, variants: Iterable[str] | None = None, **options) -> ExportResult:
    """Export `recipe` to `out` (default artifacts/<recipe name>) and prove it against the original.

    `recipe` is a registered name, a recipe file (`./my_recipe.py`, `./my_recipe.py:Class`), a
    module (`my_pkg.recipes:MyRecipe`), a Recipe subclass (with `options` as keywords) or an
    instance. Raises ParityError (after writing nothing) when a model file does not match,
    unless `allow_mismatch` is set, in which case it is written with the failing table.
    `variants` (names from exportable.accelerate.VARIANTS, e.g. onnx-optimized, onnx-int8) are
    written beside model.onnx, each verified against the original like the artifact;
    `optimize=True` means onnx-optimized, `quantize="int8"` onnx-optimized and onnx-int8.
    """
    names = requested_variants(variants, optimize, quantize, threads)
    check_opset(opset)
    instance = resolve_recipe(recipe, options)
    fmts = parse_formats(formats, instance)
    chosen = stages.check_variants(names, fmts, instance)
    out = Path(out) if out is not None else Path("artifacts") / instance.name
    export = stages.Export(instance, fmts, opset, stages.prepare_out(out), progress, threads, variants=chosen)
    try:
        stages.build(export)
        for fmt in fmts:
            model = stages.capture(export, fmt)
            if fmt == "onnx":
                stages.assemble(export, model)
            stages.check(export, fmt)
        export.report.source = {"name": export.source.name, "sha256": export.source.sha256,
                                "path": export.source.path}
        stages.reference(export)
        for fmt in fmts:
            stages.verify(export, fmt, fmt)
        stages.accelerate_variants(export)
        stages.write(export)
        stages.publish(export, out, allow_mismatch)
    except BaseException:
        shutil.rmtree(export.folder, ignore_errors=True)
        raise
    return ExportResult(out, export.report)


def requested_variants(variants, optimize: bool, quantize: str | None, threads: int | None) -> list[str]:
    """The variant names asked for (--variants, or the --optimize / --quantize shorthands),
    checked up front."""
    if quantize is not None and quantize not in QUANTIZE_CHOICES:
        raise InputError(f"--quantize {quantize!r}: choose from {', '.join(QUANTIZE_CHOICES)}")
    if threads is not None and threads < 1:
        raise InputError(f"--threads {threads}: must be >= 1")
    names = [v.strip() for v in (variants.split(",") if isinstance(variants, str) else variants or ()) if v.strip()]
    if optimize or quantize:
        names.append("onnx-optimized")
    if quantize:
        names.append(f"onnx-{quantize}")
    for name in names:
        accelerate.variant(name)  # an unknown name is an InputError listing the table
    return list(dict.fromkeys(names))


def capture_artifact(recipe: Recipe, fmt: str, folder: Path, opset: int = DEFAULT_OPSET,
                     progress: Callable[[str], None] = _silent) -> tuple[Path, Report]:
    """Capture, assemble and check `recipe` as `fmt` into `folder` without verifying it (bench
    times files it then gates by parity on its own inputs): (model path, the stages' report)."""
    export = stages.Export(recipe, [fmt], opset, Path(folder), progress)
    export.source = recipe.source()
    model = stages.capture(export, fmt)
    if fmt == "onnx":
        stages.assemble(export, model)
    stages.check(export, fmt)
    return Path(folder) / MODEL_FILES[fmt], export.report


def model_file(path: str | Path, fmt: str = "onnx") -> Path:
    """The model file of `fmt` in an artifact folder (or `path` itself when it is a file)."""
    path = Path(path)
    if path.is_dir():
        files = {**MODEL_FILES, **{v.name: v.file for v in accelerate.VARIANTS}}
        if fmt not in files:
            raise InputError(f"unknown format {fmt!r}; choose from: {', '.join(files)}")
        path = path / files[fmt]
    return path


def load_artifact(path: str | Path, fmt: str = "onnx", threads: int | None = None, check_hash: bool = True):
    """A runner for an artifact folder (or a model file): `runner.run({name: array})`; `fmt` is
    a format (onnx, torchscript) or a variant written beside it (onnx-optimized, onnx-int8...).

    The file is refused with a one-line InputError (exit 2) when it differs from the sha256
    recorded at export (`check_hash=False` skips that), or is damaged or hostile
    (exportable.modelfile: empty, cut short, not ONNX, external data outside its folder...)."""
    path = model_file(path, fmt)
    folder = integrity.artifact_folder_of(path)
    if check_hash and folder is not None:
        integrity.check_files(folder, [path.name])
    providers = accelerate.BY_NAME[fmt].providers if fmt in accelerate.BY_NAME else None
    return runtime.load(path, threads, providers)


def verify_artifact(folder: str | Path, formats=None, check_hash: bool = True) -> dict[str, list[parity.CaseResult]]:
    """Replay the vectors beside an artifact against its model files (the formats and every
    variant written with it, each with its own tolerances); raise ParityError on mismatch.
    Before any model is loaded, each file is checked against its recorded sha256 (IntegrityError,
    exit 2; `check_hash=False` skips that)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder} is not an artifact folder; pass e.g. artifacts/sentence_bert")
    if check_hash:
        integrity.recorded(folder)  # an unreadable report.json or manifest is named before anything else
    vecs = vectors.read(folder / "vectors")
    files = {**vecs.models, **{name: v["file"] for name, v in vecs.variants.items()}}
    fmts = [f for f in (formats or files) if (folder / files.get(f, "-")).is_file()]
    if not fmts:
        raise InputError(f"{folder} holds none of the model files listed in its vectors ({files})")
    if check_hash:
        integrity.check_files(folder, [files[f] for f in fmts])
    results = {}
    for fmt in fmts:
        variant = vecs.variants.get(fmt)
        tolerances = variant["tolerances"] if variant else vecs.tolerances
        feed_as = "onnx" if variant else fmt
        providers = accelerate.BY_NAME[fmt].providers if fmt in accelerate.BY_NAME else None
        runner = runtime.load(folder / files[fmt], providers=providers)
        results[fmt] = parity.judge_overall([
            parity.not_applicable(c.name, c.known_failures[feed_as]) if feed_as in c.known_failures else
            parity.judge_outputs(c.name, runner.run(c.inputs_for(feed_as)), c.expected, tolerances)
            for c in vecs.cases
        ], tolerances)
    for fmt, res in results.items():
        parity.check(res, f"{folder} {fmt} vectors")
    return results
