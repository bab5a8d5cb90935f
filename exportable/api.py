"""The public Python API: export_recipe(), verify_artifact(), load_artifact().

export_recipe() reads as the stages of DESIGN.md: build -> capture -> assemble -> check ->
verify -> write. Each stage is timed and recorded; a failure names its stage.
"""

from __future__ import annotations

import contextlib
import importlib
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import contract, graph, parity, registry, runtime, vectors
from . import optimize as optimizer  # not `optimize`: export_recipe's flag has that name
from ._version import __version__
from .errors import CheckError, ExportableError, InputError
from .exporters import onnx as onnx_exporter
from .hashing import sha256_state_dict
from .recipe import FORMATS, Recipe, Source
from .report import Report, Stage

MODEL_FILES = {"onnx": "model.onnx", "torchscript": "model.pt"}
# Written by --optimize / --quantize int8 beside model.onnx, verified in the same export (issue 10).
VARIANT_FILES = {"onnx.optimized": optimizer.OPTIMIZED_FILE, "onnx.int8": optimizer.INT8_FILE}
DEFAULT_OPSET = 18


@dataclass
class ExportResult:
    out: Path
    report: Report

    @property
    def passed(self) -> bool:
        return all(r.passed for results in self.report.parity.values() for r in results)


def _silent(_msg: str) -> None:
    pass


@contextlib.contextmanager
def _stage(report: Report, name: str, progress: Callable[[str], None]):
    stage = Stage(name)
    report.stages.append(stage)
    progress(f"{name} ...")
    start = time.perf_counter()
    try:
        yield stage
    except Exception:
        stage.status = "failed"
        raise
    finally:
        stage.seconds = time.perf_counter() - start
    progress(f"{name} done in {stage.seconds:.1f}s")


def quiet_libraries() -> None:
    """transformers' weight-loading progress bars and config chatter are not our user's business."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
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


def prepare_out(out: Path) -> Path:
    """Fail early (exit 2) on an output folder we cannot write; return a private temp folder
    beside it, renamed into place only when everything passed."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; pass a folder path")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as exc:
        raise InputError(f"--out {out}: cannot write there ({exc.strerror}); choose a writable folder") from None


