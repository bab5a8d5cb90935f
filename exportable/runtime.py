"""Run an artifact: an ONNX Runtime session (extensions registered when the graph needs them)
or a TorchScript module, behind one `run(feed) -> {output: array}` verb.

The runners validate what they are fed, so a wrong dtype or rank is a one-line InputError
rather than a crash deep inside a kernel.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import subprocess
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import onnxruntime_extensions
import torch

from .errors import InputError
from .modelfile import BUILTIN_DOMAINS, EXTENSIONS_DOMAINS, ModelFileError, check_model_file

EXTENSIONS_DOMAIN = "ai.onnx.contrib"
# A graph can refuse its input on purpose: a node named "input error: <message>" that fails
# (exportable.blocks.image_io). The runners report such failures as InputError(<message>).
INPUT_ERROR = "input error: "

ORT_TYPES = {
    "tensor(float)": "float32", "tensor(double)": "float64", "tensor(int64)": "int64",
    "tensor(int32)": "int32", "tensor(uint8)": "uint8", "tensor(bool)": "bool", "tensor(string)": "string",
}


def available_cpus(cgroup_root: str | Path = "/sys/fs/cgroup") -> int:
    """CPUs this process may really use: the cgroup quota and affinity, not the host's count.

    Oversubscribed intra-op threads in a CPU-limited container slow inference down: ONNX
    Runtime and torch size their pools from the host's core count, which a container with
    `--cpus 2` on a 64-core host does not have. A fractional quota rounds down (at least 1).
    """
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_quota(Path(cgroup_root))
    if quota is not None:
        count = min(count, max(1, int(quota)))
    return max(1, count)


def _cgroup_quota(root: Path) -> float | None:
    """CPUs allowed by the cgroup, or None when unlimited or unknown.
    v2: cpu.max = "max 100000" | "200000 100000"; v1: cpu/cpu.cfs_quota_us (-1 = unlimited)
    over cpu/cpu.cfs_period_us."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    for folder in (root / "cpu", root / "cpu,cpuacct", root):
        try:
            quota = int((folder / "cpu.cfs_quota_us").read_text())
            period = int((folder / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return None if quota <= 0 or period <= 0 else quota / period
    return None


def extensions_library() -> str:
    return onnxruntime_extensions.get_library_path()


def session_options(custom_domains, threads: int | None = None):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or available_cpus()
    so.inter_op_num_threads = 1
    # Softmax over long padded rows leaves denormal probabilities (exp of scores ~100 below the
    # row's max), and x86 runs the attention GEMMs on them at a fraction of speed: measured on
    # sentence_bert, mixed-length 32 x 256 tokens 1,357 -> 1,121 ms, 32 x 128 443 -> 428 ms,
    # output bit-identical (issue 10). Flushing them to zero changes nothing a float32 bar sees.
    so.add_session_config_entry("session.set_denormal_as_zero", "1")
    unknown = sorted(set(custom_domains) - BUILTIN_DOMAINS - EXTENSIONS_DOMAINS)
    if unknown:
        # Never load a library named by the model file itself: only the extensions we ship.
        raise InputError(f"the model needs custom-op domain(s) {unknown} that exportable cannot provide; "
                         f"only {', '.join(sorted(EXTENSIONS_DOMAINS))} (onnxruntime-extensions) are supported")
    if EXTENSIONS_DOMAINS & set(custom_domains):
        so.register_custom_ops_library(extensions_library())
    return so


@contextlib.contextmanager
def caller_float_state():
    """Keep the caller's floating-point state as it was: ONNX Runtime applies
    session.set_denormal_as_zero to the thread that creates the session too, after which the
    user's own numpy code flushes subnormals to zero (found by tests/test_trust_fuzz.py:
    Hypothesis refused to go on, "we can't represent subnormal floats right now"). fegetenv /
    fesetenv save and restore the x87 and SSE (MXCSR) state; where libm is not found, no-op."""
    libm = _libm()
    state = ctypes.create_string_buffer(512)  # larger than any platform's fenv_t
    saved = libm is not None and libm.fegetenv(state) == 0
    try:
        yield
    finally:
        if saved:
            libm.fesetenv(state)


def _libm():
    try:
        return ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
    except OSError:
        return None


def _check_string_tensor(name: str, value: np.ndarray) -> np.ndarray:
    flat = []
    for item in value.reshape(-1):
        if isinstance(item, bytes):
            try:
                item = item.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(f"input {name!r} holds bytes that are not valid UTF-8 ({exc.reason} at byte "
                                 f"{exc.start}); decode or clean the text before calling the model") from None
        if not isinstance(item, str):
            raise InputError(f"input {name!r} must hold strings, got {type(item).__name__}; pass a list of str")
        flat.append(item)
    return np.array(flat, dtype=object).reshape(value.shape)


def validate_feed(feed: Mapping, specs: Mapping[str, tuple[str, list]]) -> dict[str, np.ndarray]:
    """Check names, dtypes and ranks against the graph; return arrays ready for the runtime."""
    missing = sorted(set(specs) - set(feed))
    extra = sorted(set(feed) - set(specs))
    if missing or extra:
        raise InputError(f"inputs do not match the artifact: missing {missing}, unexpected {extra}; "
                         f"the artifact takes {sorted(specs)}")
    ready = {}
    for name, (dtype, shape) in specs.items():
        value = np.asarray(feed[name]) if not isinstance(feed[name], np.ndarray) else feed[name]
        if dtype == "string":
            if value.dtype.kind not in ("U", "O", "S"):
                raise InputError(f"input {name!r} must be a string tensor, got {value.dtype}; pass text, not ids "
                                 "(or export with --inputs ids)")
            value = _check_string_tensor(name, value)
        elif str(value.dtype) != dtype:
            hint = (" after scaling to 0..255 (e.g. (x * 255).round() for floats in [0, 1])"
                    if dtype == "uint8" and value.dtype.kind == "f" else "")
            raise InputError(f"input {name!r} must be {dtype}, got {value.dtype}; convert with .astype('{dtype}')"
                             f"{hint}")
        if shape is not None and value.ndim != len(shape):
            raise InputError(f"input {name!r} must have rank {len(shape)} (shape {shape}), got shape "
                             f"{list(value.shape)}")
        for axis, (want, got) in enumerate(zip(shape or (), value.shape)):
            if isinstance(want, int) and want != got:  # a fixed dim, e.g. 3 colour channels
                raise InputError(f"input {name!r} must have shape {shape}, got {list(value.shape)} "
                                 f"(dimension {axis} must be {want})")
        ready[name] = value
    return ready


class OnnxRunner:
    def __init__(self, path: Path, threads: int | None = None, providers=None, model: onnx.ModelProto | None = None):
        self.path = Path(path)
        model = model if model is not None else onnx.load(str(self.path), load_external_data=False)
        self.metadata = {p.key: p.value for p in model.metadata_props}
        self.custom_op_domains = sorted({o.domain for o in model.opset_import} - BUILTIN_DOMAINS)
        options = session_options(self.custom_op_domains, threads)
        try:
            with caller_float_state():
                self.session = ort.InferenceSession(str(self.path), options,
                                                    providers=list(providers or ["CPUExecutionProvider"]))
        except Exception as exc:  # onnxruntime's Fail/InvalidGraph/...: a multi-line C++ message
            raise ModelFileError(f"{self.path.name} does not load in ONNX Runtime ({_first_line(exc)}); "
                                 "re-export the artifact") from exc
        self.input_specs = {i.name: (ORT_TYPES.get(i.type, i.type), list(i.shape)) for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        ready = validate_feed(feed, self.input_specs)
        quiet = ort.RunOptions()
        quiet.log_severity_level = 4  # a failing run raises with the same text; don't also log it to stderr
        try:
            return dict(zip(self.output_names, self.session.run(self.output_names, ready, quiet)))
        except UnicodeEncodeError as exc:  # a lone surrogate (e.g. "\ud800") is not text (found by fuzzing)
            raise InputError(f"a string input holds {exc.object[exc.start:exc.end]!r} at character {exc.start}, a lone "
                             "surrogate that is not valid Unicode text; clean the text (e.g. .encode('utf-8', "
                             "'replace').decode()) before calling the model") from None
        except Exception as exc:
            refused = _refused(exc)
            if refused is None:
                raise
            raise refused from None


def _refused(exc: Exception) -> InputError | None:
    """The graph's own "input error: ..." node failed: the input was refused, say why in one line.
    ONNX Runtime nests messages (If/Loop nodes name their subgraph's failing node): take the
    innermost node name."""
    text = str(exc)
    start = text.rfind(INPUT_ERROR)
    if start < 0:
        return None
    message = text[start + len(INPUT_ERROR):]
    for end in ("' Status Message", "\n"):
        message = message.split(end)[0]
    error = InputError(message.strip().rstrip("'"))
    error.__cause__ = exc
    return error


def quiet_torchscript():
    """torch.jit.* warn "deprecated" on recent torch (torch.export is the successor); they still
    work, and the warning is noise for a user who asked for TorchScript explicitly."""
    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.filterwarnings("ignore", message=r".*(deprecated|TorchScript|torch\.jit).*")
    return ctx


class TorchScriptRunner:
    EXTRA = "exportable.json"

    def __init__(self, path: Path):
        self.path = Path(path)
        extra = {self.EXTRA: ""}
        ctx = quiet_torchscript()
        try:
            self.module = torch.jit.load(str(self.path), map_location="cpu", _extra_files=extra)
            info = json.loads(extra[self.EXTRA] or "{}")
        except Exception as exc:  # a damaged archive: PytorchStreamReader / unpickler errors
            raise ModelFileError(f"{self.path.name} is not a loadable TorchScript archive ({_first_line(exc)}); "
                                 "re-export the artifact") from exc
        finally:
            ctx.__exit__(None, None, None)
        self.input_names = info.get("inputs", [])
        self.output_names = info.get("outputs", [])
        self.input_specs = {s["name"]: (s["dtype"], s["shape"]) for s in info.get("input_specs", [])}

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        ready = validate_feed(feed, self.input_specs) if self.input_specs else dict(feed)
        args = [torch.from_numpy(np.ascontiguousarray(ready[n])) for n in self.input_names]
        with torch.inference_mode():
            try:
                result = self.module(*args)
            except Exception as exc:  # a scripted `raise ValueError("input error: ...")`
                refused = _refused(exc)
                if refused is None:
                    raise
                raise refused from None
        if isinstance(result, torch.Tensor):
            result = (result,)
        return {n: _to_numpy(t) for n, t in zip(self.output_names, result)}


def _to_numpy(value) -> np.ndarray:
    """A tensor, or a scripted module's List[str] (labels), as the array ONNX Runtime would give."""
    if isinstance(value, (list, tuple)):
        return np.array(list(value), dtype=object)
    return value.numpy()


def _first_line(exc: Exception) -> str:
    """The first sentence of a library's message (torch's run on for paragraphs)."""
    text = " ".join(str(exc).strip().splitlines()[:1]).split(". ")[0]
    return (text[:240] or type(exc).__name__).rstrip(".")


# Run in a fresh interpreter (onnxruntime alone, no torch) so that its peak RSS is the load's own.
# The peak is VmHWM (this address space's high-water mark): ru_maxrss would report the parent's,
# as Linux carries it across fork and exec (measured: 1,211 MiB before loading anything).
LOAD_PROBE = """
import json, resource, sys, time
import onnxruntime as ort

def peak_mib():
    try:
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

so = ort.SessionOptions()
if sys.argv[2]:
    so.register_custom_ops_library(sys.argv[2])
before, start = peak_mib(), time.perf_counter()
ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
print(json.dumps({"seconds": round(time.perf_counter() - start, 2), "peak_rss_mib": round(peak_mib()),
                  "rss_before_load_mib": round(before)}))
"""


def load_cost(path: Path, custom_op_domains=()) -> dict:
    """Seconds and peak RSS (MiB) of creating an ONNX Runtime CPU session on `path` in a fresh
    process: what a server pays to load the artifact (measured for models over 2 GB)."""
    library = extensions_library() if EXTENSIONS_DOMAINS & set(custom_op_domains) else ""
    done = subprocess.run([sys.executable, "-c", LOAD_PROBE, str(path), library], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1][:300]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def load(path: Path, threads: int | None = None, providers=None):
    """Load `model.onnx` (on `providers`, default the CPU) or `model.pt` (by suffix), once the
    file passed modelfile.check_model_file (damaged or hostile files: one-line ModelFileError)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no model file at {path}; pass an artifact's model.onnx or model.pt")
    if path.suffix not in (".onnx", ".pt", ".ts"):
        raise InputError(f"cannot run {path.name}: expected a .onnx or .pt file")
    model = check_model_file(path)
    if path.suffix == ".onnx":
        return OnnxRunner(path, threads, providers, model)
    return TorchScriptRunner(path)
