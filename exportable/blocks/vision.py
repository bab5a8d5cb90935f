"""Image preprocessing as export-friendly modules: uint8 [H, W, 3] in, float NCHW out, the same
numbers as PIL + torchvision.transforms, bit for bit.

    to_float_nchw(image)                 uint8 [H, W, C] -> float32 [1, C, H, W] in [0, 1] (ToTensor)
    Normalize(mean, std)                 (x - mean) / std per channel (transforms.Normalize)
    pil_resize_region(image, ...)        PIL's Image.resize(BILINEAR) on uint8, then a crop
    ResizeCenterCrop(256, 224)           transforms.Resize(256) + CenterCrop(224) on a PIL image
    ClassificationPreprocess(...)        all of the above: what torchvision's ImageNet eval preset does

Every module scripts (TorchScript) and captures with torch.export at any H and W. No module
branches in Python on a size: sizes become tensors, so one graph serves every image shape.

Why not ONNX Resize (antialias=1)? torchvision's Resize on a PIL image is Pillow's resampler, and
Pillow works on uint8 in fixed point: each output pixel is (2^21 + sum(pixel * k)) >> 22 with
k = round(weight * 2^22), rounded to uint8 after the first pass, before the second. ONNX Runtime's
antialiased uint8 Resize follows the same idea but not the same arithmetic: measured on 16 shapes
it was off by up to 5/255 in up to a quarter of the pixels. Here the fixed-point coefficients are
computed exactly as Pillow computes them (float64, the same operation order, weights summed in
order by a cumsum) and applied by a float64 matmul, which is exact for these integer products
(< 2^31): the result equals Pillow's pixel for pixel. Pillow 13 also picks the pass order (it
resizes vertically first when the height shrinks more than twice as much as the width; the
older code always went horizontally first): both are reproduced (`pillow_pass_order`), and
installed_pillow_pass_order() measures which one the installed Pillow follows.

Cost: the matmuls are dense, O(H * W * crop) multiply-adds per pass in float64: ~0.1 s for a
1 MP image on one core, ~1 s and ~0.3 GB for a 12 MP photo. Exactness is the point; a caller who
wants speed can shrink large images before sending them (that changes the result, as it would
with PIL).
"""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --- uint8 HWC -> float NCHW ------------------------------------------------------------------------
def to_float_nchw(image: Tensor) -> Tensor:
    """uint8 [H, W, C] (or its integer values in any dtype) -> float32 [1, C, H, W] in [0, 1].

    transforms.ToTensor divides by 255 (not a multiply by 1/255): the same here, so the floats
    are identical."""
    return image.permute(2, 0, 1).unsqueeze(0).to(torch.float32) / 255.0


