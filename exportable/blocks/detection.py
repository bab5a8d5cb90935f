"""Detection post-processing as export-friendly blocks: class-aware NMS, YOLO-style decoding,
and torchvision's SSD from a uint8 image to final boxes.

The NMS is one custom op, `exportable::nms`, that exports to a single ONNX NonMaxSuppression
(translation in ONNX_TRANSLATIONS, handed to the dynamo exporter) and runs torchvision.ops.nms in
eager mode. What makes ONNX Runtime's NonMaxSuppression answer exactly as torchvision's
batched_nms (measured; see tests/test_nms.py):
- Box format: ONNX's default corners are [y1, x1, y2, x2]; we feed [x1, y1, x2, y2] unchanged.
  IoU is symmetric in the axes and ORT's products and sums are the same IEEE operations as
  torchvision's kernel, so the IoU is bit-identical (flipped boxes, x2 < x1, are the exception:
  ORT reorders the corners, torchvision does not).
- Threshold: both suppress when IoU > threshold, but torchvision compares the float IoU with a
  double threshold and ONNX with a float one. IoU == float32(0.55) > 0.55 suppresses in
  torchvision and not in ORT, so the graph gets float32_below(threshold): the largest float32
  that decides every float32 IoU as the double threshold does.
- Order and ties: torchvision sorts by score with a stable sort (the lower index wins a tie);
  the ONNX spec leaves ties open (ORT 1.31 happens to prefer the lower index, its older kernels
  ordered a heap by score alone). We hand NonMaxSuppression distinct rank scores (N - position
  in torchvision's order) instead of the scores themselves.
- Classes: torchvision's batched_nms runs per class (over 1000 boxes on CPU) or adds a class
  offset to the coordinates (the "coordinate trick"), which rounds the shifted boxes and so the
  IoU. The graph applies the same offsets in the same cases, so even IoUs a rounding away from
  the threshold decide alike. Classes are NonMaxSuppression's class axis.
- Output order: NonMaxSuppression returns per batch, per class; torchvision sorts by score.
  Final detections are put in one canonical order (canonical_order / lexsort below) both in the
  graph and in the recipes' wrappers around the original, so parity compares row by row.
"""

from __future__ import annotations

import numpy as np
import torch
import torchvision
from onnxscript import opset18 as op
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList
from torchvision.ops.boxes import clip_boxes_to_image

# torchvision.ops.batched_nms switches from per-class NMS to the coordinate trick at this many
# box values (boxes.numel()) on CPU; see torchvision/ops/boxes.py.
TORCHVISION_VANILLA_NUMEL = 4000


# --- the NMS op -------------------------------------------------------------------------------
@torch.library.custom_op("exportable::nms", mutates_args=())
def nms(boxes: Tensor, scores: Tensor, iou_threshold: float, score_threshold: float) -> Tensor:
    """ONNX NonMaxSuppression: boxes [B, N, 4] (x1, y1, x2, y2), scores [B, C, N]; boxes with
    score > score_threshold take part; a box is dropped when its IoU with a kept box of the same
    batch and class is > iou_threshold. Returns [K, 3] int64 (batch, class, box), by batch, class,
    then decreasing score. Pass distinct scores: ONNX leaves the order among equal scores open."""
    selected = [boxes.new_zeros((0, 3), dtype=torch.int64)]
    for b in range(scores.shape[0]):
        for c in range(scores.shape[1]):
            idx = torch.nonzero(scores[b, c] > score_threshold).flatten()
            keep = idx[torchvision.ops.nms(boxes[b, idx], scores[b, c, idx], iou_threshold)]
            selected.append(torch.stack([torch.full_like(keep, b), torch.full_like(keep, c), keep], 1))
    return torch.cat(selected)


@nms.register_fake
def _nms_fake(boxes, scores, iou_threshold, score_threshold):
    count = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((count, 3), dtype=torch.int64)


def float32_below(value: float) -> float:
    """The largest float32 t with (x > t) == (x > value) for every float32 x."""
    f = np.float32(value)
    if float(f) > value:
        f = np.nextafter(f, np.float32(-np.inf))
    return float(f)


