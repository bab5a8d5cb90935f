"""`python -m exportable triton ARTIFACT --out REPO`: a Triton Inference Server model repository.

    REPO/NAME/config.pbtxt     ONNX Runtime backend, TYPE_STRING for text inputs, dynamic batching
    REPO/NAME/1/model.onnx     the artifact's graph, unchanged (and model.onnx.data, if it has one)

A graph with onnxruntime-extensions ops (tokenizers, image codecs) names the extensions library
in `model_operations { op_library_filename }`. Triton needs the *standalone* native library:
the one in the PyPI wheel (onnxruntime_extensions/_extensions_pydll*.so) needs the Python
interpreter's symbols and does not load in tritonserver; the Maven artifact
com.microsoft.onnxruntime:onnxruntime-extensions ships one that does
(ai/onnxruntime/extensions/native/linux-x64/libonnxruntime_extensions4j_jni.so, which exports
RegisterCustomOps; tests/consumers/fetch_native.sh extracts it as libortextensions.so). Copy it
into the server image at EXTENSIONS_LIBRARY (or edit the path in config.pbtxt).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx

from .. import graph
from ..errors import InputError
from ..external import data_file_name
from ..runtime import EXTENSIONS_DOMAINS
from .rows import BATCH_DIM

EXTENSIONS_LIBRARY = "/opt/tritonserver/lib/libortextensions.so"
MAX_BATCH = 64
QUEUE_DELAY_US = 1000
TRITON_TYPES = {"float32": "TYPE_FP32", "float64": "TYPE_FP64", "int64": "TYPE_INT64", "int32": "TYPE_INT32",
                "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL", "string": "TYPE_STRING"}
ONNX_TYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.DOUBLE: "float64", onnx.TensorProto.INT64: "int64",
              onnx.TensorProto.INT32: "int32", onnx.TensorProto.UINT8: "uint8", onnx.TensorProto.BOOL: "bool",
              onnx.TensorProto.STRING: "string"}


def _tensors(values) -> list[tuple[str, str, list]]:
    out = []
    for value in values:
        kind = ONNX_TYPES.get(value.type.tensor_type.elem_type)
        if kind is None:
            raise InputError(f"tensor {value.name!r} has a type this Triton config writer does not map; "
                             f"it maps {', '.join(TRITON_TYPES)}")
        dims = [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?")
                for d in value.type.tensor_type.shape.dim]
        out.append((value.name, kind, dims))
    return out


def _tensor_block(name: str, kind: str, dims: list, batched: bool) -> str:
    shape = dims[1:] if batched else dims
    fixed = [d if isinstance(d, int) and d > 0 else -1 for d in shape]
    # A [batch] tensor has no dims left: Triton wants dims [1] reshaped to [] (its documented idiom).
    body = f"dims: [ {', '.join(map(str, fixed or [1]))} ]" + ("" if fixed else " reshape: { shape: [ ] }")
    return f'  {{ name: "{name}" data_type: {TRITON_TYPES[kind]} {body} }}'


def triton_config(model: onnx.ModelProto, name: str, instances: int = 1, threads: int = 1) -> str:
    inputs, outputs = _tensors(model.graph.input), _tensors(model.graph.output)
    batched = all(dims and dims[0] == BATCH_DIM for _, _, dims in inputs + outputs)
    lines = [f'name: "{name}"', 'backend: "onnxruntime"', f"max_batch_size: {MAX_BATCH if batched else 0}",
             "input [", ",\n".join(_tensor_block(*t, batched) for t in inputs), "]",
             "output [", ",\n".join(_tensor_block(*t, batched) for t in outputs), "]",
             f"instance_group [ {{ count: {instances} kind: KIND_CPU }} ]"]
    if batched:
        lines.append(f"dynamic_batching {{ max_queue_delay_microseconds: {QUEUE_DELAY_US} }}")
    if EXTENSIONS_DOMAINS & set(graph.custom_domains(model)):
        lines.append(f'model_operations {{ op_library_filename: "{EXTENSIONS_LIBRARY}" }}')
    for key, value in (("intra_op_thread_count", threads), ("inter_op_thread_count", 1)):
        lines.append(f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}')
    return "\n".join(lines) + "\n"


def write_triton_repository(artifact: str | Path, out: str | Path, name: str | None = None,
                            instances: int = 1) -> Path:
    artifact, out = Path(artifact), Path(out)
    source = artifact / "model.onnx"
    if not source.is_file():
        raise InputError(f"no model.onnx in {artifact}; pass an artifact folder exported with --format onnx")
    name = name or artifact.resolve().name
    model = onnx.load(str(source), load_external_data=False)
    folder = out / name
    if folder.exists():
        raise InputError(f"{folder} already exists; pass another --out or --name, or delete it")
    config = triton_config(model, name, instances)
    (folder / "1").mkdir(parents=True)
    shutil.copyfile(source, folder / "1" / "model.onnx")
    data = artifact / data_file_name(source.name)
    if data.is_file():  # a model over 2 GB: ONNX Runtime reads its weights from beside it
        shutil.copyfile(data, folder / "1" / data.name)
    (folder / "config.pbtxt").write_text(config)
    return folder