class Normalize(nn.Module):
    """transforms.Normalize on NCHW float32: (x - mean) / std per channel."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


# --- Pillow's bilinear resize, exactly ----------------------------------------------------------------
def pil_bilinear_coefficients(in_size: Tensor, out_size: Tensor, first: Tensor, count: int, n_in: int) -> Tensor:
    """Pillow's fixed-point weights (Resample.c: precompute_coeffs + normalize_coeffs_8bpc) for the
    output positions first .. first + count - 1 of a resize from `in_size` to `out_size`, as a
    dense float64 [count, n_in] matrix of integers (weights * 2^22). `in_size`, `out_size` and
    `first` are 0-d int64 tensors; `n_in` is the input length (equal to in_size)."""
    scale = in_size.to(torch.float64) / out_size.to(torch.float64)
    filterscale = torch.clamp(scale, min=1.0)  # downscaling widens the filter: antialiasing
    support = filterscale  # bilinear support 1.0 * filterscale
    ss = 1.0 / filterscale
    center = ((torch.arange(count, dtype=torch.int64) + first).to(torch.float64) + 0.5) * scale
    center = center.unsqueeze(1)
    # (int)(x) in C truncates; the lower bound is clamped at 0 anyway, so floor is the same.
    xmin = torch.clamp(torch.floor(center - support + 0.5), min=0.0)
    xmax = torch.minimum(torch.floor(center + support + 0.5), in_size.to(torch.float64))
    j = torch.arange(n_in, dtype=torch.int64).to(torch.float64).unsqueeze(0)
    arg = ((j - center) + 0.5) * ss
    w = torch.clamp(1.0 - torch.abs(arg), min=0.0)  # bilinear_filter
    w = torch.where((j >= xmin) & (j < xmax), w, torch.zeros_like(w))
    ww = torch.cumsum(w, dim=1)[:, -1:]  # summed left to right, as Pillow's loop does
    k = torch.where(ww != 0.0, w / ww, w)
    return torch.floor(0.5 + k * 4194304.0)  # (int)(0.5 + k * (1 << PRECISION_BITS)), k >= 0


def _pass(x: Tensor, k: Tensor) -> Tensor:
    """One resampling pass over the last axis: clip8((2^21 + sum(x * k)) >> 22). x holds uint8
    values in float64; the products and sums are integers below 2^31, exact in float64."""
    acc = torch.matmul(x, k.t()) + 2097152.0
    return torch.clamp(torch.floor(acc / 4194304.0), 0.0, 255.0)


def _horizontal_first(x: Tensor, kh: Tensor, kv: Tensor) -> Tensor:
    x = _pass(x, kh)
    return _pass(x.transpose(1, 2), kv).transpose(1, 2).contiguous()


def _vertical_first(x: Tensor, kh: Tensor, kv: Tensor) -> Tensor:
    x = _pass(x.transpose(1, 2), kv).transpose(1, 2)
    return _pass(x, kh).contiguous()


@torch.jit.unused
def _either_order(vertical_first: Tensor, x: Tensor, kh: Tensor, kv: Tensor) -> Tensor:
    # Captured (torch.export): the size-dependent choice is a torch.cond, an ONNX If. Eager: a
    # plain `if` (torch.cond would run torch.compile). TorchScript never gets here (an `if` too).
    if torch.compiler.is_compiling():
        return torch.cond(vertical_first, _vertical_first, _horizontal_first, (x, kh, kv))
    return _vertical_first(x, kh, kv) if bool(vertical_first) else _horizontal_first(x, kh, kv)


def pil_resize_region(image: Tensor, out_h: Tensor, out_w: Tensor, top: Tensor, left: Tensor,
                      crop_h: int, crop_w: int, pillow_pass_order: bool = True) -> Tensor:
    """`Image.resize((out_w, out_h), BILINEAR)` of a uint8 [H, W, C] image, then the crop
    [top : top + crop_h, left : left + crop_w] of the result: float64 [crop_h, crop_w, C] holding
    the uint8 values PIL produces. Only the cropped pixels are computed (rows and columns of a
    resize are independent, so this equals resizing everything and cropping).

    out_h, out_w, top, left: 0-d int64 tensors (may depend on the image size); crop_h, crop_w:
    ints (the output shape is static). pillow_pass_order: Pillow 13's choice of pass order
    (vertical first when the height shrinks more than twice as much as the width); False: always
    horizontal first, as older Pillow does. installed_pillow_pass_order() tells which applies."""
    h_in, w_in = image.shape[0], image.shape[1]
    in_hw = torch.tensor([h_in, w_in], dtype=torch.int64)
    kh = pil_bilinear_coefficients(in_hw[1], out_w, left, crop_w, w_in)
    kv = pil_bilinear_coefficients(in_hw[0], out_h, top, crop_h, h_in)
    x = image.permute(2, 0, 1).to(torch.float64)  # [C, H, W]
    shrink_h, shrink_w = in_hw[0] - out_h, in_hw[1] - out_w
    vertical_first = (shrink_h > 0) & (shrink_h > shrink_w * 2) & torch.tensor(pillow_pass_order)
    if torch.jit.is_scripting():
        out = _vertical_first(x, kh, kv) if bool(vertical_first) else _horizontal_first(x, kh, kv)
    else:
        out = _either_order(vertical_first, x, kh, kv)
    return out.permute(1, 2, 0)  # back to [crop_h, crop_w, C]: an image in, an image out


def shorter_side_size(in_hw: Tensor, size: int) -> Tensor:
    """transforms.Resize(size)'s output [h, w] for an int size: the shorter side becomes `size`,
    the longer int(size * long / short) (floor division of integers: the same number)."""
    short = torch.clamp(torch.min(in_hw), min=1)  # an empty image must not divide by zero
    return torch.div(in_hw * size, short, rounding_mode="floor")


def center_crop_offsets(hw: Tensor, crop_h: int, crop_w: int) -> Tensor:
    """transforms.CenterCrop's [top, left]: int(round((size - crop) / 2.0)), round half to even
    like Python's round (ONNX Round does the same)."""
    crop = torch.tensor([crop_h, crop_w], dtype=torch.int64)
    return torch.round((hw - crop).to(torch.float64) / 2.0).to(torch.int64)


