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
"""

from __future__ import annotations

import io
from functools import cached_property

import numpy as np

from exportable.errors import InputError
from exportable.hashing import sha256_files, sha256_state_dict
from exportable.recipe import EXACT, Case, Option, Recipe, Source, TensorSpec, Tolerance
from exportable.registry import register
from exportable.weights import load_state_dict

IMAGE = TensorSpec("image", "uint8", ("height", "width", 3), "RGB pixels, any size")
IMAGE_BYTES = TensorSpec("image_bytes", "uint8", ("bytes",), "the bytes of a whole PNG or JPEG file")
MODEL_IMAGE = "rgb_image"  # the captured module's input, fed by the pixel guard or the decoder graph
SEED = 0
LOGIT_SCALE = 4.0
GRAY_MAX_SCORE = 0.0005  # a blank image's best class score, half the default 0.001 threshold
# torchvision builder, the state_dict key holding the first level's class logits conv, anchors per
# location of that level (num_classes = out_channels / anchors).
ARCHS = {
    "ssdlite320_mobilenet_v3_large": ("head.classification_head.module_list.0.1.weight", 6),
}


@register
class ObjectDetector(Recipe):
    name = "object_detector"
    summary = "torchvision SSDLite detector: uint8 image -> boxes, scores, labels (NMS in the graph)"
    original_pipeline = "torchvision ObjectDetection preset + detection model forward (eager)"
    formats = ("onnx",)  # TorchScript would need the exportable::nms op registered wherever it loads
    options = (
        Option("arch", "torchvision detection model", default="ssdlite320_mobilenet_v3_large",
               choices=tuple(ARCHS)),
        Option("weights", "local weights of --arch: a state_dict saved with torch.save (.pt/.pth) or a "
                          ".safetensors file (default: seeded torchvision init, see the recipe doc)"),
        Option("score_threshold", "keep detections scoring > this (default: the model's, 0.001)", type=float),
        Option("iou_threshold", "NMS: drop a box whose IoU with a better box of its class is > this "
                                "(default: the model's, 0.55)", type=float),
        Option("max_detections", "at most this many detections per image (default: the model's, 300)", type=int),
        Option("inputs", "ONNX graph input: RGB pixels, or the bytes of a PNG/JPEG file (decoded in the graph)",
               default="pixels", choices=("pixels", "encoded")),
    )

    def validate_settings(self) -> None:
        path = self.option_path("weights")
        if path is not None and not path.is_file():
            raise InputError(f"--weights {path}: no such file; pass a state_dict (.pt/.pth) or .safetensors file")
        iou, score, cap = (self.settings[k] for k in ("iou_threshold", "score_threshold", "max_detections"))
        if iou is not None and not 0.0 <= iou <= 1.0:
            raise InputError(f"--iou-threshold {iou}: must be in [0, 1]")
        if score is not None and not 0.0 <= score < 1.0:
            raise InputError(f"--score-threshold {score}: must be in [0, 1)")
        if cap is not None and cap < 1:
            raise InputError(f"--max-detections {cap}: must be >= 1")

    @property
    def encoded(self) -> bool:
        return self.settings["inputs"] == "encoded"

    # --- the model --------------------------------------------------------------------------
    @cached_property
    def model(self):
        import torch
        import torchvision.models.detection as detection

        builder = getattr(detection, self.settings["arch"])
        path = self.option_path("weights")
        if path is None:
            model = seeded_model(builder)
        else:
            state = load_state_dict(path)
            key, anchors = ARCHS[self.settings["arch"]]
            if key not in state:
                raise InputError(f"--weights {path}: not a {self.settings['arch']} state_dict (no {key}); save "
                                 f"one with torch.save(model.state_dict(), PATH)")
            torch.manual_seed(SEED)
            model = builder(weights=None, weights_backbone=None, num_classes=state[key].shape[0] // anchors)
            try:
                model.load_state_dict(state)
            except RuntimeError as exc:
                raise InputError(f"--weights {path}: does not fit {self.settings['arch']} "
                                 f"({str(exc).splitlines()[0][:200]})") from None
        for attr, option in (("score_thresh", "score_threshold"), ("nms_thresh", "iou_threshold"),
                             ("detections_per_img", "max_detections")):
            if self.settings[option] is not None:
                setattr(model, attr, self.settings[option])
        return model.eval()

    def build_original(self):
        import torch
        from PIL import Image
        from torchvision.transforms._presets import ObjectDetection

        from exportable.blocks.detection import canonical_order_np

        model, preset = self.model, ObjectDetection()

        def detect(case: Case) -> dict[str, np.ndarray]:
            if isinstance(case.data, bytes):  # what a user does with a file: PIL opens it
                image = Image.open(io.BytesIO(case.data)).convert("RGB")
            else:
                image = Image.fromarray(case.data)
            with torch.no_grad():
                out = model([preset(image)])[0]
            boxes, scores, labels = (out[k].numpy() for k in ("boxes", "scores", "labels"))
            order = canonical_order_np(np.zeros_like(labels), boxes, scores, labels)
            return {"boxes": boxes[order], "scores": scores[order], "labels": labels[order]}

        return detect

    def build_wrapper(self, fmt: str = "onnx"):
        from exportable.blocks.detection import SSDDetector

        m = self.model
        return SSDDetector(m, m.score_thresh, m.nms_thresh, m.topk_candidates, m.detections_per_img).eval()

    def onnx_preprocessor(self, opset: int):
        # exportable.blocks.image_io: the PNG/JPEG decoder, or a guard that refuses an empty image
        # with a clean error (the resize would index an empty axis).
        from exportable.blocks.image_io import decode_image_graph, pixel_guard_graph

        if self.encoded:
            return decode_image_graph(opset, input_name=IMAGE_BYTES.name, output_name=MODEL_IMAGE)
        return pixel_guard_graph(opset, input_name=IMAGE.name, output_name=MODEL_IMAGE)

    # --- specs --------------------------------------------------------------------------------
    def input_specs(self, fmt: str = "onnx"):
        return (IMAGE_BYTES,) if self.encoded else (IMAGE,)

    def model_input_specs(self, fmt: str = "onnx"):
        return (TensorSpec(MODEL_IMAGE, "uint8", ("height", "width", 3), "RGB pixels"),)

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

    def source(self) -> Source:
        path = self.option_path("weights")
        if path is not None:
            return Source(f"{self.settings['arch']} ({path.name})", sha256_files([path]), str(path))
        return Source(f"{self.settings['arch']} (seeded {SEED}, calibrated; no pretrained weights)",
                      sha256_state_dict(self.model.state_dict()))

    def preprocessing(self) -> dict:
        m = self.model
        return {
            "input": ("image_bytes: a PNG or JPEG file decoded in the graph as PIL's "
                      "Image.open(...).convert('RGB') (onnxruntime-extensions DecodeImage, guarded)"
                      if self.encoded else "image: uint8 RGB [H, W, 3]"),
            "scale": "float [0, 1] (torchvision ObjectDetection preset)",
            "normalize": {"mean": list(m.transform.image_mean), "std": list(m.transform.image_std)},
            "resize": {"size": list(m.transform.fixed_size), "mode": "bilinear", "align_corners": False},
            "score_threshold": m.score_thresh, "iou_threshold": m.nms_thresh,
            "topk_candidates_per_class": m.topk_candidates, "max_detections": m.detections_per_img,
            "order": "label, x1, y1, x2, y2, -score",
        }

    def feed(self, case: Case, fmt: str = "onnx") -> dict[str, np.ndarray]:
        if isinstance(case.data, bytes):
            return {IMAGE_BYTES.name: np.frombuffer(case.data, dtype=np.uint8).copy()}
        return {IMAGE.name: case.data}

    def capture_feed(self, fmt: str = "onnx") -> dict[str, np.ndarray]:
        return {MODEL_IMAGE: synthetic_image(0, 200, 260)}

    # --- data --------------------------------------------------------------------------------
    def example_case(self) -> Case:
        return self._case("example_200x260", synthetic_image(0, 200, 260))

    def validation_cases(self) -> list[Case]:
        cases = [self._case(f"blobs_{h}x{w}", synthetic_image(seed, h, w)) for seed, (h, w) in enumerate(
            [(240, 320), (480, 300), (33, 57), (320, 320), (100, 700), (512, 64), (640, 480)], start=1)]
        cases.append(self._case("gray_50x60_no_detection", np.full((50, 60, 3), 128, np.uint8)))
        return cases

    def _case(self, name: str, image: np.ndarray) -> Case:
        """PNG in encoded mode: lossless, and libpng decodes it as PIL does (JPEG does not: see
        exportable.blocks.image_io), so parity measures the detector, not two JPEG decoders."""
        return Case(f"png_{name}", png_bytes(image)) if self.encoded else Case(name, image)


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(image).save(out, "PNG")
    return out.getvalue()


# --- weights -----------------------------------------------------------------------------------
def seeded_model(builder):
    """torchvision's init under SEED, calibrated to score like a trained detector (module doc)."""
    import torch
    from torch import nn

    torch.manual_seed(SEED)
    model = builder(weights=None, weights_backbone=None)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a plain average over the calibration batch
    model.train()
    with torch.no_grad():
        batch = torch.stack([model.transform.normalize(_to_float(synthetic_image(100 + i, 320, 320)))
                             for i in range(2)])
        model.head(list(model.backbone(batch).values()))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.eval()
    classifiers = [block[-1] for block in model.head.classification_head.module_list]
    with torch.no_grad():
        for conv in classifiers:
            conv.weight.mul_(LOGIT_SCALE)
        gray = model.transform.normalize(_to_float(np.full((320, 320, 3), 128, np.uint8)))[None]
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
    import torch

    return torch.from_numpy(image).permute(2, 0, 1).to(torch.float32) / 255.0


def synthetic_image(seed: int, height: int, width: int) -> np.ndarray:
    """Seeded uint8 [H, W, 3]: smooth colour blobs at three scales, like a photo's regions."""
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(3, height, width)
    for scale in (4, 16, 64):
        coarse = torch.rand(1, 3, max(1, height // scale), max(1, width // scale), generator=g)
        x += torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear")[0]
    return ((x / 3).clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
