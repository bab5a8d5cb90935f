"""Output heads: what a user does with a model's raw scores, as export-friendly modules.

    SoftmaxTopK(k)                      logits [1, C] or [C] -> probabilities [k] float32, class_ids [k] int64
    TopKClassifier(preprocess, model, k)  image -> preprocess -> model -> SoftmaxTopK
    WithLabels(classifier, labels)      the same plus labels [k] (TorchScript: script it)

    label_lookup_graph(labels, opset)   ONNX graph: class_ids [k] int64 -> labels [k] string

Labels are strings, not a torch type: an ONNX artifact looks them up after the captured model
(a Gather on a string constant, merged behind it), a TorchScript artifact in a scripted module.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import Tensor, nn


class SoftmaxTopK(nn.Module):
    """softmax over classes, then torch.topk(k): the k most probable classes, most probable first.

    The same two calls the original makes (torch.softmax, torch.topk), so the float32 values are
    the same kernels' answers in eager and TorchScript, and within float rounding in ONNX.
    Classes with equal probability come in an order the runtime picks: compare ids only where
    the probabilities differ by more than the comparison's tolerance (see the recipe's doc)."""

    def __init__(self, k: int):
        super().__init__()
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = k

    def forward(self, logits: Tensor) -> Tuple[Tensor, Tensor]:
        probabilities = torch.softmax(logits.reshape(-1).to(torch.float32), dim=0)
        values, ids = torch.topk(probabilities, self.k)
        return values, ids.to(torch.int64)


class TopKClassifier(nn.Module):
    """preprocess (e.g. vision.ClassificationPreprocess) -> classifier -> SoftmaxTopK(k)."""

    def __init__(self, preprocess: nn.Module, model: nn.Module, k: int):
        super().__init__()
        self.preprocess, self.model, self.head = preprocess, model, SoftmaxTopK(k)

    def forward(self, image: Tensor) -> Tuple[Tensor, Tensor]:
        return self.head(self.model(self.preprocess(image)))


class WithLabels(nn.Module):
    """A TopKClassifier that also names its classes: (probabilities, class_ids, labels List[str]).
    For TorchScript (script it); an ONNX graph looks labels up with label_lookup_graph instead."""

    def __init__(self, classifier: nn.Module, labels: Sequence[str]):
        super().__init__()
        self.classifier = classifier
        self.labels: List[str] = list(labels)

    def forward(self, image: Tensor) -> Tuple[Tensor, Tensor, List[str]]:
        probabilities, class_ids = self.classifier(image)
        ids: List[int] = class_ids.tolist()
        return probabilities, class_ids, [self.labels[i] for i in ids]


def label_lookup_graph(labels: Sequence[str], opset: int, ids: str = "class_ids", out: str = "labels"):
    """An ONNX model [k] int64 `ids` -> [k] string `out`: Gather on the label strings. Ids outside
    0..len(labels)-1 make ONNX Runtime raise (Gather checks its indices), never read past the end."""
    table = numpy_helper.from_array(np.array(list(labels), dtype=object), "label_table")
    node = helper.make_node("Gather", ["label_table", ids], [out], name="label_lookup", axis=0)
    graph = helper.make_graph([node], "label_lookup", [helper.make_tensor_value_info(ids, onnx.TensorProto.INT64, ["k"])],
                              [helper.make_tensor_value_info(out, onnx.TensorProto.STRING, ["k"])],
                              initializer=[table])
    opsets = [helper.make_opsetid("", opset)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))
