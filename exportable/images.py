"""Deterministic sample images for examples, validation and calibration (seeded), and the files a
user would send (PNG/JPEG bytes): the vision counterpart of exportable.samples.

    synthetic_image(height, width, seed)   looks like content: gradient, texture, shapes, noise
    colour_blobs(seed, height, width)      smooth colour regions at three scales, like a photo's
    encode(image, "PNG" | "JPEG-L" | ...)  the bytes of an image file, as PIL writes it
    open_image(data)                       what a user's pipeline does with pixels or a file: a PIL RGB image
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, ImageDraw


def synthetic_image(height: int, width: int, seed: int) -> np.ndarray:
    """A deterministic uint8 [height, width, 3] image that looks like content: a two-colour
    gradient, a soft texture, a few filled shapes and lines, mild sensor noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    angle = rng.uniform(0, np.pi)
    t = (x * np.cos(angle) + y * np.sin(angle)) / max(height, width, 1)
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    image = c0 + (c1 - c0) * t[..., None]
    small = rng.normal(0, 1, (4, 4, 3))  # a soft texture: a 4 x 4 grid of noise, bilinearly upsampled
    gy, gx = y / max(height - 1, 1) * 3, x / max(width - 1, 1) * 3
    y0, x0 = np.floor(gy).astype(int).clip(0, 2), np.floor(gx).astype(int).clip(0, 2)
    fy, fx = (gy - y0)[..., None], (gx - x0)[..., None]
    texture = (small[y0, x0] * (1 - fy) * (1 - fx) + small[y0 + 1, x0] * fy * (1 - fx) +
               small[y0, x0 + 1] * (1 - fy) * fx + small[y0 + 1, x0 + 1] * fy * fx)
    image = image + 25 * texture + rng.normal(0, 4, (height, width, 3))
    picture = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    _draw_shapes(ImageDraw.Draw(picture), rng, height, width)
    return np.array(picture)


def _draw_shapes(draw, rng, height: int, width: int) -> None:
    """2 to 5 filled ellipses, rectangles or thick lines, partly outside the frame."""
    for _ in range(rng.integers(2, 6)):
        box = sorted(rng.uniform(-0.2, 1.2, 2) * width), sorted(rng.uniform(-0.2, 1.2, 2) * height)
        xy = [box[0][0], box[1][0], box[0][1], box[1][1]]
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = rng.integers(3)
        if shape == 0:
            draw.ellipse(xy, fill=colour)
        elif shape == 1:
            draw.rectangle(xy, fill=colour)
        else:
            draw.line(xy, fill=colour, width=int(rng.integers(1, max(2, min(height, width) // 8 + 2))))


def colour_blobs(seed: int, height: int, width: int) -> np.ndarray:
    """Seeded uint8 [H, W, 3]: smooth colour blobs at three scales, like a photo's regions."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(3, height, width)
    for scale in (4, 16, 64):
        coarse = torch.rand(1, 3, max(1, height // scale), max(1, width // scale), generator=g)
        x += torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear")[0]
    return ((x / 3).clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def encode(image: np.ndarray, fmt: str, **options) -> bytes:
    """PNG or JPEG bytes of an RGB image; "JPEG-L", "PNG-L", "PNG-P", "PNG-RGBA" first convert it
    to grayscale, palette or RGBA (alpha 200). `options` go to PIL's Image.save (quality, ...)."""
    picture = Image.fromarray(image)
    fmt, _, mode = fmt.partition("-")
    if mode == "RGBA":
        picture = Image.fromarray(np.dstack([image, np.full(image.shape[:2], 200, np.uint8)]))
    elif mode:
        picture = picture.convert(mode)
    out = io.BytesIO()
    picture.save(out, fmt, **options)
    return out.getvalue()


def open_image(data):
    """A PIL RGB image from uint8 [H, W, 3] pixels, or from the bytes of a file as a user opens
    one: Image.open(BytesIO(data)).convert("RGB")."""
    if isinstance(data, bytes):
        return Image.open(io.BytesIO(data)).convert("RGB")
    return Image.fromarray(data)
