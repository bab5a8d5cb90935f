"""The stages of one export, in order: build -> capture -> assemble -> check -> reference ->
verify -> accelerate -> write -> publish. api.export_recipe() calls them; nothing else
orchestrates. Each stage is timed and recorded in report.json with its status; a failure
names its stage.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from transformers.utils import logging as hf_logging

from . import accelerate, contract, external, graph, integrity, outfolder, parity, runtime, vectors
from ._version import __version__
from .errors import CheckError, ExportableError, ExportError, InputError
from .hashing import sha256_state_dict
from .modelfile import ModelFileError
from .recipe import Recipe, Source
from .report import Report, Stage

MODEL_FILES = {"onnx": "model.onnx", "torchscript": "model.pt"}
# tests/test_trust_crash.py: the process SIGKILLs itself where this names (a stage, or a point
# inside publish), to prove a crash anywhere leaves the previous artifact or none.
CRASH_AT = "EXPORTABLE_TEST_CRASH_AT"


def crash_point(name: str) -> None:
    if os.environ.get(CRASH_AT) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def quiet_libraries() -> None:
    """transformers' weight-loading progress bars and config chatter are not our user's business."""
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


@dataclass
class Export:
    """What the stages hand on to each other."""

    recipe: Recipe
    formats: list[str]
    opset: int
    folder: Path  # the private temp folder; publish() moves it into place
    progress: Callable[[str], None]
    threads: int | None = None
    report: Report = None
    source: Source | None = None
    original: Callable | None = None
    runners: dict = field(default_factory=dict)  # format or variant -> runner
    cases: list = field(default_factory=list)
    expected: dict = field(default_factory=dict)
    variants: list = field(default_factory=list)  # accelerate.Variant written beside the artifact
    detached: external.Detached | None = None  # a big model's weights, held out of the proto until saved

    def __post_init__(self):
        if self.report is None:
            self.report = Report(self.recipe.name, self.recipe.describe()["options"], self.recipe.original_pipeline, {},
                                 tolerances={k: t.as_dict() for k, t in self.recipe.output_tolerances().items()})


@contextlib.contextmanager
def stage(export: Export, name: str):
    """Time one stage and record it; an exception marks it failed (and propagates)."""
    st = Stage(name)
    export.report.stages.append(st)
    export.progress(f"{name} ...")
    crash_point(name)
    start = time.perf_counter()
    try:
        yield st
    except Exception:
        st.status = "failed"
        raise
    finally:
        st.seconds = time.perf_counter() - start
    export.progress(f"{name} done in {st.seconds:.1f}s")


# --- build, capture, assemble, check ------------------------------------------------------------

def build(export: Export) -> Stage:
    """The original pipeline (the parity reference) and the recipe's declared source."""
    with stage(export, "build") as st:
        quiet_libraries()
        export.original = export.recipe.build_original()
        export.source = export.recipe.source()  # None: hashed from the first captured wrapper's weights
        if export.source is not None:
            st.detail["source"] = export.source.name
    return st


def capture(export: Export, fmt: str):
    """The wrapper as `fmt` (a ModelProto for ONNX, else None: the file is written)."""
    recipe, path = export.recipe, export.folder / MODEL_FILES[fmt]
    with stage(export, f"capture:{fmt}") as st:
        module = recipe.wrapper_for(fmt)
        inputs = recipe.model_input_specs(fmt)
        example = recipe.capture_feed(fmt)
        contract.check_wrapper_outputs(recipe.name, module, example, inputs, recipe.model_output_specs(fmt))
        export.source = export.source or wrapper_source(recipe, module)
        exporter = importlib.import_module(f"exportable.exporters.{recipe.exporter(fmt)}")
        result = exporter.export(module, example, inputs, recipe.model_output_specs(fmt), path, opset=export.opset)
        st.detail.update(strategy=result.strategy, warnings=result.warnings, tried=result.tried)
        export.detached = result.detached
        for failed, why in result.tried.items():
            export.progress(f"capture:{fmt} {failed} exporter failed ({why[:160]}); used {result.strategy}")
    return result.model


