"""yolo_nms: class-aware NMS on raw YOLO-style predictions, as one ONNX graph (no model).

Input `predictions` float32 [batch, anchors, 4 + classes]: cx, cy, w, h, then one score per
class (already sigmoid/softmaxed, as YOLOv8's head emits after transposing [B, 4 + C, A]).
Output `detections` float32 [n, 7]: batch index, x1, y1, x2, y2, score, class, in the canonical
order of exportable.blocks.detection (batch, class, x1, y1, x2, y2, decreasing score).

Per anchor its best class (the first on a tie), kept when score > score_threshold; boxes
converted as torchvision.ops.box_convert does; class-aware NMS (IoU > iou_threshold suppresses);
at most max_det per image by decreasing score. Original: the same in eager Python with
torchvision.ops.batched_nms, per image. Both see the same floats, so parity is exact, bit for bit.
"""

from __future__ import annotations

import numpy as np
import torch
import torchvision

from exportable.blocks.detection import YoloNMS as Block  # the recipe below is called YoloNMS too
from exportable.blocks.detection import canonical_order_np
from exportable.errors import InputError
from exportable.hashing import sha256_files
from exportable.recipe import EXACT, Case, Option, Recipe, Source, TensorSpec
from exportable.registry import register


@register
class YoloNMS(Recipe):
    name = "yolo_nms"
    summary = "class-aware NMS on YOLO-style predictions [B, A, 4 + C] -> detections [n, 7]"
    original_pipeline = "torchvision.ops.box_convert + torchvision.ops.batched_nms (eager, per image)"
    formats = ("onnx",)  # TorchScript would need the exportable::nms op registered wherever it loads
    options = (
        Option("num_classes", "number of class scores after the 4 box values", default=80, type=int),
        Option("score_threshold", "keep an anchor when its best class score is > this", default=0.25, type=float),
        Option("iou_threshold", "suppress a box whose IoU with a better box of its class is > this",
               default=0.45, type=float),
        Option("max_det", "at most this many detections per image (by score)", default=300, type=int),
    )

    def validate_settings(self) -> None:
        s = self.settings
        if s["num_classes"] < 1:
            raise InputError(f"--num-classes {s['num_classes']}: must be >= 1")
        if not 0.0 <= s["iou_threshold"] <= 1.0:
            raise InputError(f"--iou-threshold {s['iou_threshold']}: must be in [0, 1]")
        if not 0.0 <= s["score_threshold"] < 1.0:
            raise InputError(f"--score-threshold {s['score_threshold']}: must be in [0, 1)")
        if s["max_det"] < 1:
            raise InputError(f"--max-det {s['max_det']}: must be >= 1")

    @property
    def num_classes(self) -> int:
        return self.settings["num_classes"]

    # --- the original pipeline ------------------------------------------------------------
    def build_original(self):
        s = self.settings

        def run(case: Case) -> dict[str, np.ndarray]:
            predictions = torch.from_numpy(case.data)
            rows = []
            for b, image in enumerate(predictions):
                boxes = torchvision.ops.box_convert(image[:, :4], "cxcywh", "xyxy")
                scores, labels = image[:, 4:].max(dim=1)
                idx = torch.nonzero(scores > s["score_threshold"]).flatten()
                keep = torchvision.ops.batched_nms(boxes[idx], scores[idx], labels[idx], s["iou_threshold"])
                keep = idx[keep[: s["max_det"]]]
                rows.append(torch.cat([torch.full((len(keep), 1), float(b)), boxes[keep], scores[keep, None],
                                       labels[keep, None].to(torch.float32)], dim=1))
            out = torch.cat(rows).numpy() if rows else np.zeros((0, 7), np.float32)
            order = canonical_order_np(out[:, 0], out[:, 1:5], out[:, 5], out[:, 6])
            return {"detections": out[order]}

        return run

    # --- the wrapper ------------------------------------------------------------------------
    def build_wrapper(self, fmt: str = "onnx"):
        s = self.settings
        return Block(self.num_classes, s["score_threshold"], s["iou_threshold"], s["max_det"]).eval()

    # --- specs --------------------------------------------------------------------------------
    def input_specs(self, fmt: str = "onnx"):
        return (TensorSpec("predictions", "float32", ("batch", "anchors", 4 + self.num_classes),
                           "cx, cy, w, h, then one score per class"),)

    def output_specs(self):
        return (TensorSpec("detections", "float32", ("detections", 7),
                           "batch index, x1, y1, x2, y2, score, class; by batch, class, x1, y1, x2, y2"),)

    def tolerances(self):
        # Graph and original compute the same IEEE operations on the same input floats.
        return {"detections": EXACT}

    def source(self) -> Source:
        return Source("yolo_nms (no weights)", sha256_files([]))

    def preprocessing(self) -> dict:
        return {"box_format": "cxcywh in, xyxy out", "class": "argmax (first on a tie)",
                "order": "batch, class, x1, y1, x2, y2, -score", **self.settings}

    def runtime_limitations(self, case: Case) -> dict[str, str]:
        # Measured: ONNX Runtime 1.29.0 (the newest on Maven Central, used by the Java and Go
        # consumers) dies with SIGFPE on an empty batch in this graph; 1.31 (Python) runs it.
        if np.asarray(self.feed(case)["predictions"]).shape[0] == 0:
            why = "ONNX Runtime 1.29.0 crashes (SIGFPE) on an empty batch in this NMS graph; 1.31 runs it"
            return {"java": why, "go": why}
        return {}

    def feed(self, case: Case, fmt: str = "onnx") -> dict[str, np.ndarray]:
        return {"predictions": case.data}

    # --- data --------------------------------------------------------------------------------
    def example_case(self) -> Case:
        return Case("example", scattered(np.random.default_rng(0), 2, 300, self.num_classes))

    def validation_cases(self) -> list[Case]:
        rng = np.random.default_rng(7)
        c = self.num_classes
        s = self.settings
        cases = [
            Case("scattered_b1_a100", scattered(rng, 1, 100, c)),
            Case("clustered_b3_a2100", clustered(rng, 3, 2100, c)),   # > 1000 candidates: per-class NMS
            Case("clustered_b1_a600", clustered(rng, 1, 600, c)),     # <= 1000: torchvision's coordinate trick
            Case("over_max_det_b2_a1200", grid(rng, 2, 1200, c, s["max_det"])),
            Case("edge_cases_b1", edge_cases(c, s["iou_threshold"], s["score_threshold"])),
            Case("nothing_above_threshold_b2", below_threshold(rng, 2, 500, c, s["score_threshold"])),
            Case("empty_batch", np.zeros((0, 50, 4 + c), np.float32)),
        ]
        return cases


