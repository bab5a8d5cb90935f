"""What a bench times: the original, the TorchScript file and the ONNX variants
(exportable.accelerate's table), each a callable on a Case with the tolerance it is judged by."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from .. import accelerate, api, graph, runtime
from ..accelerate.common import json_safe
from ..errors import InputError
from ..recipe import Case, Recipe, Tolerance
from ..textinput import TextInputs
from .machine import rss_mib

ALL_VARIANTS = ("original", "torchscript", "onnx", *accelerate.BY_NAME)
MODEL_FILES = {**api.MODEL_FILES, **{v.name: v.file for v in accelerate.VARIANTS}}


@dataclass
class Contender:
    name: str
    description: str
    call: Callable[[Case], Mapping[str, np.ndarray]] | None
    tolerances: Mapping[str, Tolerance]
    file: str | None = None
    device: str = "cpu"
    status: str = "ok"  # ok | failed | unavailable
    reason: str = ""
    parity: dict = field(default_factory=dict)  # worst over the bench inputs
    load_rss_mib: float | None = None

    def summary(self) -> dict:
        return {"description": self.description, "file": self.file, "device": self.device, "status": self.status,
                "reason": self.reason, "parity": self.parity, "load_rss_mib": self.load_rss_mib,
                "tolerances": {k: json_safe(t.as_dict()) for k, t in self.tolerances.items()}}


def cuda_available() -> tuple[bool, str]:
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False, ("CUDA requested but this onnxruntime has no CUDAExecutionProvider (providers: "
                       f"{', '.join(ort.get_available_providers())}; install onnxruntime-gpu); running on CPU")
    return True, ""


class OrtCall:
    """session.run for one model on CPU, or on CUDA with IO binding (inputs copied to the
    device once per call, outputs left there and copied back once)."""
    def __init__(self, path: Path, recipe: Recipe, fmt: str, threads: int, device: str = "cpu", feed_recipe=None):
        model = onnx.load(str(path), load_external_data=False)
        # Threads spin during a run (ORT's default, the latency a service gets) but stop when it
        # returns: measured, pools left spinning between calls made the torch variants in this
        # process 10x slower (short x 32: 870 ms instead of 55 ms).
        so = runtime.session_options(graph.custom_domains(model), threads)
        so.add_session_config_entry("session.force_spinning_stop", "1")
        providers = ["CPUExecutionProvider"]
        if device == "cuda":
            providers = [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(path), so, providers=providers)
        self.device = device
        self.recipe, self.fmt = feed_recipe or recipe, fmt
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.string_inputs = {i.name for i in self.session.get_inputs() if i.type == "tensor(string)"}

    def __call__(self, case: Case) -> dict[str, np.ndarray]:
        feed = self.recipe.feed(case, self.fmt)
        if self.device != "cuda":
            return dict(zip(self.outputs, self.session.run(self.outputs, feed)))
        return run_bound(self.session, feed, self.outputs, self.device, self.string_inputs)


def run_bound(session, feed: Mapping[str, np.ndarray], outputs: Sequence[str], device: str,
              string_inputs: set[str]) -> dict[str, np.ndarray]:
    """One call through IO binding: inputs copied to `device` once, outputs bound there.

    A string input cannot be bound (onnxruntime 1.31: "Only binding non-string Tensors is
    currently supported", and no OrtValue is made from a string array), so a text-in graph runs
    through session.run: its tokenizer runs on the CPU anyway, ONNX Runtime copies the ids to
    the device itself, and its outputs (one embedding per text) are small."""
    if string_inputs & set(feed):
        return dict(zip(outputs, session.run(list(outputs), dict(feed))))
    binding = session.io_binding()
    for name, value in feed.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value), device, 0))
    for name in outputs:
        binding.bind_output(name, device)
    session.run_with_iobinding(binding)
    return dict(zip(outputs, binding.copy_outputs_to_cpu()))


def loaded(variant: Contender, factory: Callable[[], Callable]) -> Contender:
    before = rss_mib()
    try:
        variant.call = factory()
    except Exception as exc:  # a variant that cannot load is reported, the others still run
        variant.status, variant.reason = "unavailable", f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        variant.call = None
    after = rss_mib()
    if before is not None and after is not None:
        variant.load_rss_mib = round(after - before, 1)
    return variant


def wanted_variants(recipe, variants, device) -> list[str]:
    """The contenders asked for (--variants), else every one that applies here: the variants
    on this device's providers, and the ids-in one for a recipe that takes strings."""
    if variants:
        unknown = [v for v in variants if v not in ALL_VARIANTS]
        if unknown:
            raise InputError(f"--variants {unknown[0]!r}: choose from {', '.join(ALL_VARIANTS)}")
        wanted = list(variants)
    else:
        text_in = isinstance(recipe, TextInputs) and recipe.text_mode
        wanted = ["original", "torchscript", "onnx"] + [
            v.name for v in accelerate.VARIANTS
            if (v.providers[0] == "CPUExecutionProvider" or device == "cuda") and (v.base == "artifact" or text_in)
            and v.made_for(recipe)]
    if "original" not in wanted:
        wanted.insert(0, "original")  # the reference every variant is proven and timed against
    scripted = "torchscript" in recipe.formats and not recipe.format_unavailable("torchscript")
    return [v for v in wanted if v != "torchscript" or scripted]


def make_contenders(recipe, wanted, models: Path, threads, device, ids_recipe,
                    built: dict | None = None) -> list[Contender]:
    fp32 = recipe.output_tolerances()
    onnx_desc = "exported artifact" + (" (strings in: tokenizer in the graph)" if recipe.text_mode
                                       else " (recipe feed + graph)")
    specs = {
        "original": (f"{recipe.original_pipeline} (its own preprocessing included)", fp32),
        "torchscript": ("TorchScript artifact (model.pt) + the recipe's feed (tokenization)", fp32),
        "onnx": (onnx_desc, fp32),
        **{v.name: (v.description, v.tolerances(fp32)) for v in accelerate.VARIANTS},
    }
    out = []
    for name in wanted:
        desc, tol = specs[name]
        file = MODEL_FILES.get(name)
        v = Contender(name, desc, None, tol, file if name != "original" else None,
                      device if name.startswith("onnx") else "cpu")
        if name == "original" and device == "cuda":
            gpu, why = original_on_gpu(recipe)
            v.description += " (eager PyTorch on the GPU)" if gpu else f" (on the CPU: {why})"
            v.device = "cuda" if gpu else "cpu"
            loaded(v, gpu or recipe.bench_original)
        elif name == "original":  # a recipe whose original memoises answers says how to time it
            loaded(v, recipe.bench_original)
        elif file is None or not (models / file).is_file():
            why = (built or {}).get(name, {}).get("error")
            v.status, v.reason = "unavailable", why or f"no {file} in {models}"
        elif name == "torchscript":
            loaded(v, lambda path=models / file: torchscript_call(path, recipe))
        elif name in accelerate.BY_NAME and accelerate.BY_NAME[name].base == "ids":
            loaded(v, lambda path=models / file: OrtCall(path, recipe, "onnx", threads, device,
                                                          feed_recipe=ids_recipe()))
        else:
            loaded(v, lambda path=models / file: OrtCall(path, recipe, "onnx", threads, device))
        out.append(v)
    return out


def original_on_gpu(recipe) -> tuple[Callable[[], Callable] | None, str]:
    """What times the original on the GPU (issue 10: measure against eager PyTorch there), or why
    nothing does: a recipe opts in with `original_on(device)`."""
    if type(recipe).original_on is Recipe.original_on:
        return None, f"{recipe.name} has no original_on(device)"
    if not torch.cuda.is_available():
        return None, f"torch {torch.__version__} sees no CUDA device"
    return (lambda: recipe.original_on("cuda")), ""


def torchscript_call(path: Path, recipe):
    runner = runtime.TorchScriptRunner(path)
    return lambda case: runner.run(recipe.feed(case, "torchscript"))
