"""ONNX graph surgery: names, symbolic dims, merging a preprocessor in front, metadata, saving.

Kept apart from the exporters so every capture path (dynamo, legacy, tf2onnx) gets the same
treatment afterwards.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import compose, helper, numpy_helper

from . import external
from .errors import ExportError
from .recipe import TensorSpec
from .runtime import BUILTIN_DOMAINS


def _value_names(graph: onnx.GraphProto) -> set[str]:
    names = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    for node in graph.node:
        names.update(node.output)
    return names


def _rename_everywhere(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename a value in every place it appears (producers, consumers, subgraphs, value_info)."""
    for node in graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                _rename_everywhere(sub, old, new)
    for coll in (graph.input, graph.output, graph.value_info, graph.initializer):
        for item in coll:
            if item.name == old:
                item.name = new


def _unique(name: str, taken: set[str]) -> str:
    i = 0
    while f"{name}__{i}" in taken:
        i += 1
    return f"{name}__{i}"


def rename_outputs(model: onnx.ModelProto, names: Sequence[str]) -> None:
    """Give the graph outputs their public names.

    Renaming blindly is how an output called `embedding` became invalid ("Duplicate definition
    of name"): the exporter had an internal value of that name. Any internal value that already
    holds a wanted name is moved aside first.
    """
    graph = model.graph
    if len(names) != len(graph.output):
        raise ExportError(f"the captured graph has {len(graph.output)} outputs but the recipe declares "
                          f"{len(names)} ({list(names)}); make the wrapper return exactly those")
    current = [o.name for o in graph.output]
    for old, new in zip(current, names):
        if old == new:
            continue
        taken = _value_names(graph) | {o.name for o in graph.output}
        if new in taken:
            _rename_everywhere(graph, new, _unique(new, taken))
        _rename_everywhere(graph, old, new)


def rename_inputs(model: onnx.ModelProto, names: Sequence[str]) -> None:
    graph = model.graph
    real_inputs = [i for i in graph.input if i.name not in {t.name for t in graph.initializer}]
    for value, new in zip(real_inputs, names):
        if value.name != new:
            taken = _value_names(graph)
            if new in taken:
                _rename_everywhere(graph, new, _unique(new, taken))
            _rename_everywhere(graph, value.name, new)


def set_dims(value: onnx.ValueInfoProto, shape: Sequence[int | str]) -> None:
    """Write the spec's symbolic names (batch, sequence) over the exporter's (s0, s77)."""
    dims = value.type.tensor_type.shape.dim
    if len(dims) != len(shape):
        return  # rank mismatches are caught by verification, not hidden here
    for dim, want in zip(dims, shape):
        if isinstance(want, str):
            dim.dim_param = want
        elif not dim.HasField("dim_value"):
            dim.dim_value = int(want)