# --- synthetic predictions ---------------------------------------------------------------------
def _pack(boxes, scores) -> np.ndarray:
    return np.concatenate([boxes, scores], axis=-1).astype(np.float32)


def scattered(rng, batch, anchors, classes, size=640.0) -> np.ndarray:
    """Boxes anywhere, scores mostly low (sigmoid of N(-4, 2.5)), a few confident."""
    centers = rng.uniform(0, size, (batch, anchors, 2))
    sizes = rng.uniform(2, size / 4, (batch, anchors, 2))
    scores = 1 / (1 + np.exp(-rng.normal(-4, 2.5, (batch, anchors, classes))))
    return _pack(np.concatenate([centers, sizes], -1), scores)


def clustered(rng, batch, anchors, classes, objects=12, size=640.0) -> np.ndarray:
    """Many overlapping boxes: each anchor jitters around one of a few objects, as a detector's
    neighbouring anchors do; the object's class scores high, the others low."""
    obj_c = rng.uniform(40, size - 40, (batch, objects, 2))
    obj_s = rng.uniform(20, 200, (batch, objects, 2))
    obj_cls = rng.integers(0, classes, (batch, objects))
    which = rng.integers(0, objects, (batch, anchors))
    take = lambda a: np.take_along_axis(a, which[..., None], 1)  # noqa: E731
    centers = take(obj_c) + rng.normal(0, 6, (batch, anchors, 2))
    sizes = take(obj_s) * rng.uniform(0.8, 1.25, (batch, anchors, 2))
    scores = 1 / (1 + np.exp(-rng.normal(-5, 2, (batch, anchors, classes))))
    cls = np.take_along_axis(obj_cls, which, 1)
    np.put_along_axis(scores, cls[..., None], rng.uniform(0.2, 0.95, (batch, anchors, 1)), axis=2)
    return _pack(np.concatenate([centers, sizes], -1), scores)


