"""Models of 2 GB or more: protobuf cannot serialise a message that large, so such a model is
written as `model.onnx` (the graph, small) and ONE `model.onnx.data` beside it (ONNX external
data: every weight of at least MIN_BYTES). Smaller models stay one file.

A big model never exists as one proto here. Right after capture its weights are detached
(exporters/onnx.py): each initializer keeps its name, dtype and dims, and an external-data
reference whose location is a key into a `Detached` store (key -> numpy array, views of the
torch weights: no copy). Everything after capture (inlining, add_prefix, the pre/post merges,
version conversion) then works on a small proto; `save` writes the data file.

    detached = Detached()
    ... tensor.location = detached.add(array) ...      # at capture
    save(model, path, detached)                         # -> ["model.onnx", "model.onnx.data"]

Offsets in the data file are aligned as ONNX Runtime aligns its own (OffsetAlignmentInfo:
tensors over 1 MiB on 64 KiB, the Windows mmap granularity; others on a 4 KiB page), so a
loader may map weights instead of copying them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

LIMIT = 2**31  # protobuf's hard limit on one serialised message; a test lowers it
MIN_BYTES = 1024  # smaller tensors (shape constants) stay in the graph, readable by graph code
ALIGN_LARGE, ALIGN_SMALL, LARGE = 64 * 1024, 4096, 1 << 20
DATA_SUFFIX = ".data"
KEY_PREFIX = "exportable-detached/"  # an in-memory location: never written to a file
DATA_FIELDS = ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data")


class Detached(dict):
    """Weights held out of a proto: {placeholder location: numpy array}."""

    def add(self, array: np.ndarray) -> str:
        key = f"{KEY_PREFIX}{len(self)}"
        self[key] = array
        return key

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.values())


def data_file_name(model_name: str) -> str:
    """`model.onnx` -> `model.onnx.data`: the one external-data file of a model file."""
    return model_name + DATA_SUFFIX


def is_placeholder(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL and location_of(tensor).startswith(KEY_PREFIX)


def location_of(tensor: onnx.TensorProto) -> str:
    return next((e.value for e in tensor.external_data if e.key == "location"), "")


def initializers(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every initializer of `graph` and of its subgraphs (Loop/If bodies)."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from initializers(sub)


def point_at(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    """Make `tensor` an external-data reference (its values, if any, dropped)."""
    for name in DATA_FIELDS:
        tensor.ClearField(name)
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", offset), ("length", length)):
        tensor.external_data.add(key=key, value=str(value))
    tensor.data_location = onnx.TensorProto.EXTERNAL


def model_bytes(model: onnx.ModelProto, detached: Detached | None) -> int:
    """What the model would weigh as one proto: the graph plus the weights held out of it."""
    held = {location_of(t) for t in initializers(model.graph) if is_placeholder(t)}
    return model.ByteSize() + sum(a.nbytes for k, a in (detached or {}).items() if k in held)


def save(model: onnx.ModelProto, path: Path, detached: Detached | None = None, limit: int | None = None) -> list[str]:
    """Write `model` to `path`: one file under `limit` (default LIMIT, 2 GiB), else `path` and
    `path`.data. Returns the names written. The model's tensors are changed in place (pointed
    at the data file, or given back their values)."""
    path = Path(path)
    data = path.with_name(data_file_name(path.name))
    data.unlink(missing_ok=True)  # a stale one from an earlier save would be listed and hashed
    if model_bytes(model, detached) < (LIMIT if limit is None else limit):
        attach(model, detached)
        onnx.save_model(model, str(path), save_as_external_data=False)
        return [path.name]
    write_data_file(model, data, detached or {})
    onnx.save_model(model, str(path), save_as_external_data=False)
    return [path.name, data.name]


def attach(model: onnx.ModelProto, detached: Detached | None) -> None:
    """Give every placeholder tensor its values back (a model that fits in one file)."""
    for tensor in initializers(model.graph):
        if is_placeholder(tensor):
            array = np.ascontiguousarray(detached[location_of(tensor)])
            del tensor.external_data[:]
            tensor.data_location = onnx.TensorProto.DEFAULT
            tensor.raw_data = array.tobytes()


def write_data_file(model: onnx.ModelProto, data: Path, detached: Detached) -> None:
    """Every placeholder, and every in-proto initializer of at least MIN_BYTES, into `data`
    (aligned offsets), each tensor pointed at it by its plain file name."""
    with open(data, "wb") as f:
        for tensor in initializers(model.graph):
            values = _values(tensor, detached)
            if values is None:
                continue
            offset = _aligned(f.tell(), values.nbytes)
            f.write(b"\0" * (offset - f.tell()))
            f.write(values.data)
            point_at(tensor, data.name, offset, values.nbytes)


def _values(tensor: onnx.TensorProto, detached: Detached) -> np.ndarray | None:
    """The bytes to move into the data file (a contiguous array), or None to leave the tensor."""
    if is_placeholder(tensor):
        return np.ascontiguousarray(detached[location_of(tensor)]).reshape(-1).view(np.uint8)
    if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.data_type == onnx.TensorProto.STRING:
        return None
    if tensor.HasField("raw_data"):
        return np.frombuffer(tensor.raw_data, np.uint8) if len(tensor.raw_data) >= MIN_BYTES else None
    array = numpy_helper.to_array(tensor)
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8) if array.nbytes >= MIN_BYTES else None


def _aligned(position: int, nbytes: int) -> int:
    step = ALIGN_LARGE if nbytes > LARGE else ALIGN_SMALL
    return -(-position // step) * step


def external_files(model: onnx.ModelProto) -> set[str]:
    """The external-data locations a (loaded, small) model points at."""
    return {location_of(t) for t in initializers(model.graph) if t.data_location == onnx.TensorProto.EXTERNAL}