class ResizeCenterCrop(nn.Module):
    """transforms.Resize(size) + transforms.CenterCrop(crop) on a PIL image (bilinear), from a
    uint8 [H, W, 3] tensor: float64 [crop, crop, 3] holding PIL's uint8 values.

    Requires crop <= size (CenterCrop then never pads), which ImageNet presets satisfy."""

    def __init__(self, size: int = 256, crop: int = 224, pillow_pass_order: bool = True):
        super().__init__()
        if not 0 < crop <= size:
            raise ValueError(f"crop must be in 1..size, got size={size}, crop={crop}")
        self.size, self.crop, self.pillow_pass_order = size, crop, pillow_pass_order

    def forward(self, image: Tensor) -> Tensor:
        in_hw = torch.tensor([image.shape[0], image.shape[1]], dtype=torch.int64)
        out_hw = shorter_side_size(in_hw, self.size)
        top_left = center_crop_offsets(out_hw, self.crop, self.crop)
        return pil_resize_region(image, out_hw[0], out_hw[1], top_left[0], top_left[1], self.crop, self.crop,
                                 self.pillow_pass_order)


class ClassificationPreprocess(nn.Module):
    """uint8 [H, W, 3] RGB -> float32 [1, 3, crop, crop]: Resize(size) + CenterCrop(crop) +
    ToTensor + Normalize(mean, std), as torchvision's ImageNet evaluation transforms do on a PIL
    image (and ImageClassification presets with antialias on PIL input)."""

    def __init__(self, size: int = 256, crop: int = 224, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, pillow_pass_order: bool = True):
        super().__init__()
        self.resize_crop = ResizeCenterCrop(size, crop, pillow_pass_order)
        self.normalize = Normalize(mean, std)

    def forward(self, image: Tensor) -> Tensor:
        if torch.jit.is_scripting():  # an ONNX graph checks this in front (image_io.pixel_guard_graph)
            if image.shape[0] == 0 or image.shape[1] == 0:
                raise ValueError("input error: image is empty (0 rows or 0 columns); "
                                 "pass an RGB image of at least 1 x 1 pixels")
        return self.normalize(to_float_nchw(self.resize_crop(image)))


def installed_pillow_pass_order() -> bool:
    """The `pillow_pass_order` the installed Pillow follows, measured rather than guessed from its
    version: a small image whose two pass orders round differently is resized by PIL and by both
    emulations. Raises RuntimeError if neither matches (a Pillow whose resampler changed again)."""
    y, x = np.mgrid[0:40, 0:9]
    base = (x * 37 + y * 11 + (x * y) % 7 * 19) % 256
    image = np.stack([base, 255 - base, (base * 3) % 256], axis=2).astype(np.uint8)
    out_h, out_w = 29, 8  # the height shrinks by 11, more than twice the width's 1
    expected = np.asarray(Image.fromarray(image).resize((out_w, out_h), Image.BILINEAR))
    zero = torch.tensor(0)
    for order in (True, False):
        got = pil_resize_region(torch.from_numpy(image), torch.tensor(out_h), torch.tensor(out_w), zero, zero,
                                out_h, out_w, order)
        if np.array_equal(got.numpy(), expected):
            return order
    raise RuntimeError("the installed Pillow's bilinear resize matches neither known pass order; "
                       "exportable.blocks.vision needs updating for it")


__all__: Tuple[str, ...] = ("to_float_nchw", "Normalize", "pil_bilinear_coefficients", "pil_resize_region",
                            "shorter_side_size", "center_crop_offsets", "ResizeCenterCrop", "ClassificationPreprocess",
                            "installed_pillow_pass_order", "IMAGENET_MEAN", "IMAGENET_STD")