def _nms_onnx(boxes, scores, iou_threshold: float, score_threshold: float):
    max_per_class = op.Constant(value_int=2**63 - 1)
    return op.NonMaxSuppression(boxes, scores, max_per_class, op.Constant(value_float=float32_below(iou_threshold)),
                                op.Constant(value_float=float32_below(score_threshold)))


def _stable_sort_onnx(self, stable: bool = True, dim: int = -1, descending: bool = False):
    # ONNX TopK returns equal values lower index first (the spec's tie rule), so a TopK over the
    # whole axis is the stable sort; torchlib has no translation for aten.sort.stable.
    size = op.Shape(self, start=dim) if dim == -1 else op.Shape(self, start=dim, end=dim + 1)
    return op.TopK(self, size, axis=dim, largest=descending, sorted=True)


# Given to torch.onnx.export(custom_translation_table=...) by exporters/onnx.py.
ONNX_TRANSLATIONS = {torch.ops.exportable.nms.default: _nms_onnx, torch.ops.aten.sort.stable: _stable_sort_onnx}


# --- batched NMS as torchvision does it --------------------------------------------------------
def batched_nms_keep(boxes: Tensor, scores: Tensor, labels: Tensor, valid: Tensor, num_classes: int,
                     iou_threshold: float) -> Tensor:
    """keep [B, N] (bool): row b is torchvision.ops.batched_nms(boxes[b][valid[b]], scores[b][...],
    labels[b][...], iou_threshold) on the valid candidates, as a mask. boxes [B, N, 4] x1y1x2y2,
    scores [B, N], labels [B, N] int64 in [0, num_classes)."""
    batch, count = scores.shape
    # torchvision's processing order: decreasing score, stable; as distinct ranks N..1 (0 = invalid).
    order = torch.sort(torch.where(valid, scores, float("-inf")), dim=1, descending=True, stable=True).indices
    position = torch.arange(count, device=scores.device).expand(batch, count)
    rank = torch.zeros_like(order).scatter(1, order, position)
    rank_score = torch.where(valid, (count - rank).to(torch.float32), 0.0)
    classes = torch.arange(num_classes, device=labels.device)
    per_class = torch.where(labels[:, None, :] == classes[None, :, None], rank_score[:, None, :], 0.0)  # [B, C, N]
    # The coordinate trick, where torchvision uses it, with its exact float operations.
    finite = torch.where(valid[..., None], boxes, float("-inf")).amax(dim=(1, 2)).clamp(min=0.0)
    offsets = labels.to(boxes.dtype) * (finite[:, None] + torch.tensor(1.0, dtype=boxes.dtype))
    trick = (valid.sum(dim=1) * 4 <= TORCHVISION_VANILLA_NUMEL)[:, None, None]
    boxes_for_nms = torch.where(trick, boxes + offsets[..., None], boxes)
    selected = nms(boxes_for_nms, per_class, iou_threshold, 0.5)
    keep = torch.zeros(batch * count, dtype=torch.bool, device=scores.device)
    return keep.index_fill(0, selected[:, 0] * count + selected[:, 2], True).reshape(batch, count)


def top_per_row(keep: Tensor, scores: Tensor, max_det: int) -> tuple[Tensor, Tensor]:
    """(row, column) of the kept entries, at most max_det per row by decreasing score (ties: lower
    column first), like torchvision's keep[:max_det] after its score sort."""
    masked = torch.where(keep, scores, float("-inf"))
    # A stable sort, not torch.topk: eager topk orders ties arbitrarily, ONNX TopK does not.
    top = torch.sort(masked, dim=1, descending=True, stable=True).indices[:, :max_det]
    kept = torch.gather(keep, 1, top)
    rows = torch.arange(scores.shape[0], device=scores.device)[:, None].expand_as(top)
    return rows[kept], top[kept]


def lexsort(keys: list[tuple[Tensor, bool]]) -> Tensor:
    """Permutation sorting by keys (most significant first; (key, descending)), stable, as
    numpy.lexsort with the keys reversed. Successive stable sorts: ONNX TopK breaks ties by the
    lower index, so the graph sorts exactly as eager torch does."""
    perm = torch.arange(keys[0][0].shape[0], device=keys[0][0].device)
    for key, descending in reversed(keys):
        perm = perm[torch.sort(key[perm], descending=descending, stable=True).indices]
    return perm