def grid(rng, batch, anchors, classes, max_det, size=640.0) -> np.ndarray:
    """More non-overlapping confident boxes than max_det: the per-image cap decides."""
    side = int(np.ceil(np.sqrt(anchors)))
    cell = size / side
    i = np.arange(anchors)
    centers = np.stack([(i % side + 0.5) * cell, (i // side + 0.5) * cell], -1)
    boxes = np.broadcast_to(np.concatenate([centers, np.full((anchors, 2), cell * 0.5)], -1), (batch, anchors, 4))
    scores = rng.uniform(0, 0.2, (batch, anchors, classes))
    scores[..., 0] = rng.uniform(0.3, 1.0, (batch, anchors))
    assert anchors > max_det or batch == 0
    return _pack(boxes, scores)


def edge_cases(classes, iou_threshold, score_threshold) -> np.ndarray:
    """Ties, IoU exactly at the threshold, zero-area boxes, class-score ties, scores at the threshold."""
    rows = []

    def add(cx, cy, w, h, cls, score):
        s = np.zeros(classes, np.float32)
        s[cls % classes] = score
        rows.append(np.concatenate([[cx, cy, w, h], s]))

    # identical boxes, identical scores: torchvision keeps the lower index
    for _ in range(3):
        add(50, 50, 20, 20, 1, 0.9)
    # IoU exactly iou_threshold (10x10 box and a 10 x 10t box sharing a corner): not suppressed
    t = iou_threshold
    add(205, 205, 10, 10, 2, 0.8)
    add(205, 200 + 5 * t, 10, 10 * t, 2, 0.7)
    # IoU a hair above the threshold (1e-4, a few float32 steps at these coordinates): suppressed
    add(305, 305, 10, 10, 2, 0.8)
    add(305, 300 + 5 * (t + 1e-4), 10, 10 * (t + 1e-4), 2, 0.7)
    # zero-area boxes (w = 0, h = 0, both), twice each with equal scores: never suppress nor are suppressed
    for _ in range(2):
        add(400, 400, 0, 10, 3, 0.6)
        add(410, 410, 10, 0, 3, 0.6)
        add(420, 420, 0, 0, 3, 0.6)
    # the same box in two classes: class-aware NMS keeps both
    add(500, 100, 30, 30, 4, 0.5)
    add(500, 100, 30, 30, 5, 0.5)
    # a score exactly at the threshold is not kept (score > threshold), one just above is
    add(100, 500, 10, 10, 6, np.float32(score_threshold))
    add(150, 500, 10, 10, 6, np.nextafter(np.float32(score_threshold), np.float32(1)))
    # equal best scores in two classes: the first class wins
    s = np.zeros(classes, np.float32)
    s[:2] = 0.7
    rows.append(np.concatenate([[600, 600, 10, 10], s]))
    return np.asarray(rows, np.float32)[None]


def below_threshold(rng, batch, anchors, classes, score_threshold) -> np.ndarray:
    out = scattered(rng, batch, anchors, classes)
    out[..., 4:] = rng.uniform(0, score_threshold, out[..., 4:].shape)
    return out.astype(np.float32)