def apply_specs(model: onnx.ModelProto, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> None:
    by_name = {s.name: s for s in (*inputs, *outputs)}
    for value in (*model.graph.input, *model.graph.output):
        if value.name in by_name:
            set_dims(value, by_name[value.name].shape)
            if by_name[value.name].doc:
                value.doc_string = by_name[value.name].doc


def merge_in_front(pre: onnx.ModelProto, model: onnx.ModelProto, prefix: str = "pre_") -> onnx.ModelProto:
    """Feed `pre`'s outputs into the model inputs of the same name: one graph, one file."""
    io_map = [(o.name, o.name) for o in pre.graph.output if o.name in {i.name for i in model.graph.input}]
    if not io_map:
        raise ExportError("the preprocessor graph produces none of the model's inputs; check its output names")
    pre = compose.add_prefix(pre, prefix, rename_inputs=False, rename_outputs=True)
    io_map = [(prefix + a, b) for a, b in io_map]
    pre.ir_version = model.ir_version = max(pre.ir_version, model.ir_version)
    _align_opsets(pre, model)
    merged = merge_models(pre, model, io_map)
    # merge_models keeps every input of the second graph that is not fed; those are leaks.
    leftover = [i.name for i in merged.graph.input if i.name in {b for _, b in io_map}]
    if leftover:
        raise ExportError(f"inputs {leftover} remained after merging the preprocessor")
    return merged


def merge_behind(model: onnx.ModelProto, post: onnx.ModelProto, prefix: str = "post_") -> onnx.ModelProto:
    """Feed model outputs into `post`'s inputs of the same name (e.g. class ids -> label strings).
    The merged graph outputs all of the model's outputs, then `post`'s: one graph, one file."""
    outputs = [o.name for o in model.graph.output]
    missing = [i.name for i in post.graph.input if i.name not in outputs]
    if missing:
        raise ExportError(f"the postprocessor graph takes {missing}, which the model does not output ({outputs})")
    clash = [o.name for o in post.graph.output if o.name in _value_names(model.graph) | set(outputs)]
    if clash:
        raise ExportError(f"the postprocessor's outputs {clash} clash with names in the model; rename them")
    io_map = [(i.name, prefix + i.name) for i in post.graph.input]
    post = compose.add_prefix(post, prefix, rename_inputs=True, rename_outputs=False)
    post.ir_version = model.ir_version = max(post.ir_version, model.ir_version)
    _align_opsets(model, post)
    return merge_models(model, post, io_map, outputs + [o.name for o in post.graph.output])


def merge_models(first: onnx.ModelProto, second: onnx.ModelProto, io_map, outputs=None) -> onnx.ModelProto:
    """compose.merge_models (same IR version and opsets asked of both), less its closing
    in-memory onnx.checker, run here only on a model that holds all its weights: on detached
    weights it fails ("should be stored in exportable-detached/0, but it is not regular file"),
    and on a proto of 2 GB or more protobuf cannot serialise it. The check stage runs the checker
    on the written file either way."""
    merged = helper.make_model(compose.merge_graphs(first.graph, second.graph, io_map, outputs=outputs),
                               producer_name="onnx.compose.merge_models", producer_version="1.0", domain="",
                               model_version=1, ir_version=first.ir_version,
                               opset_imports=list({o.domain: o for o in (*first.opset_import,
                                                                         *second.opset_import)}.values()))
    helper.set_model_props(merged, {p.key: p.value for p in (*first.metadata_props, *second.metadata_props)})
    merged.functions.extend([*first.functions, *second.functions])
    if not any(external.is_placeholder(t) for t in external.initializers(merged.graph)):
        onnx.checker.check_model(merged)
    return merged


def _align_opsets(*models: onnx.ModelProto) -> None:
    """merge_models refuses different versions of one domain; use the highest for each."""
    best: dict[str, int] = {}
    for m in models:
        for o in m.opset_import:
            best[o.domain] = max(best.get(o.domain, 0), o.version)
    for m in models:
        for o in m.opset_import:
            if o.version != best[o.domain]:
                if o.domain in ("", "ai.onnx"):
                    converted = onnx.version_converter.convert_version(m, best[o.domain])
                    m.CopyFrom(converted)
                    break
                o.version = best[o.domain]


def custom_domains(model: onnx.ModelProto) -> list[str]:
    return sorted({o.domain for o in model.opset_import} - BUILTIN_DOMAINS)


def set_metadata(model: onnx.ModelProto, props: Mapping[str, object]) -> None:
    existing = {p.key: p for p in model.metadata_props}
    for key, value in props.items():
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)
        if key in existing:
            existing[key].value = text
        else:
            model.metadata_props.add(key=key, value=text)


