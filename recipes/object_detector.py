"""object_detector: a torchvision detection model from a uint8 image to final boxes, NMS included.

Original: torchvision's `ObjectDetection` preset (PIL image -> float [0, 1]) and the model's
eager forward (its GeneralizedRCNNTransform normalise + resize, backbone, head, box decoding,
score threshold, per-class top-k, batched_nms, detections cap, boxes back to input pixels).
Artifact: `image` uint8 [H, W, 3] of any size in (`--inputs encoded`: `image_bytes`, a whole
PNG/JPEG file, decoded in the graph by exportable.blocks.image_io; the original then opens the
file with PIL); `boxes` [n, 4] (x1, y1, x2, y2, input
pixels), `scores` [n], `labels` [n] int64 out (n may be 0), in the canonical order of
exportable.blocks.detection (label, x1, y1, x2, y2, then score). Sort by score yourself if you
need a ranking: a score order is not reproducible across runtimes for near-equal scores.

Capture: dynamo, on exportable.blocks.detection.SSDDetector. torchvision's own SSD does not
capture with dynamo in torch 2.14 (batched_nms branches in Python on `boxes.numel() > 4000`, a
data-dependent size after 90 boolean-mask selections: GuardOnDataDependentSymNode). The legacy
exporter does capture it (torchvision's ONNX tests' route: its ONNX symbolic for nms, 3466 nodes
with the class loop unrolled; same detections on 3 seeded images), but the traced graph always
takes the coordinate trick (eager switches to per-class NMS over 1000 boxes: other IoU roundings)
and compares IoU with float32(0.55) > 0.55: it keeps boxes eager drops at IoU == float32(0.55).
SSDDetector reuses the model's own modules and rewrites only the resize and the post-processing
(468 nodes, torchvision's NMS semantics; see blocks/detection.py and docs/detection.md).

Default weights: no detector ships offline, so torchvision's own initialisation under
torch.manual_seed(0), made to behave like a trained detector: BatchNorm statistics calibrated on
two seeded images (the default init's activations vanish to 1e-15 and every score is 1/91),
classification logits scaled x4 (on textured images 2,500-12,000 boxes then survive NMS at the
0.001 threshold, hundreds score over 0.05, the detections cap of 300 binds) and the background
logit raised until a uniform gray image scores at most 0.0005 for any class (a blank image
detects nothing). `--weights FILE` takes a real state_dict (.pt/.pth or .safetensors).

The image input (pixels or encoded), weights loading and the source come from
exportable.families.vision.VisionRecipe (docs/writing-a-recipe.md, Families).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torchvision.models.detection as detection
from torchvision.transforms._presets import ObjectDetection

from exportable.blocks.detection import SSDDetector, canonical_order_np
from exportable.blocks.vision import to_float_nchw
from exportable.families.vision import INPUTS, SEED, WEIGHTS, VisionRecipe, check_detection_options
from exportable.images import colour_blobs, open_image
from exportable.recipe import EXACT, Case, Option, TensorSpec, Tolerance
from exportable.registry import register
from exportable.weights import calibrating_batchnorm, load_into, rows_of

synthetic_image = colour_blobs  # (seed, height, width); tests import it from here
LOGIT_SCALE = 4.0
GRAY_MAX_SCORE = 0.0005  # a blank image's best class score, half the default 0.001 threshold
# torchvision builder, the state_dict key holding the first level's class logits conv, anchors per
# location of that level (num_classes = out_channels / anchors).
ARCHS = {
    "ssdlite320_mobilenet_v3_large": ("head.classification_head.module_list.0.1.weight", 6),
}


@register
class ObjectDetector(VisionRecipe):
    name = "object_detector"
    summary = "torchvision SSDLite detector: uint8 image -> boxes, scores, labels (NMS in the graph)"
    original_pipeline = "torchvision ObjectDetection preset + detection model forward (eager)"
    formats = ("onnx",)  # TorchScript would need the exportable::nms op registered wherever it loads
    options = (
        Option("arch", "torchvision detection model", default="ssdlite320_mobilenet_v3_large",
               choices=tuple(ARCHS)),
        WEIGHTS,
        Option("score_threshold", "keep detections scoring > this (default: the model's, 0.001)", type=float),
        Option("iou_threshold", "NMS: drop a box whose IoU with a better box of its class is > this "
                                "(default: the model's, 0.55)", type=float),
        Option("max_detections", "at most this many detections per image (default: the model's, 300)", type=int),
        INPUTS,
    )
    image = TensorSpec("image", "uint8", ("height", "width", 3), "RGB pixels, any size")
    pixels_description = "image: uint8 RGB [H, W, 3]"
    bytes_description = ("image_bytes: a PNG or JPEG file decoded in the graph as PIL's "
                         "Image.open(...).convert('RGB') (onnxruntime-extensions DecodeImage, guarded)")

    def validate_settings(self) -> None:
        super().validate_settings()
        s = self.settings
        check_detection_options(s["iou_threshold"], s["score_threshold"], s["max_detections"], "--max-detections")

    # --- the model --------------------------------------------------------------------------
    @property
    def builder(self):
        return getattr(detection, self.settings["arch"])

    def seeded_model(self):
        return seeded_model(self.builder)

    def seeded_source_name(self) -> str:
        return f"{self.settings['arch']} (seeded {SEED}, calibrated; no pretrained weights)"

    def model_from_weights(self, state: dict, path: Path):
        arch = self.settings["arch"]
        key, anchors = ARCHS[arch]
        classes = rows_of(state, key, path, arch) // anchors
        torch.manual_seed(SEED)
        return load_into(self.builder(weights=None, weights_backbone=None, num_classes=classes), state, path, arch)

    def finish_model(self, model):
        for attr, option in (("score_thresh", "score_threshold"), ("nms_thresh", "iou_threshold"),
                             ("detections_per_img", "max_detections")):
            if self.settings[option] is not None:
                setattr(model, attr, self.settings[option])
        return model

    def build_original(self):
        model, preset = self.model, ObjectDetection()

        def detect(case: Case) -> dict[str, np.ndarray]:
            with torch.no_grad():  # a file: what a user does with one, PIL opens it
                out = model([preset(open_image(case.data))])[0]
            boxes, scores, labels = (out[k].numpy() for k in ("boxes", "scores", "labels"))
            order = canonical_order_np(np.zeros_like(labels), boxes, scores, labels)
            return {"boxes": boxes[order], "scores": scores[order], "labels": labels[order]}

        return detect

    def build_wrapper(self, fmt: str = "onnx"):
        m = self.model
        return SSDDetector(m, m.score_thresh, m.nms_thresh, m.topk_candidates, m.detections_per_img).eval()

    # --- specs --------------------------------------------------------------------------------
    def output_specs(self):
        return (
            TensorSpec("boxes", "float32", ("detections", 4), "x1, y1, x2, y2 in input image pixels"),
            TensorSpec("scores", "float32", ("detections",), "class probability"),
            TensorSpec("labels", "int64", ("detections",), "class index (0 is background, never output)"),
        )

    def tolerances(self):
        # Two fp32 implementations of a 60-layer network: ONNX Runtime vs eager differ by up to
        # 2.6e-4 in the class logits (1e-5 of their magnitude) and 4e-5 in the box deltas. Measured
        # over the validation images: scores 4.1e-5, boxes 2.1e-3 px (IoU >= 0.99998). Set ~2.5x
        # (scores) and ~5x (boxes, which grow with the image) above that.
        return {"boxes": Tolerance(atol=1e-2, rtol=0.0), "scores": Tolerance(atol=1e-4, rtol=0.0),
                "labels": EXACT}

    def preprocessing(self) -> dict:
        m = self.model
        return {
            "input": self.input_description(),
            "scale": "float [0, 1] (torchvision ObjectDetection preset)",
            "normalize": {"mean": list(m.transform.image_mean), "std": list(m.transform.image_std)},
            "resize": {"size": list(m.transform.fixed_size), "mode": "bilinear", "align_corners": False},
            "score_threshold": m.score_thresh, "iou_threshold": m.nms_thresh,
            "topk_candidates_per_class": m.topk_candidates, "max_detections": m.detections_per_img,
            "order": "label, x1, y1, x2, y2, -score",
        }

    # --- data --------------------------------------------------------------------------------
    def example_image(self) -> np.ndarray:
        return colour_blobs(0, 200, 260)

    def validation_cases(self) -> list[Case]:
        cases = [self.image_case(f"blobs_{h}x{w}", colour_blobs(seed, h, w)) for seed, (h, w) in enumerate(
            [(240, 320), (480, 300), (33, 57), (320, 320), (100, 700), (512, 64), (640, 480)], start=1)]
        cases.append(self.image_case("gray_50x60_no_detection", np.full((50, 60, 3), 128, np.uint8)))
        return cases

    def image_case(self, name: str, image: np.ndarray, fmt: str = "PNG", **options) -> Case:
        """PNG in encoded mode: lossless, and libpng decodes it as PIL does (JPEG does not: see
        exportable.blocks.image_io), so parity measures the detector, not two JPEG decoders. The
        file kind prefixes the name (png_...)."""
        return super().image_case(f"{fmt.lower()}_{name}" if self.encoded else name, image, fmt, **options)


# --- weights -----------------------------------------------------------------------------------
def seeded_model(builder):
    """torchvision's init under SEED, calibrated to score like a trained detector (module doc)."""
    torch.manual_seed(SEED)
    model = builder(weights=None, weights_backbone=None)
    with calibrating_batchnorm(model), torch.no_grad():
        batch = torch.cat([model.transform.normalize(_to_float(colour_blobs(100 + i, 320, 320))) for i in range(2)])
        model.head(list(model.backbone(batch).values()))
    classifiers = [block[-1] for block in model.head.classification_head.module_list]
    with torch.no_grad():
        for conv in classifiers:
            conv.weight.mul_(LOGIT_SCALE)
        gray = model.transform.normalize(_to_float(np.full((320, 320, 3), 128, np.uint8)))
        logits = model.head(list(model.backbone(gray).values()))["cls_logits"][0]
        lift = _background_lift(logits, GRAY_MAX_SCORE)
        classes = logits.shape[-1]
        for conv in classifiers:
            conv.bias.view(-1, classes)[:, 0] += lift
    return model


def _background_lift(logits, max_score: float) -> float:
    """The smallest background-logit increase (bisection) after which no foreground score of
    these logits exceeds max_score."""
    low, high = 0.0, 100.0
    for _ in range(40):
        mid = (low + high) / 2
        lifted = logits.clone()
        lifted[:, 0] += mid
        if lifted.softmax(-1)[:, 1:].max() > max_score:
            low = mid
        else:
            high = mid
    return high


def _to_float(image: np.ndarray):
    """uint8 [H, W, 3] -> float32 [1, 3, H, W] in [0, 1], as the ObjectDetection preset scales."""
    return to_float_nchw(torch.from_numpy(image))
