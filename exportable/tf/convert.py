"""SavedModel with a string signature -> one ONNX ModelProto (tf2onnx + our rewrites/handlers).

Stages: load (graph + captured lookup tables) -> convert (tf2onnx, with handlers.py registered
for this call only) -> tidy (names, dims, opset imports, metadata) -> check (onnx checker, and
ONNX Runtime with onnxruntime-extensions must load it).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import CheckError, ExportError
from ..external import LIMIT
from ..graph import custom_domains, guard_empty_batch, set_metadata
from .deps import check_extensions_in_process, import_tf2onnx, ort_session, versions
from .handlers import (
    RAGGED_OPS,
    erfc_handler,
    ragged_handler,
    rewrite_char_chains,
    rewrite_regex_patterns,
    wordpiece_handler,
)
from .model import SIGNATURE, signature_info

CONTRIB = "ai.onnx.contrib"
# Domains our handlers may emit, declared up front; unused ones are dropped when tidying.
EXTRA_OPSETS = {CONTRIB: 1, "com.microsoft": 1}
ML_OPSET = ("ai.onnx.ml", 2)


def convert_savedmodel(saved_model_dir, opset: int = 17, signature: str = SIGNATURE,
                       tag: str = "serve") -> onnx.ModelProto:
    """Convert `signature` of the SavedModel at `saved_model_dir`: one string input [batch]."""
    path = Path(saved_model_dir)
    info = signature_info(path, signature)  # InputError unless a SavedModel with one string input
    graph_def, inputs, outputs, tables, renames = _load(path, signature, tag)
    model = _convert(graph_def, inputs, outputs, tables, renames, opset, name=path.name)
    _tidy(model, info)
    _guard_empty_segment_counts(model)
    guard_empty_batch(model)  # kernels that die on zero rows: Einsum (SIGFPE), Reshape [0, -1, 32]
    set_metadata(model, {"exportable.converter": "tf2onnx + exportable.tf handlers",
                         "exportable.source": f"SavedModel {path.name}, signature {signature}",
                         "exportable.custom_op_domains": custom_domains(model),
                         "exportable.versions": versions()})
    _check(model)
    return model


def _load(path: Path, signature: str, tag: str):
    """tf2onnx's SavedModel loader: unlike `from_function`, it also returns the initialized lookup
    tables, without which the vocab lookups fail ("Could not determine table shared name")."""
    import_tf2onnx()
    from tf2onnx import tf_loader  # noqa: PLC0415  # optional extra (tf)

    with _quiet_tf2onnx():
        return tf_loader.from_saved_model(str(path), None, None, tag=[tag], signatures=[signature],
                                          return_initialized_tables=True, return_tensors_to_rename=True)


def _convert(graph_def, inputs, outputs, tables, renames, opset: int, name: str) -> onnx.ModelProto:
    import_tf2onnx()
    from tf2onnx import utils  # noqa: PLC0415  # optional extra (tf)
    from tf2onnx.convert import _convert_common  # noqa: PLC0415  # optional extra; what tf2onnx's own --saved-model CLI path calls

    try:
        with _quiet_tf2onnx() as unsupported, _fast_optimizer():
            model, _ = _convert_common(
                graph_def, name=name, opset=opset, input_names=inputs, output_names=outputs,
                tensors_to_rename=renames, initialized_tables=tables,
                extra_opset=[utils.make_opsetid(d, v) for d, v in EXTRA_OPSETS.items()],
                custom_op_handlers=_handlers(tables), custom_rewriter=[rewrite_char_chains, rewrite_regex_patterns],
                continue_on_error=False, optimizers=_optimizers())
    except ExportError:
        raise
    except Exception as exc:  # tf2onnx raises bare Exceptions/ValueErrors from its handlers
        raise ExportError(f"tf2onnx could not convert the SavedModel: {type(exc).__name__}: {exc}") from exc
    # tf2onnx only logs ops it cannot map and leaves them in the graph; ONNX Runtime would then
    # refuse the model ("No Op registered for CaseFoldUTF8"). Fail here, naming them.
    if unsupported:
        raise ExportError(f"TensorFlow ops without an ONNX conversion: {dict(unsupported)}; neither tf2onnx nor "
                          "exportable.tf handles them")
    return model


def _handlers(tables: dict) -> dict:
    """Our tf2onnx custom-op handlers (old-style: op type -> (function, args)), for this call only."""
    handlers = {"WordpieceTokenizeWithOffsets": (wordpiece_handler(tables), []), "Erfc": (erfc_handler, [])}
    handlers.update({op: (ragged_handler(op), []) for op in RAGGED_OPS})
    return handlers


def _optimizers():
    """tf2onnx's optimizers less the Einsum one, which spends ~1 s per einsum (4 s of a 20 s
    conversion of the default model) searching for a decomposition. ONNX Runtime runs Einsum
    itself (it dies with SIGFPE on a zero-size dimension, which guard_empty_batch rules out for
    the batch; its decomposition fails on one too: "cannot reshape {0,2,64,1,32} to {0,-1,32}")."""
    from tf2onnx import optimizer  # noqa: PLC0415  # optional extra (tf)

    return {k: v for k, v in optimizer._get_optimizers().items() if k != "einsum_optimizer"}


@contextlib.contextmanager
def _fast_optimizer():
    """By default tf2onnx deep-copies the whole graph before each optimizer pass, to roll back
    a pass that raises; with the vocab baked into attributes that was 5 s per conversion. A pass
    that raises now fails the conversion instead (as an ExportError)."""
    from tf2onnx import constants  # noqa: PLC0415  # optional extra (tf)

    key = constants.ENV_TF2ONNX_CATCH_ERRORS
    old = os.environ.get(key)
    os.environ[key] = "FALSE"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


class _UnsupportedOps(logging.Handler):
    def __init__(self, counter: Counter):
        super().__init__(logging.ERROR)
        self.counter = counter

    def emit(self, record):
        msg = record.getMessage()
        if msg.startswith("Tensorflow op [") and msg.endswith("is not supported"):
            self.counter[msg.rsplit(": ", 1)[1].split("]")[0]] += 1


@contextlib.contextmanager
def _quiet_tf2onnx():
    """tf2onnx logs dozens of harmless warnings ("Cannot infer shape for ...") per conversion;
    keep its errors, and collect the unsupported-op ones."""
    logger = logging.getLogger("tf2onnx")
    level = logger.level
    unsupported: Counter = Counter()
    handler = _UnsupportedOps(unsupported)
    logger.setLevel(logging.ERROR)
    logger.addHandler(handler)
    try:
        yield unsupported
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _tidy(model: onnx.ModelProto, info) -> None:
    """Shapes from the signature with readable names, and opset imports for exactly the domains
    the graph uses."""
    for value in model.graph.input:
        if value.name == info.text_input:
            _set_dims(value, ["batch"])
    for value in model.graph.output:
        if value.name in info.outputs:
            # tf2onnx leaves some outputs without a shape, which onnx.checker rejects ("Field 'shape'
            # of 'type' is required but missing"); the signature knows the rank. The signature maps
            # a batch of strings to per-string outputs, so dim 0 is the batch.
            _, dims = info.outputs[value.name]
            _set_dims(value, ["batch" if i == 0 and d is None else d if d is not None else f"{value.name}_dim{i}"
                              for i, d in enumerate(dims)])
    used = {n.domain for n in model.graph.node} - {"", "ai.onnx"}
    versions_by_domain = {o.domain: o.version for o in model.opset_import}
    versions_by_domain.setdefault(*ML_OPSET)
    keep = [helper.make_opsetid(d, v) for d, v in versions_by_domain.items() if d in ("", "ai.onnx") or d in used]
    del model.opset_import[:]
    model.opset_import.extend(keep)


def _set_dims(value: onnx.ValueInfoProto, dims: list) -> None:
    shape = value.type.tensor_type.shape
    if shape.dim and len(shape.dim) != len(dims):
        return  # a rank disagreement is left for verification to report
    del shape.dim[:]
    for d in dims:
        dim = shape.dim.add()
        if isinstance(d, int):
            dim.dim_value = d
        else:
            dim.dim_param = d


def _guard_empty_segment_counts(model: onnx.ModelProto) -> None:
    """tf2onnx's Segment*/UnsortedSegment* conversion sizes its index grid with ReduceMax over the
    segment counts (Unique's 4th output). With no tokens at all (a batch of "" through a tokenizer
    without [CLS]/[SEP]) the counts are empty, ReduceMax gives INT64_MIN and ORT fails with
    "ConstantOfShape ... Tensor shape.Size() must be >= 0". Counts are >= 1, so appending a 0 keeps
    every non-empty result and makes the empty one 0 (a grid of width 0: each sum is its identity,
    as TF gives for an empty segment)."""
    g = model.graph
    counts = {n.output[3] for n in g.node if n.op_type == "Unique" and len(n.output) > 3 and n.output[3]}
    consumers = [n for n in g.node if n.op_type == "ReduceMax" and n.input and n.input[0] in counts]
    if not consumers:
        return
    zero = "exportable_empty_segments/zero"
    g.initializer.append(numpy_helper.from_array(np.zeros(1, np.int64), zero))
    guarded = {node.input[0] for node in consumers}
    for node in consumers:
        node.input[0] = f"{node.input[0]}/exportable_with_zero"
    nodes = []
    for node in g.node:  # each Concat right after the Unique that makes its counts
        nodes.append(node)
        if node.op_type == "Unique" and len(node.output) > 3 and node.output[3] in guarded:
            nodes.append(helper.make_node("Concat", [node.output[3], zero],
                                          [f"{node.output[3]}/exportable_with_zero"], axis=0))
    del g.node[:]
    g.node.extend(nodes)


def _check(model: onnx.ModelProto) -> None:
    size = model.ByteSize()
    if size >= LIMIT:  # checked and loaded in memory below; TF models this big are not supported
        raise ExportError(f"the converted model is {size / 2**30:.1f} GiB; a TensorFlow conversion is limited to "
                          "2 GiB (protobuf's limit on one message)")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise CheckError(f"the converted model fails onnx.checker: {str(exc).splitlines()[0]}") from exc
    unknown = set(custom_domains(model)) - {CONTRIB}
    if unknown:
        raise CheckError(f"the converted model uses custom-op domains {sorted(unknown)} that no runtime library "
                         f"provides; only {CONTRIB} (onnxruntime-extensions) is supported")
    check_extensions_in_process()
    try:
        ort_session(model.SerializeToString())
    except Exception as exc:  # onnxruntime raises its own exception types per failure
        raise CheckError(f"ONNX Runtime cannot load the converted model: {str(exc).splitlines()[0]}") from exc