def wrapper_source(recipe: Recipe, module) -> Source:
    """The default Source of a recipe that declares none: the hash of its wrapper's weights."""
    state = module.state_dict() if hasattr(module, "state_dict") else {}
    return Source(f"{recipe.name} (wrapper weights)", sha256_state_dict(state))


def assemble(export: Export, model) -> Stage:
    """The recipe's pre/post graphs merged around the captured model, metadata, one file."""
    path = export.folder / MODEL_FILES["onnx"]
    with stage(export, "assemble:onnx") as st:
        model = assembled(export.recipe, model, export.opset, export.source)
        written = graph.save_model(model, path, export.detached)
        export.detached = None  # the data file holds them now
        st.detail.update(nodes=len(model.graph.node), bytes=path.stat().st_size,
                         custom_op_domains=graph.custom_domains(model))
        if len(written) > 1:
            st.detail["external_data"] = {"file": written[1], "bytes": (export.folder / written[1]).stat().st_size}
    return st


def assembled(recipe: Recipe, model, opset: int, source: Source):
    model = recipe.onnx_around(model, opset)
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


def check(export: Export, fmt: str) -> Stage:
    """onnx.checker (full) and a real load; for TorchScript, a real load. A model with external
    data (over 2 GB) also has its load cost measured in a fresh process (runtime.load_cost)."""
    path = export.folder / MODEL_FILES[fmt]
    with stage(export, f"check:{fmt}") as st:
        export.runners[fmt] = checked(path)
        if (path.parent / external.data_file_name(path.name)).is_file():
            cost = st.detail["load"] = runtime.load_cost(path, export.runners[fmt].custom_op_domains)
            export.progress(f"check:{fmt} load in a fresh ONNX Runtime process: {cost}")
    return st


def checked(path: Path, threads: int | None = None, providers=None):
    """A runner on `path` once the file passed onnx.checker and loaded, else a CheckError (one
    line, no traceback): a graph ONNX Runtime refuses is a failed export."""
    try:
        if path.suffix == ".onnx":
            onnx.checker.check_model(str(path), full_check=True)
        return runtime.load(path, threads, providers)
    except ModelFileError as exc:  # the file just written is damaged: a failed export, not bad input
        raise CheckError(str(exc)) from exc
    except ExportableError:
        raise
    except Exception as exc:
        raise CheckError(f"{path.name} does not pass the checks: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:300]}") from exc


# --- reference, verify ----------------------------------------------------------------------------

def reference(export: Export) -> Stage:
    """The original's answers on the validation cases (shapes other than the example's)."""
    recipe, first = export.recipe, export.formats[0]
    with stage(export, "reference") as st:
        export.cases = recipe.validation_cases()
        for case in export.cases:  # a case the artifact cannot be fed fails here, before the original runs on it
            if not recipe.unsupported(case, first):
                recipe.feed(case, first)
        export.expected = {c.name: export.original(c) for c in export.cases}
        st.detail["cases"] = len(export.cases)
    return st


def verify(export: Export, name: str, fmt: str, tolerances=None) -> Stage:
    """One model file (a format, or a variant fed like `fmt`) against the original on every
    case: the one verify loop (parity.verify_cases)."""
    with stage(export, f"verify:{name}") as st:
        results = parity.verify_cases(export.runners[name], export.recipe, fmt, export.cases, export.expected,
                                      tolerances)
        export.report.parity[name] = results
        if tolerances is not None:
            st.detail["tolerances"] = accelerate.common.json_safe({k: t.as_dict() for k, t in tolerances.items()})
        st.status = "ok" if all(r.passed for r in results) else "failed"
    return st


# --- accelerate ----------------------------------------------------------------------------------

def check_variants(names, formats: list[str], recipe: Recipe | None = None) -> list[accelerate.Variant]:
    """The variants asked for, refused up front (before any capture) when they cannot be made."""
    chosen = accelerate.export_variants(names, recipe)
    if chosen and "onnx" not in formats:
        raise InputError(f"variants ({', '.join(v.name for v in chosen)}) are made from the ONNX artifact; "
                         "add onnx to --format")
    have = ort.get_available_providers()
    for v in chosen:
        if v.providers[0] not in have:
            raise InputError(f"variant {v.name} runs on {v.providers[0]}, which this onnxruntime lacks (it has "
                             f"{', '.join(have)}); install onnxruntime-gpu or leave {v.name} out")
    return chosen


