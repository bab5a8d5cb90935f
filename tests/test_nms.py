"""The NMS block (exportable.blocks.detection) against torchvision.ops.batched_nms, in the
exported graph (ONNX Runtime): IoU exactly at thresholds that float32 rounds up, down or not
at all, score ties, zero-area boxes, both of torchvision's batched_nms paths (per class over
1000 boxes, the coordinate trick under), the per-image cap and the canonical order."""

import numpy as np
import pytest
import torch
import torchvision

from exportable.blocks import detection
from exportable.exporters import onnx as onnx_exporter
from exportable.recipe import TensorSpec

CLASSES = 3


class KeepMask(torch.nn.Module):
    """batched_nms_keep as a graph: boxes [B, N, 4], scores [B, N], labels [B, N] -> keep [B, N]."""

    onnx_translations = detection.ONNX_TRANSLATIONS

    def __init__(self, iou):
        super().__init__()
        self.iou = iou

    def forward(self, boxes, scores, labels):
        return detection.batched_nms_keep(boxes, scores, labels, scores > 0.0, CLASSES, self.iou)


def _export(module, example, inputs, outputs, tmp_path):
    import onnxruntime as ort

    capture = onnx_exporter.export(module, example, inputs, outputs, tmp_path / "m.onnx")
    assert capture.strategy == "dynamo", capture.tried
    session = ort.InferenceSession(capture.model.SerializeToString(), providers=["CPUExecutionProvider"])
    return lambda feed: session.run(None, feed)


def _reference_keep(boxes, scores, labels, iou):
    """torchvision.ops.batched_nms per row, as a mask."""
    keep = np.zeros(scores.shape, bool)
    for b in range(scores.shape[0]):
        idx = np.nonzero(scores[b] > 0)[0]
        kept = torchvision.ops.batched_nms(torch.from_numpy(boxes[b, idx]), torch.from_numpy(scores[b, idx]),
                                           torch.from_numpy(labels[b, idx]), iou)
        keep[b, idx[kept.numpy()]] = True
    return keep


def threshold_pairs(t):
    """Box pairs of one class whose IoU is float32(t) exactly, one float32 step either side, and
    a zero-area pair, in separate places so they do not interact."""
    boxes, scores = [], []
    for i, height in enumerate([10 * t, np.nextafter(np.float32(10 * t), 0), np.nextafter(np.float32(10 * t), 99)]):
        x = 20.0 * i
        boxes += [[x, 0, x + 10, 10], [x, 0, x + 10, height]]  # IoU = height / 10
        scores += [0.9, 0.8]
    boxes += [[100, 0, 100, 10], [100, 0, 100, 10], [100, 5, 110, 5]]  # zero area: never suppress
    scores += [0.7, 0.7, 0.7]
    return np.array(boxes, np.float32), np.array(scores, np.float32)


def clusters(rng, count, objects=8):
    """Jittered boxes around a few objects: many overlaps, many candidates."""
    centre = rng.uniform(50, 550, (objects, 2))[rng.integers(0, objects, count)] + rng.normal(0, 5, (count, 2))
    size = rng.uniform(20, 120, (count, 2))
    boxes = np.concatenate([centre - size / 2, centre + size / 2], 1).astype(np.float32)
    scores = rng.uniform(0.01, 1.0, count).astype(np.float32)
    scores[rng.random(count) < 0.1] = 0.5  # ties
    return boxes, scores, rng.integers(0, CLASSES, count)


