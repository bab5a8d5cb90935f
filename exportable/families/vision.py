"""The vision family: what image-in recipes share, so that a recipe declares only what differs.

    VisionRecipe            one RGB image in: `image` uint8 [height, width, 3] of any size or, with
                            `--inputs encoded` (ONNX only), `image_bytes`, a whole PNG/JPEG file
                            decoded in the graph (exportable.blocks.image_io); weights from
                            `--weights FILE` or seeded; cases as pixels or encoded files

A subclass declares seeded_model(), model_from_weights(), seeded_source_name(), example_image()
and the usual specs. The image classifiers built on it (ImageClassifierFamily,
TorchvisionClassifier) are in exportable.families.image_classifier. See docs/writing-a-recipe.md,
Families.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import ClassVar

import numpy as np

from exportable.blocks.image_io import decode_image_graph, pixel_guard_graph
from exportable.errors import InputError
from exportable.hashing import sha256_files, sha256_state_dict
from exportable.images import encode, synthetic_image
from exportable.recipe import Case, Option, Recipe, Source, TensorSpec
from exportable.weights import check_weights_file, load_state_dict

SEED = 0  # torch.manual_seed of every seeded default model
PIXELS = TensorSpec("image", "uint8", ("height", "width", 3), "RGB pixels, row-major, any height and width")
IMAGE_BYTES = TensorSpec("image_bytes", "uint8", ("bytes",), "the bytes of a whole PNG or JPEG file")
MODEL_IMAGE = "rgb_image"  # the captured module's input, fed by the pixel guard or the decoder graph
BENCH_SIZES = {"short": (480, 640), "long": (1080, 1920)}  # one photo-sized image per bench call

INPUTS = Option("inputs", "ONNX graph input: RGB pixels, or the bytes of a PNG/JPEG file (decoded in the graph)",
                default="pixels", choices=("pixels", "encoded"))
WEIGHTS = Option("weights", "local state_dict for --arch: .pt/.pth (torch.save of model.state_dict()) or "
                            ".safetensors (default: seeded init, see the recipe doc)")


# --- image in -----------------------------------------------------------------------------------
class VisionRecipe(Recipe):
    """A recipe whose input is one RGB image. Cases hold uint8 [H, W, 3] pixels, or the bytes of a
    PNG/JPEG file with `--inputs encoded` (the original then opens the file with PIL)."""

    image: ClassVar[TensorSpec] = PIXELS
    image_bytes: ClassVar[TensorSpec] = IMAGE_BYTES
    pixels_description: ClassVar[str] = "image: uint8 RGB [height, width, 3]"
    bytes_description: ClassVar[str] = ("image_bytes: a PNG or JPEG file, decoded in the graph (onnxruntime-extensions "
                                        "DecodeImage, guarded) as PIL's Image.open(...).convert('RGB')")

    # --- what a subclass declares -------------------------------------------------------------
    def seeded_model(self):
        """The default model when no --weights is given (seeded: no downloads)."""
        raise NotImplementedError

    def model_from_weights(self, state: dict, path: Path):
        """The model holding a loaded state_dict (exportable.weights.rows_of / load_into give
        one-line errors)."""
        raise NotImplementedError

    def seeded_source_name(self) -> str:
        """The Source name of the seeded default (how it was made)."""
        raise NotImplementedError

    def model_name(self) -> str:
        """What the model is, for the Source name of a weights file."""
        return str(self.settings["arch"])

    def finish_model(self, model):
        """Settings applied to (or checked against) the model in eval mode; returns it."""
        return model

    def example_image(self) -> np.ndarray:
        """The capture example, uint8 [H, W, 3]; validation images must have other sizes."""
        raise NotImplementedError

    # --- settings -------------------------------------------------------------------------------
    def validate_settings(self) -> None:
        path = self.option_path("weights")
        if path is not None:
            check_weights_file(path)

    @property
    def encoded(self) -> bool:
        return self.settings.get("inputs") == "encoded"

    def format_unavailable(self, fmt: str) -> str | None:
        if fmt != "onnx" and self.encoded:  # no image decoder exists in TorchScript
            return ("with --inputs encoded (decoding happens in the ONNX graph; use --inputs pixels "
                    "for TorchScript)")
        return None

    # --- the model ------------------------------------------------------------------------------
    @cached_property
    def model(self):
        path = self.option_path("weights")
        model = self.seeded_model() if path is None else self.model_from_weights(load_state_dict(path), path)
        return self.finish_model(model.eval())

    def source(self) -> Source:
        path = self.option_path("weights")
        if path is not None:
            return Source(f"{self.model_name()} ({path.name})", sha256_files([path]), str(path))
        return Source(self.seeded_source_name(), sha256_state_dict(self.model.state_dict()))

    # --- the graph's input ------------------------------------------------------------------------
    def input_specs(self, fmt: str = "onnx"):
        return (self.image_bytes,) if fmt == "onnx" and self.encoded else (self.image,)

    def model_input_specs(self, fmt: str = "onnx"):
        if fmt == "onnx":
            return (TensorSpec(MODEL_IMAGE, "uint8", ("height", "width", 3), "RGB pixels"),)
        return (self.image,)

    def onnx_preprocessor(self, opset: int):
        # exportable.blocks.image_io: the PNG/JPEG decoder, or a guard that refuses an empty image
        # with a clean error (the resize would index an empty axis).
        if self.encoded:
            return decode_image_graph(opset, input_name=self.image_bytes.name, output_name=MODEL_IMAGE)
        return pixel_guard_graph(opset, input_name=self.image.name, output_name=MODEL_IMAGE)

    def input_description(self) -> str:
        """The input entry of preprocessing() metadata."""
        return self.bytes_description if self.encoded else self.pixels_description

    # --- cases --------------------------------------------------------------------------------------
    def image_case(self, name: str, image: np.ndarray, fmt: str = "PNG", **options) -> Case:
        """A case of `image`: its pixels, or (--inputs encoded) the file `fmt` (exportable.images.encode)."""
        return Case(name, encode(image, fmt, **options) if self.encoded else image)

    def example_case(self) -> Case:
        image = self.example_image()
        return self.image_case(f"example_{image.shape[0]}x{image.shape[1]}", image)

    def capture_feed(self, fmt: str = "onnx") -> dict[str, np.ndarray]:
        return {self.model_input_specs(fmt)[0].name: self.example_image()}  # pixels: the decoder sits in front

    def feed(self, case: Case, fmt: str = "onnx") -> dict[str, np.ndarray]:
        if isinstance(case.data, bytes):
            return {self.image_bytes.name: np.frombuffer(case.data, dtype=np.uint8).copy()}
        return {self.image.name: np.array(case.data, dtype=np.uint8)}  # a writable copy (torch.from_numpy warns otherwise)

    def bench_case(self, length: str, batch: int) -> Case | None:
        """`bench` inputs: one photo-sized image per call (the artifact takes one image):
        short = 480 x 640, long = 1080 x 1920 (as PNG bytes with --inputs encoded)."""
        if batch != 1:
            return None
        h, w = BENCH_SIZES.get(length, BENCH_SIZES["short"])
        return self.image_case(f"{length}_{h}x{w}", synthetic_image(h, w, seed=2000))


def check_detection_options(iou: float | None, score: float | None, cap: int | None, cap_flag: str) -> None:
    """Detection thresholds (None: the model's default): IoU in [0, 1], score in [0, 1), cap >= 1."""
    if iou is not None and not 0.0 <= iou <= 1.0:
        raise InputError(f"--iou-threshold {iou}: must be in [0, 1]")
    if score is not None and not 0.0 <= score < 1.0:
        raise InputError(f"--score-threshold {score}: must be in [0, 1)")
    if cap is not None and cap < 1:
        raise InputError(f"{cap_flag} {cap}: must be >= 1")