def canonical_order(batch: Tensor, boxes: Tensor, scores: Tensor, labels: Tensor) -> Tensor:
    """Detections in one order: batch, label, x1, y1, x2, y2, then decreasing score.

    Not by score first: two detections' scores can lie closer than the float difference between
    ONNX Runtime and PyTorch (measured: 4 of 7 seeded SSD images swapped a pair), and a swap
    would break a row-by-row comparison; same-label boxes are pixels apart."""
    keys = [(batch.to(torch.float32), False), (labels.to(torch.float32), False)]
    return lexsort(keys + [(boxes[:, i], False) for i in range(4)] + [(scores, True)])


def canonical_order_np(batch, boxes, scores, labels) -> np.ndarray:
    """The same order for numpy detections (the original pipelines' outputs)."""
    boxes = np.asarray(boxes).reshape(-1, 4)
    return np.lexsort((-np.asarray(scores, dtype=np.float64), boxes[:, 3], boxes[:, 2], boxes[:, 1], boxes[:, 0],
                       np.asarray(labels), np.asarray(batch)))


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """torchvision.ops.box_convert(boxes, "cxcywh", "xyxy"), the same float operations."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


# --- YOLO-style raw predictions ---------------------------------------------------------------
class YoloNMS(nn.Module):
    """predictions [B, A, 4 + C] (cx, cy, w, h, class scores) -> detections [n, 7]
    (batch index, x1, y1, x2, y2, score, class), in canonical order.

    Per anchor the best class (first on a tie) and its score; candidates with score >
    score_threshold; class-aware NMS; at most max_det per image by decreasing score."""

    onnx_translations = ONNX_TRANSLATIONS

    def __init__(self, num_classes: int, score_threshold: float, iou_threshold: float, max_det: int):
        super().__init__()
        self.num_classes, self.score_threshold = num_classes, score_threshold
        self.iou_threshold, self.max_det = iou_threshold, max_det

    def forward(self, predictions: Tensor) -> Tensor:
        boxes = cxcywh_to_xyxy(predictions[..., :4])
        # dim=2, not -1: ONNX Runtime's ReduceMax leaves an empty batch unreduced for axes=[-1]
        scores, labels = predictions[:, :, 4:].max(dim=2)
        keep = batched_nms_keep(boxes, scores, labels, scores > self.score_threshold, self.num_classes,
                                self.iou_threshold)
        rows, cols = top_per_row(keep, scores, self.max_det)
        boxes, scores, labels = boxes[rows, cols], scores[rows, cols], labels[rows, cols]
        order = canonical_order(rows, boxes, scores, labels)
        return torch.cat([rows[order, None].to(torch.float32), boxes[order], scores[order, None],
                          labels[order, None].to(torch.float32)], dim=1)


# --- torchvision SSD, image to boxes ----------------------------------------------------------
def uint8_hwc_to_float_chw(image: Tensor) -> Tensor:
    """torchvision's ObjectDetection preset on a uint8 [H, W, 3] tensor: pil_to_tensor's CHW,
    then convert_image_dtype (x.to(float32) / 255)."""
    return image.permute(2, 0, 1).to(torch.float32) / 255.0


def _linear_taps(in_size: Tensor, out_size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Source indices and weights of PyTorch's bilinear (align_corners=False, size given) along one
    axis, with its float32 arithmetic: scale = in / out, src = max(scale * (i + 0.5) - 0.5, 0)."""
    scale = in_size.to(torch.float32) / float(out_size)
    src = (scale * (torch.arange(out_size, dtype=torch.float32, device=in_size.device) + 0.5) - 0.5).clamp(min=0.0)
    last = in_size - 1
    i0 = torch.minimum(src.floor().to(torch.int64), last)
    w1 = (src - i0.to(torch.float32)).clamp(0.0, 1.0)
    return i0, torch.where(i0 < last, i0 + 1, i0), 1.0 - w1, w1