def publish(tmp: Path, out: Path) -> None:
    """Swap the finished folder into place; the old artifact disappears only after that."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{int(time.time() * 1000)}")
        out.rename(old)
    tmp.chmod(0o755)  # mkdtemp makes it private; an artifact folder is meant to be shared
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


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
                  threads: int | None = None, **options) -> ExportResult:
    """Export `recipe` to `out` (default artifacts/<recipe name>) and prove it against the original.

    `recipe` is a registered name, a recipe file (`./my_recipe.py`, `./my_recipe.py:Class`), a
    module (`my_pkg.recipes:MyRecipe`), a Recipe subclass (with `options` as keywords) or an
    instance. Raises ParityError (after writing nothing) when the artifact does not match, unless
    `allow_mismatch` is set, in which case the artifact is written with the failing table.
    `optimize` / `quantize="int8"` also write model.optimized.onnx / model.int8.onnx, each
    verified against the original like the artifact (exportable.optimize.export_stages).
    """
    post = _post_stages(optimize, quantize, threads)
    check_opset(opset)
    instance = resolve_recipe(recipe, options)
    fmts = parse_formats(formats, instance)
    out = Path(out) if out is not None else Path("artifacts") / instance.name
    tmp = prepare_out(out)
    try:
        report = _run_stages(instance, fmts, opset, tmp, progress, post)
        failed = {fmt: rs for fmt, rs in report.parity.items() if not all(r.passed for r in rs)}
        if failed and not allow_mismatch:
            fmt, results = next(iter(failed.items()))
            parity.check(results, f"{instance.name} {fmt} artifact vs {instance.original_pipeline}")
        publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(out, report)


def _post_stages(optimize: bool, quantize: str | None, threads: int | None) -> dict | None:
    """Options of the optimize/quantize stages after verification (issue 10), checked up front."""
    if quantize is not None and quantize not in optimizer.QUANTIZE_CHOICES:
        raise InputError(f"--quantize {quantize!r}: choose from {', '.join(optimizer.QUANTIZE_CHOICES)}")
    if threads is not None and threads < 1:
        raise InputError(f"--threads {threads}: must be >= 1")
    return {"quantize": quantize, "threads": threads} if optimize or quantize else None


def _run_stages(recipe: Recipe, fmts: list[str], opset: int, folder: Path, progress, post=None) -> Report:
    report = Report(recipe.name, recipe.describe()["options"], recipe.original_pipeline, {},
                    tolerances={k: t.as_dict() for k, t in recipe.output_tolerances().items()})
    with _stage(report, "build", progress) as st:
        quiet_libraries()
        original = recipe.build_original()
        source = recipe.source()  # None: hashed from the first captured wrapper's weights
        if source is not None:
            st.detail["source"] = source.name
    models = {}
    for fmt in fmts:
        models[fmt], source = capture_and_check(recipe, fmt, opset, folder, report, progress, source)
    report.source = {"name": source.name, "sha256": source.sha256, "path": source.path}
    with _stage(report, "reference", progress) as st:
        cases = recipe.validation_cases()
        for case in cases:  # a case the artifact cannot be fed fails here, before the original runs on it
            if not recipe.unsupported(case, fmts[0]):
                recipe.feed(case, fmts[0])
        expected = {c.name: original(c) for c in cases}
        st.detail["cases"] = len(cases)
    for fmt in fmts:
        with _stage(report, f"verify:{fmt}", progress) as st:
            results = parity.verify_cases(models[fmt], recipe, fmt, cases, expected)
            report.parity[fmt] = results
            st.status = "ok" if all(r.passed for r in results) else "failed"
    if post is not None:  # --optimize / --quantize: extra files, each parity-gated (exportable/optimize.py)
        optimizer.export_stages(recipe, folder, report, cases, expected, quantize=post["quantize"],
                                threads=post["threads"], stage=lambda name: _stage(report, name, progress),
                                progress=progress)
    with _stage(report, "write", progress):
        _write_vectors(recipe, fmts, folder, cases, expected, models)
        report.files = {p.name: f"{p.stat().st_size} bytes" for p in folder.iterdir() if p.is_file()}
        report.write(folder)
    return report


def capture_and_check(recipe: Recipe, fmt: str, opset: int, folder: Path, report: Report, progress,
                      source: Source | None = None) -> tuple:
    """Capture the wrapper as `fmt` into `folder` (for ONNX, assembled with the recipe's pre/post
    graphs and metadata), check the file and load it: (runner, source). `source` None: the
    wrapper's state_dict hash (wrapper_source)."""
    path = folder / MODEL_FILES[fmt]
    with _stage(report, f"capture:{fmt}", progress) as st:
        module = recipe.wrapper_for(fmt)
        inputs = recipe.model_input_specs(fmt)
        example = recipe.capture_feed(fmt)
        contract.check_wrapper_outputs(recipe.name, module, example, inputs, recipe.model_output_specs(fmt))
        source = source or wrapper_source(recipe, module)
        exporter = importlib.import_module(f"exportable.exporters.{recipe.exporter(fmt)}")
        capture = exporter.export(module, example, inputs, recipe.model_output_specs(fmt), path, opset=opset)
        st.detail.update(strategy=capture.strategy, warnings=capture.warnings, tried=capture.tried)
        for failed, why in capture.tried.items():
            progress(f"capture:{fmt} {failed} exporter failed ({why[:160]}); used {capture.strategy}")
    if fmt == "onnx":
        with _stage(report, "assemble:onnx", progress) as st:
            model = assemble(recipe, capture.model, opset, source)
            graph.save_single_file(model, path)
            st.detail.update(nodes=len(model.graph.node), bytes=path.stat().st_size,
                             custom_op_domains=graph.custom_domains(model))
    with _stage(report, f"check:{fmt}", progress):
        return check_model(path), source


def wrapper_source(recipe: Recipe, module) -> Source:
    """The default Source of a recipe that declares none: the hash of its wrapper's weights."""
    state = module.state_dict() if hasattr(module, "state_dict") else {}
    return Source(f"{recipe.name} (wrapper weights)", sha256_state_dict(state))


