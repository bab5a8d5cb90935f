"""The optional TensorFlow stack, imported on demand with an install hint.

TensorFlow is an extra (`pip install -e .[tf]`), so nothing in exportable imports it at module
load; every entry point of exportable.tf calls `import_tf()` first.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.util
import os
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

from ..errors import CheckError, MissingDependency

# The versions this package is tested with; pyproject.toml's `tf` extra pins the same.
PINS = {"tensorflow": "2.21.0", "tensorflow-text": "2.21.1", "tf2onnx": "1.17.0", "keras": "3.15.1"}
INSTALL_HINT = "install the tf extra: pip install -e .[tf]  (" + " ".join(f"{k}=={v}" for k, v in PINS.items()) + ")"


def import_tf():
    """(tensorflow, tensorflow_text), or MissingDependency naming the extra."""
    _load_extensions_before_tf()
    already = "tensorflow" in sys.modules
    if not already:
        _import_triton_before_tf()
    # TF prints a screenful of C++ start-up logs (CUDA probing, oneDNN notices) otherwise.
    quiet = "TF_CPP_MIN_LOG_LEVEL" not in os.environ
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        with _native_stderr_silenced(quiet and not already):
            # TF is the optional tf extra, imported on demand: lazy, as this module's doc says.
            import tensorflow as tf  # noqa: PLC0415  # optional extra
            import tensorflow_text as tft  # noqa: PLC0415  # registers the text ops (CaseFoldUTF8, WordpieceTokenizeWithOffsets, ...)

            if not already:
                tf.config.list_physical_devices()  # the CUDA probe ("failed call to cuInit") happens here
    except ImportError as exc:
        raise MissingDependency(f"exportable.tf needs TensorFlow and tensorflow-text ({exc.name} is missing); "
                                f"{INSTALL_HINT}") from exc
    return tf, tft


@contextlib.contextmanager
def _native_stderr_silenced(active: bool):
    """TF 2.21 logs from C++ through absl before absl::InitializeLog ("WARNING: All log messages
    before absl::InitializeLog() ...", oneDNN and cuInit notices), ignoring TF_CPP_MIN_LOG_LEVEL.
    Point file descriptor 2 at /dev/null while TF starts; Python's own errors are raised after it is
    restored. A user who sets TF_CPP_MIN_LOG_LEVEL gets TF's output untouched."""
    if not active:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def import_tf2onnx():
    import_tf()
    try:
        import tf2onnx  # noqa: PLC0415  # optional extra (tf), after TF
    except ImportError as exc:
        raise MissingDependency(f"converting a SavedModel needs tf2onnx; {INSTALL_HINT}") from exc
    return tf2onnx


def versions() -> dict[str, str]:
    """Installed versions of the TF stack, for metadata and reports."""
    out = {}
    for name in ("tensorflow", "tensorflow-text", "tf2onnx", "onnxruntime-extensions"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


_EXTENSIONS_HANDLE = None


def _import_triton_before_tf() -> None:
    """torch.export / dynamo imports triton (torch ships it); imported after TensorFlow, triton's
    first import dies with SIGSEGV (measured: a dynamo export after a SavedModel conversion in the
    same process crashed in triton/knobs.py). Imported first, both work."""
    if "triton" not in sys.modules and importlib.util.find_spec("triton") is not None:
        try:
            import triton  # noqa: F401, PLC0415  # optional (torch's GPU stack), only when TF is about to load
        except Exception:  # a broken triton only matters to torch's GPU paths
            pass


def _load_extensions_before_tf() -> None:
    """With TensorFlow imported first, onnxruntime-extensions' regex ops silently match nothing
    (StringRegexReplace("abcdef", "[a-c]", "X") returned "abcdef"): the ortx library binds its
    symbols lazily, and by then TF's copies of the same libraries win. Loading the library with
    RTLD_NOW before TF binds it to its own copies for good; ONNX Runtime's later dlopen of the
    same file gets this handle. (Not `import onnxruntime_extensions`: that also imports
    transformers and torch, about 4 s.)"""
    global _EXTENSIONS_HANDLE
    if _EXTENSIONS_HANDLE is not None or "tensorflow" in sys.modules:
        return
    path = extensions_library_path()
    if path is not None:
        _EXTENSIONS_HANDLE = ctypes.CDLL(path, mode=os.RTLD_NOW | os.RTLD_LOCAL)


def extensions_library_path() -> str | None:
    """The ortx custom-op library, found without importing onnxruntime_extensions (whose
    __init__ imports transformers and torch: 4-10 s on this machine)."""
    spec = importlib.util.find_spec("onnxruntime_extensions")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        for lib in sorted(Path(folder).glob("_extensions_pydll*.so")):
            return str(lib)
    return None


def ort_session(model_bytes: bytes):
    """An ONNX Runtime CPU session with the ortx library registered (the one this package ships;
    never a library a model file names)."""
    path = extensions_library_path()
    if path is None:
        raise MissingDependency("the converted model uses onnxruntime-extensions ops; "
                                "pip install onnxruntime-extensions==0.15.2")
    options = ort.SessionOptions()
    options.register_custom_ops_library(path)
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


@functools.lru_cache(maxsize=1)
def check_extensions_in_process() -> None:
    """Raise CheckError if the ortx regex ops are broken in this process (see above)."""
    node = helper.make_node("StringRegexReplace", ["x", "pattern", "rewrite"], ["y"], domain="ai.onnx.contrib")
    graph = helper.make_graph(
        [node], "ortx_selftest", [helper.make_tensor_value_info("x", TensorProto.STRING, [1])],
        [helper.make_tensor_value_info("y", TensorProto.STRING, [1])],
        initializer=[helper.make_tensor("pattern", TensorProto.STRING, [], [b"[a-c]"]),
                     helper.make_tensor("rewrite", TensorProto.STRING, [], [b"X"])])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.contrib", 1)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=8)
    session = ort_session(model.SerializeToString())
    if session.run(None, {"x": np.array(["abcdef"], dtype=object)})[0][0] != "XXXdef":
        raise CheckError("onnxruntime-extensions' regex ops do not work in this process: TensorFlow was imported "
                         "before onnxruntime_extensions and its libraries took over ortx's symbols; import "
                         "exportable.tf (or onnxruntime_extensions) before tensorflow, or run ONNX Runtime in "
                         "another process")