def accelerate_variants(export: Export) -> list[Stage]:
    """Each variant made from model.onnx by its transforms (accelerate.VARIANTS), written beside
    it and verified on the same cases with the variant's tolerances."""
    if not export.variants:
        return []
    builder = accelerate.Builder(onnx.load(str(export.folder / MODEL_FILES["onnx"])),
                                 accelerate.Context(export.recipe, export.threads, progress=export.progress))
    stages = []
    for v in export.variants:
        with stage(export, f"accelerate:{v.name}") as st:
            model, details = builder.build(v)
            graph.save_model(model, export.folder / v.file)
            st.detail.update(accelerate.common.json_safe({t.name: details[t.name] for t in v.chain(export.recipe)}))
            export.runners[v.name] = loaded_variant(export.folder / v.file, export.threads, v.providers)
        stages.append(st)
        stages.append(verify(export, v.name, "onnx", v.tolerances(export.recipe.output_tolerances())))
    return stages


def loaded_variant(path: Path, threads: int | None, providers):
    """A session on a file a transform wrote, or an ExportError naming it (one line, no
    traceback): a transform that yields a graph ONNX Runtime refuses is a failed export."""
    try:
        return runtime.load(path, threads, providers)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"{path.name} does not load in ONNX Runtime ({first}); export without that variant, "
                          "and report this graph") from exc


# --- write, publish ------------------------------------------------------------------------------

def write(export: Export) -> Stage:
    """Test vectors (inputs and the original's outputs, for Java and Go) and the report."""
    with stage(export, "write") as st:
        files = integrity.describe(export.folder, model_files(export))
        write_vectors(export, files)
        export.report.files = files
        export.report.write(export.folder)
    return st


def model_files(export: Export) -> list[str]:
    """Every model file this export wrote (formats and variants, and the external-data file of
    any over 2 GB), each hashed into the records."""
    names = [MODEL_FILES[fmt] for fmt in export.formats] + [v.file for v in export.variants]
    data = [external.data_file_name(n) for n in names if (export.folder / external.data_file_name(n)).is_file()]
    return names + data


def write_vectors(export: Export, files: dict) -> None:
    recipe, fmts = export.recipe, export.formats
    cases_out = []
    for case in export.cases:
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
        cases_out.append(vectors.VectorCase(case.name, onnx_feed, export.expected[case.name], other, known))
    custom = export.runners["onnx"].custom_op_domains if "onnx" in export.runners else []
    fp32 = recipe.output_tolerances()
    variants = {v.name: {"file": v.file, "tolerances": v.tolerances(fp32)} for v in export.variants}
    vectors.write(export.folder / "vectors", vectors.Vectors(
        recipe.name, {fmt: MODEL_FILES[fmt] for fmt in fmts}, custom, fp32, cases_out, variants, files))


def prepare_out(out: Path) -> Path:
    """Fail early (exit 2) on an output folder we cannot write; return a private temp folder
    beside it, renamed into place only when everything passed."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; pass a folder path")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        outfolder.clean_leftovers(out)  # what an export killed mid-way left beside `out`
        return outfolder.temp_folder(out)
    except OSError as exc:
        raise InputError(f"--out {out}: cannot write there ({exc.strerror}); choose a writable folder") from None


def publish(export: Export, out: Path, allow_mismatch: bool) -> None:
    """Refuse a failed parity (ParityError, nothing written) unless allowed; then swap the
    finished folder into place: the old artifact disappears only after that."""
    failed = {name: rs for name, rs in export.report.parity.items() if not all(r.passed for r in rs)}
    if failed and not allow_mismatch:
        name, results = next(iter(failed.items()))
        parity.check(results, f"{export.recipe.name} {name} artifact vs {export.recipe.original_pipeline}")
    crash_point("publish")
    outfolder.swap_into_place(export.folder, out, crash_point)
