"""Open a model file only after it proved to be what it claims: not empty, not zeros, really
ONNX (or a TorchScript archive), its external data inside its own folder and complete, its
custom-op domains declared, no library named by its metadata. Each refusal is one line naming
the file and what is wrong (ModelFileError, exit 2): a damaged or hostile file is bad input.

runtime.load() calls check_model_file() before it creates a session, so every loader (verify,
load_artifact, run, bench) gets the same checks.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from .errors import InputError

# Operator domains ONNX Runtime implements itself; anything else needs a custom-op library.
BUILTIN_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "ai.onnx.preview.training"}
# onnxruntime-extensions registers most ops in ai.onnx.contrib, its image codecs (DecodeImage,
# EncodeImage, DrawBoundingBoxes) in com.microsoft.extensions: one library serves both.
EXTENSIONS_DOMAINS = {"ai.onnx.contrib", "com.microsoft.extensions"}
DECLARED_DOMAINS = "exportable.custom_op_domains"
RECIPE_KEY = "exportable.recipe"
LIBRARY_SUFFIXES = (".so", ".dll", ".dylib")
ZIP_MAGIC = b"PK\x03\x04"
REEXPORT = "re-export the artifact or copy the file again"


class ModelFileError(InputError):
    """A model file that is damaged, not what its name says, or asks for more than we give."""

    stage = "model file"


def check_model_file(path: Path) -> onnx.ModelProto | None:
    """The parsed ONNX graph (without external data) of a file that passed every check, None for
    a TorchScript archive that did; else a one-line ModelFileError."""
    path = Path(path)
    check_not_blank(path)
    if path.suffix == ".onnx":
        model = read_onnx(path)
        check_external_data(model, path)
        check_domains(model, path)
        check_metadata(model, path)
        return model
    if path.suffix in (".pt", ".ts"):
        check_torchscript_archive(path)
    return None


def check_not_blank(path: Path) -> None:
    size = path.stat().st_size
    if size == 0:
        raise ModelFileError(f"{path.name} is empty (0 bytes); {REEXPORT}")
    with open(path, "rb") as f:
        head = f.read(4096)
    if not head.strip(b"\x00"):
        raise ModelFileError(f"{path.name} starts with {len(head)} zero bytes ({size} bytes in all): the file is "
                             f"zero-filled, not a model (a failed copy or disk?); {REEXPORT}")


def read_onnx(path: Path) -> onnx.ModelProto:
    """The graph, or a one-line error: protobuf parses a truncated or foreign file with a
    DecodeError (issue 27: `verify` printed its traceback), or into a model with no graph."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, OSError) as exc:
        why = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise ModelFileError(f"{path.name} is not a readable ONNX model ({why}): it is damaged, cut short or not "
                             f"ONNX; {REEXPORT}") from None
    if not model.graph.node or not model.opset_import or not model.graph.output:
        raise ModelFileError(f"{path.name} parses but holds no complete ONNX graph ({len(model.graph.node)} nodes, "
                             f"{len(model.graph.output)} outputs): it is cut short or not ONNX; {REEXPORT}")
    return model


def tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor a graph stores (initializers, Constant values), subgraphs included."""
    yield from graph.initializer
    yield from (s.values for s in graph.sparse_initializer)
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from tensors(sub)


def check_external_data(model: onnx.ModelProto, path: Path) -> None:
    """External data must be a plain file beside the model: its location a bare file name (no
    directory, `..` or absolute path: ONNX Runtime would read any file the process can), not a
    symlink (which could lead anywhere), and long enough for every tensor."""
    for tensor in tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        check_location(location, tensor.name, path)
        target = path.parent / location
        if not target.is_file():
            raise ModelFileError(f"{path.name}: external data file {location} (tensor {tensor.name!r}) is missing; "
                                 f"copy it beside {path.name}")
        end = int(info.get("offset", 0)) + int(info.get("length", 0))
        if end > target.stat().st_size:
            raise ModelFileError(f"{path.name}: external data file {location} is {target.stat().st_size} bytes, but "
                                 f"tensor {tensor.name!r} needs bytes up to {end}: it is cut short; {REEXPORT}")


def check_location(location: str, tensor: str, path: Path) -> None:
    """A one-line ModelFileError unless `location` names a plain (non-symlink) file beside `path`."""
    plain = bool(location) and location not in (".", "..") and "/" not in location and "\\" not in location \
        and not os.path.isabs(location)
    refuse = f"refusing to read it (external data must be a plain file beside {path.name})"
    if not plain:
        raise ModelFileError(f"{path.name}: tensor {tensor!r} points its external data at {location!r}, outside the "
                             f"model's folder or not a file name; {refuse}")
    link = path.parent / location
    if link.is_symlink():
        target = link.resolve()
        where = "inside" if target.is_relative_to(path.parent.resolve()) else "outside"
        raise ModelFileError(f"{path.name}: external data file {location!r} (tensor {tensor!r}) is a symlink to "
                             f"{target}, {where} the model's folder; {refuse}")


def used_domains(graph: onnx.GraphProto) -> set[str]:
    found = set()
    for node in graph.node:
        found.add(node.domain)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                found |= used_domains(sub)
    return found


def check_domains(model: onnx.ModelProto, path: Path) -> None:
    """Custom ops come only from the onnxruntime-extensions library we ship (never a library a
    file names); an artifact (it carries exportable.recipe) declares the domains it needs, and
    one that uses or imports others was altered after export."""
    needed = ({o.domain for o in model.opset_import} | used_domains(model.graph)) - BUILTIN_DOMAINS
    foreign = sorted(needed - EXTENSIONS_DOMAINS)
    if foreign:
        raise ModelFileError(f"{path.name} needs custom-op domain(s) {foreign} that exportable cannot provide; only "
                             f"{', '.join(sorted(EXTENSIONS_DOMAINS))} (onnxruntime-extensions) are supported")
    meta = {p.key: p.value for p in model.metadata_props}
    if RECIPE_KEY not in meta:
        return
    declared = {d for d in meta.get(DECLARED_DOMAINS, "").split(",") if d}
    undeclared = sorted(needed - declared)
    if undeclared:
        raise ModelFileError(f"{path.name} uses custom-op domain(s) {undeclared} that its metadata does not declare "
                             f"({DECLARED_DOMAINS}={meta.get(DECLARED_DOMAINS, '')!r}): it was altered after export; "
                             f"{REEXPORT}")


def check_metadata(model: onnx.ModelProto, path: Path) -> None:
    """Metadata may describe the model, never name code to load: exportable registers only the
    onnxruntime-extensions library it ships, whatever a file asks for."""
    for prop in model.metadata_props:
        value = prop.value.strip().lower()
        if "librar" in prop.key.lower() or value.endswith(LIBRARY_SUFFIXES):
            raise ModelFileError(f"{path.name}: metadata {prop.key!r} asks for a library ({prop.value[:80]!r}); "
                                 "exportable never loads code named by a model file, only onnxruntime-extensions")


def check_torchscript_archive(path: Path) -> None:
    """A TorchScript file is a zip archive; torch.jit.load reads its constants with TorchScript's
    own restricted unpickler (no arbitrary globals), but a plain pickle must not get that far."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != ZIP_MAGIC:
        kind = "a Python pickle" if magic[:1] == b"\x80" else "not a TorchScript archive"
        raise ModelFileError(f"{path.name} is {kind} (TorchScript files are zip archives); refusing to unpickle it: "
                             f"{REEXPORT}")
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ModelFileError(f"{path.name} is a damaged zip archive ({exc}); {REEXPORT}") from None
    if bad is not None:
        raise ModelFileError(f"{path.name}: member {bad} of the archive is damaged; {REEXPORT}")