def assemble(recipe: Recipe, model, opset: int, source: Source):
    pre = recipe.onnx_preprocessor(opset)
    if pre is not None:
        model = graph.merge_in_front(pre, model)
        graph.apply_specs(model, recipe.input_specs("onnx"), recipe.output_specs())
    post = recipe.onnx_postprocessor(opset)
    if post is not None:
        model = graph.merge_behind(model, post)
        graph.apply_specs(model, recipe.input_specs("onnx"), recipe.output_specs())
    graph.set_metadata(model, {
        "exportable.recipe": recipe.name,
        "exportable.version": __version__,
        "exportable.source_model": source.name,
        "exportable.source_sha256": source.sha256,
        "exportable.opset": str(graph.opset_of(model)),
        "exportable.custom_op_domains": ",".join(graph.custom_domains(model)),
        "exportable.inputs": [s.as_dict() for s in recipe.input_specs("onnx")],
        "exportable.outputs": [s.as_dict() for s in recipe.output_specs()],
        "exportable.preprocessing": recipe.preprocessing(),
        "exportable.original_pipeline": recipe.original_pipeline,
    })
    model.producer_name, model.producer_version = "exportable", __version__
    model.doc_string = f"{recipe.name}: {recipe.summary}"
    return model


def check_model(path: Path):
    """onnx.checker (full) and a real load; for TorchScript, a real load."""
    try:
        if path.suffix == ".onnx":
            import onnx

            onnx.checker.check_model(str(path), full_check=True)
        return runtime.load(path)
    except ExportableError:
        raise
    except Exception as exc:
        raise CheckError(f"{path.name} does not pass the checks: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:300]}") from exc


def _write_vectors(recipe, fmts, folder, cases, expected, models) -> None:
    cases_out = []
    for case in cases:
        onnx_feed = recipe.feed(case, "onnx")
        other, known = {}, {**vectors.known_failures(onnx_feed), **recipe.runtime_limitations(case)}
        for fmt in fmts:
            if recipe.unsupported(case, fmt):
                known[fmt] = recipe.unsupported(case, fmt)
                continue
            feed = recipe.feed(case, fmt)
            if fmt != "onnx" and (feed.keys() != onnx_feed.keys()
                                  or any(not np.array_equal(feed[k], onnx_feed[k]) for k in feed)):
                other[fmt] = feed
        cases_out.append(vectors.VectorCase(case.name, onnx_feed, expected[case.name], other, known))
    custom = models["onnx"].custom_op_domains if "onnx" in models else []
    vectors.write(folder / "vectors", vectors.Vectors(
        recipe.name, {fmt: MODEL_FILES[fmt] for fmt in fmts}, custom, recipe.output_tolerances(), cases_out))


def load_artifact(path: str | Path, fmt: str = "onnx", threads: int | None = None):
    """A runner for an artifact folder (or a model file): `runner.run({name: array})`."""
    path = Path(path)
    if path.is_dir():
        files = {**MODEL_FILES, **VARIANT_FILES}
        if fmt not in files:
            raise InputError(f"unknown format {fmt!r}; choose from: {', '.join(files)}")
        path = path / files[fmt]
    return runtime.load(path, threads)


def verify_artifact(folder: str | Path, formats=None) -> dict[str, list[parity.CaseResult]]:
    """Replay the vectors beside an artifact against its model files; raise ParityError on mismatch."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder} is not an artifact folder; pass e.g. artifacts/sentence_bert")
    vecs = vectors.read(folder / "vectors")
    fmts = [f for f in (formats or vecs.models) if (folder / vecs.models.get(f, "-")).is_file()]
    if not fmts:
        raise InputError(f"{folder} holds none of the model files listed in its vectors ({vecs.models})")
    results = {}
    for fmt in fmts:
        runner = runtime.load(folder / vecs.models[fmt])
        results[fmt] = [
            parity.not_applicable(c.name, c.known_failures[fmt]) if fmt in c.known_failures else
            parity.judge(c.name, parity.compare(runner.run(c.inputs_for(fmt)), c.expected, vecs.tolerances),
                         vecs.tolerances)
            for c in vecs.cases
        ]
    for fmt, res in results.items():
        parity.check(res, f"{folder} {fmt} vectors")
    return results