@pytest.mark.parametrize("iou", [0.5, 0.55, 0.45])  # float32(t) == t, > t, < t
def test_graph_nms_equals_torchvision_batched_nms(iou, tmp_path):
    rng = np.random.default_rng(1)
    inputs = (TensorSpec("boxes", "float32", ("b", "n", 4)), TensorSpec("scores", "float32", ("b", "n")),
              TensorSpec("labels", "int64", ("b", "n")))
    example_boxes, example_scores, example_labels = clusters(rng, 40)
    example = {"boxes": np.stack([example_boxes] * 2), "scores": np.stack([example_scores] * 2),
               "labels": np.stack([example_labels] * 2)}
    run = _export(KeepMask(iou), example, inputs, (TensorSpec("keep", "bool", ("b", "n")),), tmp_path)

    pair_boxes, pair_scores = threshold_pairs(iou)
    feeds = [(pair_boxes[None], pair_scores[None], np.zeros((1, len(pair_scores)), np.int64))]
    for count in (300, 1500):  # the coordinate trick (<= 1000 boxes) and per-class NMS
        b, s, l = clusters(rng, count)
        b2, s2, l2 = clusters(rng, count)
        feeds.append((np.stack([b, b2]), np.stack([s, s2]), np.stack([l, l2])))
    for boxes, scores, labels in feeds:
        want = _reference_keep(boxes, scores, labels, iou)
        got = run({"boxes": boxes, "scores": scores, "labels": labels})[0]
        np.testing.assert_array_equal(got, want)
    kept = _reference_keep(*feeds[0], iou)[0]
    # at float32(t) torchvision keeps the pair only when float32(t) <= t; one step up always drops
    assert kept[:6].tolist() == [True, float(np.float32(iou)) <= iou, True, True, True, False]
    assert kept[6:].all()  # zero-area boxes, even identical ones with equal scores


def test_ties_keep_the_lower_index_like_torchvision(tmp_path):
    """Identical boxes and scores: the ONNX spec leaves the pick open; the rank scores pick index 0."""
    inputs = (TensorSpec("boxes", "float32", ("b", "n", 4)), TensorSpec("scores", "float32", ("b", "n")),
              TensorSpec("labels", "int64", ("b", "n")))
    n = 21
    boxes = np.tile(np.array([0, 0, 10, 10], np.float32), (1, n, 1))
    scores = np.full((1, n), 0.5, np.float32)
    scores[0, [3, 17]] = 0.25
    labels = np.zeros((1, n), np.int64)
    labels[0, 10:] = 1
    run = _export(KeepMask(0.5), {"boxes": np.repeat(boxes, 2, 0), "scores": np.repeat(scores, 2, 0),
                                  "labels": np.repeat(labels, 2, 0)}, inputs, (TensorSpec("keep", "bool", ("b", "n")),),
                  tmp_path)
    got = run({"boxes": boxes, "scores": scores, "labels": labels})[0]
    np.testing.assert_array_equal(got, _reference_keep(boxes, scores, labels, 0.5))
    assert np.nonzero(got[0])[0].tolist() == [0, 10]


def test_float32_below_decides_like_the_double_threshold():
    for t in (0.0, 0.45, 0.5, 0.55, 0.7, 1.0, 1e-3):
        below = np.float32(detection.float32_below(t))
        assert float(below) <= t
        for x in (np.nextafter(below, np.float32(-1)), below, np.nextafter(below, np.float32(2)), np.float32(t)):
            assert (x > below) == (float(x) > t), (t, x)


def test_yolo_block_in_eager_torch_equals_the_recipe_original():
    """The block's own eager path (torchvision.ops.nms inside the custom op) agrees too."""
    import exportable.recipes.yolo_nms as yolo

    for iou, score in ((0.45, 0.25), (0.7, 0.05), (0.5, 0.6)):
        recipe = yolo.YoloNMS(num_classes=5, iou_threshold=iou, score_threshold=score, max_det=40)
        block, original = recipe.build_wrapper(), recipe.build_original()
        for case in recipe.validation_cases():
            with torch.no_grad():
                got = block(torch.from_numpy(case.data)).numpy()
            np.testing.assert_array_equal(got, original(case)["detections"], err_msg=case.name)


def test_lexsort_matches_numpy():
    rng = np.random.default_rng(3)
    keys = [rng.integers(0, 3, 200).astype(np.float32), rng.integers(0, 4, 200).astype(np.float32),
            rng.normal(size=200).astype(np.float32)]
    perm = detection.lexsort([(torch.from_numpy(keys[0]), False), (torch.from_numpy(keys[1]), True),
                              (torch.from_numpy(keys[2]), False)])
    np.testing.assert_array_equal(perm.numpy(), np.lexsort((keys[2], -keys[1], keys[0])))