def opset_of(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def save_model(model: onnx.ModelProto, path: Path, detached: external.Detached | None = None) -> list[str]:
    """One file; a model of 2 GB or more (protobuf's limit) as `path` + `path`.data, its weights
    (`detached` ones too) in that one data file (exportable/external.py). Returns the names written."""
    return external.save(model, path, detached)


def attribute(node: onnx.NodeProto, name: str, default=None):
    """A node attribute's value (int, float, list, GraphProto...), or `default` when absent."""
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def int64_constant(consts: dict, prefix: str, value) -> str:
    """Record an int64 constant (a scalar, or a list for a 1-D tensor) in `consts` (name -> array,
    stored as initializers by the caller) under a name made of `prefix` and the value; return it."""
    flat = value if isinstance(value, list) else [value]
    name = f"{prefix}/const{'_1d' if isinstance(value, list) else ''}_{'_'.join(str(v).replace('-', 'm') for v in flat)}"
    consts[name] = np.array(value, np.int64)
    return name


def node_counts(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def describe_values(values: Iterable[onnx.ValueInfoProto]) -> list[dict]:
    out = []
    for v in values:
        t = v.type.tensor_type
        dims = [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?") for d in t.shape.dim]
        out.append({"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name
                    if t.elem_type != onnx.TensorProto.STRING else "string", "shape": dims})
    return out


NONEMPTY_SUFFIX = "/exportable_nonempty"


def guard_empty_batch(model: onnx.ModelProto, prefix: str = "exportable_empty_batch") -> bool:
    """Run an empty batch as one blank row (zeros, or "" for strings) and cut the outputs back to
    zero rows. Some kernels die on a zero-size batch instead of returning nothing: ONNX Runtime's
    Einsum and its int8 kernels end the process with SIGFPE (measured: model.int8.onnx of
    sentence_bert on text [0]), a Reshape to [0, -1, 32] is ambiguous. With one row they never
    see it. Every input whose dim 0 is not fixed is a batch input (all get padded alike);
    outputs whose dim 0 is not fixed are sliced to [:0] only when the batch is empty, and their
    other dynamic dims (a sequence) too, as a real empty batch pads to width 0. Returns False
    (graph untouched) when no input has a dynamic dim 0; a guarded graph is left as it is."""
    g = model.graph
    if any(o.endswith(NONEMPTY_SUFFIX) for n in g.node for o in n.output):
        return True  # guarded already (the fp32 standard attention, then int8): once covers it all
    init_names = {i.name for i in g.initializer}
    batch_inputs = [i for i in g.input if i.name not in init_names and i.type.tensor_type.shape.dim
                    and not i.type.tensor_type.shape.dim[0].HasField("dim_value")]
    if not batch_inputs:
        return False
    p = prefix
    consts = {f"{p}/one": np.array([1], np.int64), f"{p}/zero": np.array([0], np.int64),
              f"{p}/all": np.array([2**62], np.int64), f"{p}/rest_start": np.array([1], np.int64)}
    front = [helper.make_node("Shape", [batch_inputs[0].name], [f"{p}/rows"], end=1),
             helper.make_node("Equal", [f"{p}/rows", f"{p}/zero"], [f"{p}/is_empty"]),
             helper.make_node("Where", [f"{p}/is_empty", f"{p}/zero", f"{p}/all"], [f"{p}/end"]),
             helper.make_node("Max", [f"{p}/rows", f"{p}/one"], [f"{p}/kept"])]
    for value in batch_inputs:
        x, q = value.name, f"{p}/{value.name}"
        inner = f"{x}{NONEMPTY_SUFFIX}"
        for node in g.node:
            node.input[:] = [inner if i == x else i for i in node.input]
        elem = value.type.tensor_type.elem_type
        front += [helper.make_node("Shape", [x], [f"{q}/shape"]),
                  helper.make_node("Slice", [f"{q}/shape", f"{p}/rest_start", f"{p}/all"], [f"{q}/rest"]),
                  helper.make_node("Concat", [f"{p}/one", f"{q}/rest"], [f"{q}/row_shape"], axis=0)]
        if elem == onnx.TensorProto.STRING:
            consts[f"{q}/blank"] = np.array("", dtype=object)
            front.append(helper.make_node("Expand", [f"{q}/blank", f"{q}/row_shape"], [f"{q}/pad"]))
        else:
            zero = helper.make_tensor("value", elem, [1], [0])
            front.append(helper.make_node("ConstantOfShape", [f"{q}/row_shape"], [f"{q}/pad"], value=zero))
        front += [helper.make_node("Concat", [x, f"{q}/pad"], [f"{q}/padded"], axis=0),
                  helper.make_node("Slice", [f"{q}/padded", f"{p}/zero", f"{p}/kept"], [inner])]
    back = []
    for out in g.output:
        dims = out.type.tensor_type.shape.dim
        if not dims or dims[0].HasField("dim_value"):
            continue
        raw, q = f"{out.name}/exportable_raw", f"{p}/{out.name}"
        for node in g.node:
            node.output[:] = [raw if o == out.name else o for o in node.output]
            node.input[:] = [raw if i == out.name else i for i in node.input]
        axes = [0] + [i for i, d in enumerate(dims) if i and not d.HasField("dim_value")]
        consts.update({f"{q}/axes": np.array(axes, np.int64), f"{q}/starts": np.zeros(len(axes), np.int64),
                       f"{q}/n": np.array([len(axes)], np.int64)})
        back += [helper.make_node("Tile", [f"{p}/end", f"{q}/n"], [f"{q}/ends"]),
                 helper.make_node("Slice", [raw, f"{q}/starts", f"{q}/ends", f"{q}/axes"], [out.name])]
    g.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items())
    nodes = front + list(g.node) + back
    del g.node[:]
    g.node.extend(nodes)
    return True


def subgraph_reads(graph) -> set[str]:
    """Every value name read inside the subgraphs (Loop/If/Scan bodies) of `graph`'s nodes, at any
    depth: outer-scope values are read by name there, not through the node's inputs."""
    names = set()
    for node in graph.node:
        for attr in node.attribute:
            subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subs:
                names |= {i for n in sub.node for i in n.input} | subgraph_reads(sub)
    return names


def drop_unused_initializers(model: onnx.ModelProto) -> None:
    graph = model.graph
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output} | subgraph_reads(graph)
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)