def resize_bilinear(image: Tensor, size: tuple[int, int]) -> Tensor:
    """F.interpolate(image[None], size, mode="bilinear", align_corners=False)[0] for [C, H, W].

    Written out because ONNX Resize computes source coordinates as (i + 0.5) / (out / in) - 0.5:
    one rounding apart from PyTorch's (in / out) * (i + 0.5) - 0.5, which moved pixels by up to
    7e-5 on a noisy 480x300 image (ORT 1.31) and scores by 2e-4 downstream. Gathers and the same
    blend order (width, then height) agree with PyTorch's kernel to float rounding."""
    h0, h1, hw0, hw1 = _linear_taps(torch.scalar_tensor(image.shape[1], dtype=torch.int64), size[0])
    w0, w1, ww0, ww1 = _linear_taps(torch.scalar_tensor(image.shape[2], dtype=torch.int64), size[1])
    rows = image.index_select(2, w0) * ww0 + image.index_select(2, w1) * ww1
    return rows.index_select(1, h0) * hw0[:, None] + rows.index_select(1, h1) * hw1[:, None]


class SSDDetector(nn.Module):
    """uint8 image [H, W, 3] -> boxes [n, 4] (x1, y1, x2, y2 in input pixels), scores [n], labels [n].

    torchvision's SSD.forward on one image: its transform's normalisation, its resize as
    resize_bilinear, its own backbone, head, box coder and clip, and its postprocess_detections
    rewritten without per-class Python loops: the anchors of the fixed-size input are a constant,
    the per-class top-k is one TopK over [classes, anchors], the NMS is batched_nms_keep."""

    onnx_translations = ONNX_TRANSLATIONS

    def __init__(self, model: nn.Module, score_threshold: float, iou_threshold: float, topk_candidates: int,
                 detections_per_img: int):
        super().__init__()
        transform = model.transform
        if transform.fixed_size is None:
            raise ValueError("SSDDetector needs an SSD with a fixed input size (transform.fixed_size)")
        self.size = (transform.fixed_size[1], transform.fixed_size[0])  # (height, width), as torchvision
        self.register_buffer("mean", torch.tensor(transform.image_mean, dtype=torch.float32)[:, None, None])
        self.register_buffer("std", torch.tensor(transform.image_std, dtype=torch.float32)[:, None, None])
        self.backbone, self.head, self.box_coder = model.backbone, model.head, model.box_coder
        self.clip = clip_boxes_to_image
        with torch.no_grad():
            blank = torch.zeros(1, 3, *self.size)
            features = list(self.backbone(blank).values())
            anchors = model.anchor_generator(ImageList(blank, [self.size]), features)[0]
        self.register_buffer("anchors", anchors)
        self.score_threshold, self.iou_threshold = score_threshold, iou_threshold
        self.topk_candidates, self.detections_per_img = topk_candidates, detections_per_img

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = (uint8_hwc_to_float_chw(image) - self.mean) / self.std
        x = resize_bilinear(x, self.size)[None]
        head = self.head(list(self.backbone(x).values()))
        boxes = self.box_coder.decode_single(head["bbox_regression"][0], self.anchors)
        boxes = self.clip(boxes, self.size)
        scores = nn.functional.softmax(head["cls_logits"][0], dim=-1)[:, 1:].T  # [classes - 1, anchors]
        k = min(self.topk_candidates, scores.shape[1])
        top_scores, top_idx = scores.topk(k, dim=1)  # per class, as torchvision's loop does
        num_fg = scores.shape[0]
        cand_boxes = boxes[top_idx.reshape(-1)][None]  # [1, classes * k, 4], class-major
        cand_scores = top_scores.reshape(1, -1)
        cand_labels = (torch.arange(num_fg, device=image.device) + 1).repeat_interleave(k)[None]
        keep = batched_nms_keep(cand_boxes, cand_scores, cand_labels, cand_scores > self.score_threshold,
                                num_fg + 1, self.iou_threshold)
        rows, cols = top_per_row(keep, cand_scores, self.detections_per_img)
        out_boxes, out_scores, out_labels = cand_boxes[rows, cols], cand_scores[rows, cols], cand_labels[rows, cols]
        # transform.postprocess: resize_boxes from the model size back to the input image
        height, width = self.size
        ratio_h = torch.scalar_tensor(image.shape[0], dtype=torch.float32) / torch.tensor(float(height))
        ratio_w = torch.scalar_tensor(image.shape[1], dtype=torch.float32) / torch.tensor(float(width))
        out_boxes = out_boxes * torch.stack([ratio_w, ratio_h, ratio_w, ratio_h])
        order = canonical_order(torch.zeros_like(out_labels), out_boxes, out_scores, out_labels)
        return out_boxes[order], out_scores[order], out_labels[order]
