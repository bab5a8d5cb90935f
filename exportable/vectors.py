"""Test vectors beside an artifact, in a format Java and Go read without Python.

See docs/vectors.md: a JSON manifest, numeric tensors as raw little-endian files, strings inline.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError
from .integrity import read_json
from .recipe import Tolerance

FORMAT = "exportable.vectors/1"
MANIFEST = "manifest.json"
NUMERIC = {"float32", "float64", "int64", "int32", "uint8", "bool"}

# ONNX Runtime Java's OnnxTensor.createTensor(env, String[], shape) hands strings to the C API as
# JNI "modified UTF-8": a character above U+FFFF arrives as two 3-byte surrogates instead of one
# 4-byte sequence (StringLength of "grüße 😀" is 8 in Java, 7 in Python and Go), and there is no
# API that takes raw UTF-8 bytes. Such cases are recorded as expected failures for Java.
JAVA_SUPPLEMENTARY = ("ONNX Runtime Java passes characters above U+FFFF (emoji...) as modified UTF-8 "
                      "surrogates, so the graph sees different text; no raw-UTF-8 string API exists in ORT Java")


# The ONNX Runtime C API fills string tensors from NUL-terminated char* (FillStringTensor), which
# onnxruntime_go uses, so a U+0000 inside a string cuts it short; Java's modified UTF-8 sends
# U+0000 as the bytes C0 80, which the graph rejects as invalid UTF-8.
NUL_IN_STRING = ("the ONNX Runtime {runtime} binding cannot pass a string containing U+0000: {why}")
NUL_WHY = {"go": "onnxruntime_go fills string tensors through the C API's NUL-terminated char*, which cuts it there",
           "java": "JNI modified UTF-8 encodes it as C0 80, which is invalid UTF-8 to the graph"}


def _strings(inputs: dict[str, np.ndarray]) -> list[str]:
    return [str(v) for value in inputs.values() if np.asarray(value).dtype.kind in ("U", "O")
            for v in np.asarray(value).reshape(-1)]


def known_failures(inputs: dict[str, np.ndarray]) -> dict[str, str]:
    """Runtimes known not to reproduce this case, with the reason (see docs/vectors.md)."""
    strings = _strings(inputs)
    found: dict[str, str] = {}
    if any("\x00" in s for s in strings):
        found = {rt: NUL_IN_STRING.format(runtime=rt.capitalize(), why=why) for rt, why in NUL_WHY.items()}
    if any(ord(ch) > 0xFFFF for s in strings for ch in s):
        found["java"] = "; ".join(filter(None, [found.get("java"), JAVA_SUPPLEMENTARY]))
    return found


def needs_own_batch(text: str) -> bool:
    """Texts some runtime cannot pass (see known_failures): batch them apart from the others so
    one such text does not hide a whole batch from that runtime's replay."""
    return "\x00" in text or any(ord(ch) > 0xFFFF for ch in text)


@dataclass
class VectorCase:
    name: str
    inputs: dict[str, np.ndarray]
    expected: dict[str, np.ndarray]
    inputs_by_format: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    known_failures: dict[str, str] = field(default_factory=dict)  # runtime -> why it cannot pass

    def inputs_for(self, fmt: str) -> dict[str, np.ndarray]:
        return self.inputs_by_format.get(fmt, self.inputs)


@dataclass
class Vectors:
    recipe: str
    models: dict[str, str]
    custom_op_domains: list[str]
    tolerances: dict[str, Tolerance]
    cases: list[VectorCase]
    # accelerated variants beside the artifact (exportable.accelerate's table), each replayed on
    # the same cases with its own tolerances: {name: {"file": ..., "tolerances": {output: Tolerance}}}
    variants: dict[str, dict] = field(default_factory=dict)
    # every model file the export wrote: {file name: {"sha256": hex, "bytes": size}} (integrity.py)
    files: dict[str, dict] = field(default_factory=dict)


def dtype_name(array: np.ndarray) -> str:
    if array.dtype.kind in ("U", "S", "O"):
        return "string"
    name = str(array.dtype)
    if name not in NUMERIC:
        raise ValueError(f"dtype {name} cannot be written as a test vector (supported: {sorted(NUMERIC)}, string)")
    return name


def _write_tensor(root: Path, rel: str, array: np.ndarray) -> dict:
    array = np.asarray(array)
    entry = {"dtype": dtype_name(array), "shape": list(array.shape)}
    if entry["dtype"] == "string":
        entry["values"] = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in array.reshape(-1)]
        return entry
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    # '<' forces little-endian whatever the machine; ascontiguousarray gives row-major order.
    np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tofile(path)
    entry["file"] = rel
    return entry


def _read_tensor(root: Path, entry: Mapping) -> np.ndarray:
    shape = tuple(entry["shape"])
    if entry["dtype"] == "string":
        return np.array(entry["values"], dtype=object).reshape(shape)
    dtype = np.dtype(entry["dtype"]).newbyteorder("<")
    path = root / entry["file"]
    if not path.resolve().is_relative_to(root.resolve()):
        raise InputError(f"{root / MANIFEST}: tensor file {entry['file']!r} is outside the vectors folder; "
                         "re-export the artifact")
    if not path.is_file():
        raise InputError(f"test vector file {path} is missing; re-export the artifact")
    want = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if path.stat().st_size != want:
        raise InputError(f"test vector file {path} is {path.stat().st_size} bytes, but its shape {list(shape)} "
                         f"{entry['dtype']} needs {want}: it is damaged or cut short; re-export the artifact")
    data = np.fromfile(path, dtype=dtype)
    return data.astype(np.dtype(entry["dtype"])).reshape(shape)


def write(root: Path, vectors: Vectors) -> None:
    root.mkdir(parents=True, exist_ok=True)
    cases = []
    for i, case in enumerate(vectors.cases):
        folder = f"case_{i:03d}"
        entry = {
            "name": case.name,
            "inputs": {k: _write_tensor(root, f"{folder}/input.{k}.bin", v) for k, v in case.inputs.items()},
            "expected": {k: _write_tensor(root, f"{folder}/expected.{k}.bin", v) for k, v in case.expected.items()},
        }
        if case.known_failures:
            entry["known_failures"] = case.known_failures
        if case.inputs_by_format:
            entry["inputs_by_format"] = {
                fmt: {k: _write_tensor(root, f"{folder}/{fmt}.input.{k}.bin", v) for k, v in feed.items()}
                for fmt, feed in case.inputs_by_format.items()
            }
        cases.append(entry)
    manifest = {
        "format": FORMAT,
        "recipe": vectors.recipe,
        "models": vectors.models,
        "custom_op_domains": vectors.custom_op_domains,
        "tolerances": {k: t.as_dict() for k, t in vectors.tolerances.items()},
        "cases": cases,
    }
    if vectors.files:
        manifest["files"] = vectors.files
    if vectors.variants:
        manifest["variants"] = {name: {"file": v["file"], "tolerances": {k: _json_tolerance(t) for k, t in
                                                                          v["tolerances"].items()}}
                                for name, v in vectors.variants.items()}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def read(root: Path) -> Vectors:
    """The vectors beside an artifact; a malformed folder (bad JSON, missing keys or files, a
    file of the wrong size) is a one-line InputError naming what is wrong."""
    path = root / MANIFEST
    if not path.is_file():
        raise InputError(f"no test vectors at {path}; export with `python -m exportable recipe NAME` first")
    manifest = read_json(path, root.parent)
    if manifest.get("format") != FORMAT:
        raise InputError(f"{path} has format {manifest.get('format')!r}, expected {FORMAT!r}; re-export the artifact")
    try:
        return _parse(root, manifest)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        what = f"missing key {exc}" if isinstance(exc, KeyError) else " ".join(str(exc).split())[:160]
        raise InputError(f"{path} is malformed ({type(exc).__name__}: {what}); re-export the artifact") from None


def _parse(root: Path, manifest: dict) -> Vectors:
    cases = [
        VectorCase(
            c["name"],
            {k: _read_tensor(root, v) for k, v in c["inputs"].items()},
            {k: _read_tensor(root, v) for k, v in c["expected"].items()},
            {fmt: {k: _read_tensor(root, v) for k, v in feed.items()}
             for fmt, feed in c.get("inputs_by_format", {}).items()},
            c.get("known_failures", {}),
        )
        for c in manifest["cases"]
    ]
    variants = {name: {"file": v["file"], "tolerances": {k: Tolerance.from_dict(t) for k, t in v["tolerances"].items()}}
                for name, v in manifest.get("variants", {}).items()}
    return Vectors(manifest["recipe"], manifest["models"], manifest["custom_op_domains"],
                   {k: Tolerance.from_dict(v) for k, v in manifest["tolerances"].items()}, cases, variants,
                   manifest.get("files", {}))


def _json_tolerance(tolerance: Tolerance) -> dict:
    """A lossy variant's unbounded atol as the string "inf": Go's encoding/json (the replay
    consumer) refuses a bare Infinity anywhere in the manifest."""
    return {k: "inf" if isinstance(v, float) and v == float("inf") else v for k, v in tolerance.as_dict().items()}
