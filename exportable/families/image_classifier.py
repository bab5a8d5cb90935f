"""Image classifiers on the vision family (exportable.families.vision.VisionRecipe).

    ImageClassifierFamily   a classifier named by `--arch`: seeded + BatchNorm-calibrated or loaded
                            weights, `--labels`, `--top-k`, the preprocessing in the graph
                            (exportable.blocks.vision), 36 validation sizes, exact-id parity
    TorchvisionClassifier   ImageClassifierFamily over torchvision.models

A subclass of TorchvisionClassifier declares only its name, options (classifier_options) and
tolerances. See docs/writing-a-recipe.md, Families.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import ClassVar

import numpy as np
import PIL
import torch
import torchvision
from PIL import Image
from torchvision import transforms

from exportable.blocks.heads import TopKClassifier, WithLabels, label_lookup_graph
from exportable.blocks.vision import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ClassificationPreprocess,
    installed_pillow_pass_order,
)
from exportable.errors import BuildError, InputError
from exportable.images import encode, open_image, synthetic_image
from exportable.recipe import Case, Option, TensorSpec
from exportable.runtime import quiet_torchscript
from exportable.weights import calibrating_batchnorm, load_into, rows_of

from .vision import INPUTS, SEED, WEIGHTS, VisionRecipe

CALIBRATION_IMAGES = 8
LOGIT_STD = 2.0  # spread of the seeded classifier's logits over classes (see calibrate_batchnorm)
DECIDING_SEEDS = 12  # seeds tried per validation size for a decided ranking

# Validation image sizes (height, width): tiny, odd, square, exactly the crop and resize sizes,
# very wide and very tall, and larger than 256 on both sides. The example (capture) is 300 x 400.
SIZES = [(7, 9), (9, 7), (1, 1), (2, 3), (13, 1), (31, 17), (64, 64), (97, 113), (150, 149), (120, 80),
         (224, 224), (223, 225), (255, 257), (256, 256), (256, 300), (300, 256), (257, 1000), (1000, 257),
         (2, 999), (999, 2), (40, 1500), (1500, 40), (333, 777), (777, 333), (480, 640), (640, 480),
         (601, 401), (401, 601), (512, 512), (513, 259), (199, 1001), (1001, 199), (345, 346), (720, 1280),
         (1024, 768), (900, 1200)]

# Encoded validation files besides PNG: (case kind, exportable.images.encode format, PIL save options).
# Subsampled-chroma JPEG (4:2:0) is left out: see docs/image-preprocessing.md.
ENCODED_KINDS = [("jpeg444", "JPEG", dict(quality=90, subsampling=0)),
                 ("jpeg444_progressive", "JPEG", dict(quality=85, subsampling=0, progressive=True)),
                 ("jpeg_gray", "JPEG-L", dict(quality=90)), ("png_rgba", "PNG-RGBA", {}),
                 ("png_gray", "PNG-L", {}), ("png_palette", "PNG-P", {})]


def classifier_options(default_arch: str, arch_help: str) -> tuple[Option, ...]:
    """The options of an ImageClassifierFamily recipe: --arch, --weights, --labels, --top-k, --inputs."""
    return (
        Option("arch", arch_help, default=default_arch),
        WEIGHTS,
        Option("labels", "text file with one class name per line, as many lines as the model has classes"),
        Option("top_k", "how many classes to return, most probable first", default=5, type=int),
        INPUTS,
    )


class ImageClassifierFamily(VisionRecipe):
    """A classifier by architecture name: `--arch` (close-match hints), `--weights FILE` (its
    classifier layer gives the class count) or a seeded init calibrated by calibrate_batchnorm,
    `--labels FILE`, softmax + top-k in the graph, the original being `transform` + model +
    softmax + topk on a PIL image.

    Parity needs a decided ranking for exact ids: a validation image is kept only if the
    original's top-(k+1) probabilities are pairwise further apart than twice the tolerance band
    (`decided`); otherwise the next seed of that size is drawn. These are made-up test images, so
    we make ones whose answer is well defined.

    A subclass declares `library`, `arch_hint`, architectures(), create_model(), its options
    (classifier_options) and tolerances() (a "probabilities" entry is required: `decided` uses it);
    the preprocessing sizes when they are not torchvision's ImageNet 256 / 224."""

    formats = ("onnx", "torchscript")  # the classifier traces; --inputs encoded narrows it (format_unavailable)
    library: ClassVar[str] = ""  # names the models in messages and the source: "torchvision"
    arch_hint: ClassVar[str] = ""  # where the --arch names are listed, for the error message
    resize: ClassVar[int] = 256  # transforms.Resize(resize): the shorter side, bilinear on a PIL image
    crop: ClassVar[int] = 224  # transforms.CenterCrop(crop)
    mean: ClassVar[Sequence[float]] = IMAGENET_MEAN
    std: ClassVar[Sequence[float]] = IMAGENET_STD
    validation_sizes: ClassVar[Sequence[tuple[int, int]]] = SIZES

    # --- what a subclass declares -------------------------------------------------------------
    def architectures(self) -> Sequence[str]:
        """The names --arch accepts."""
        raise NotImplementedError

    def create_model(self, arch: str, num_classes: int | None = None):
        """`arch` with random weights (the caller seeds torch); num_classes None: the default head."""
        raise NotImplementedError

    # --- settings -------------------------------------------------------------------------------
    def validate_settings(self) -> None:
        arch, known = self.settings["arch"], self.architectures()
        if arch not in known:
            close = difflib.get_close_matches(arch, known, n=3)
            raise InputError(f"--arch {arch!r} is not a {self.library} classification model"
                             f"{'; did you mean ' + ', '.join(close) + '?' if close else ''} ({self.arch_hint})")
        super().validate_settings()
        labels = self.option_path("labels")
        if labels is not None and not labels.is_file():
            raise InputError(f"--labels {labels}: no such file; pass a text file with one class name per line")
        if self.settings["top_k"] < 1:
            raise InputError(f"--top-k {self.settings['top_k']}: must be at least 1")

    @property
    def k(self) -> int:
        return self.settings["top_k"]

    @cached_property
    def labels(self) -> list[str] | None:
        path = self.option_path("labels")
        return None if path is None else read_labels(path)

    @cached_property
    def pass_order(self) -> bool:
        return installed_pillow_pass_order()

    # --- the model ------------------------------------------------------------------------------
    def model_name(self) -> str:
        return f"{self.library} {self.settings['arch']}"

    def seeded_source_name(self) -> str:
        return f"{self.model_name()}, seeded init (seed {SEED}) + BatchNorm calibrated on {CALIBRATION_IMAGES} " \
               "synthetic images"

    def seeded_model(self):
        torch.manual_seed(SEED)
        model = self.create_model(self.settings["arch"])
        calibrate_batchnorm(model, self.transform)
        return model

    def model_from_weights(self, state: dict, path: Path):
        arch, what = self.settings["arch"], self.model_name()
        classes = rows_of(state, f"{self.classifier_layer_name(arch)}.weight", path, what)
        return load_into(self.create_model(arch, num_classes=classes), state, path, what)

    def classifier_layer_name(self, arch: str) -> str:
        """The name of `arch`'s classifier layer (its last Linear or conv), found on a weightless
        "meta" copy (its name does not depend on the class count: 1 keeps the copy small)."""
        with torch.device("meta"):
            return classifier_layer(self.create_model(arch, num_classes=1))[0]

    def finish_model(self, model):
        classes = self.num_classes_of(model)
        if self.k > classes:
            raise InputError(f"--top-k {self.k} is more than the model's {classes} classes; choose 1 to {classes}")
        if self.labels is not None and len(self.labels) != classes:
            raise InputError(f"--labels {self.option_path('labels')} has {len(self.labels)} names but the model has "
                             f"{classes} classes; give one name per class, in class-id order")
        return model

    @staticmethod
    def num_classes_of(model) -> int:
        """Number of classes: the output features of the model's last Linear (or 1x1 conv) layer."""
        last = classifier_layer(model)[1]
        return int(last.out_features if isinstance(last, torch.nn.Linear) else last.out_channels)

    # --- the original pipeline ------------------------------------------------------------------
    @cached_property
    def transform(self):
        """The original's preprocessing: torchvision's evaluation transforms at this family's sizes."""
        return torchvision_transform(self.resize, self.crop, self.mean, self.std)

    def build_original(self):
        return self._classifier(self._original_ranking)

    def bench_original(self):
        """The original as `bench` times it: every call computed (no memo), on bench's threads."""
        return self._classifier(lambda case: self._rank(case.data, self.k))

    def _classifier(self, ranking):
        """classify(case) from ranking(case) -> (probabilities, ids), most probable first."""
        labels, k = self.labels, self.k

        def classify(case: Case) -> dict[str, np.ndarray]:
            values, ids = ranking(case)
            out = {"probabilities": values[:k], "class_ids": ids[:k]}
            if labels is not None:
                out["labels"] = np.array([labels[i] for i in out["class_ids"]], dtype=object)
            return out

        return classify

    def _original_ranking(self, case: Case) -> tuple[np.ndarray, np.ndarray]:
        """The original pipeline's top-(k+1) probabilities and ids (one more than the artifact
        returns, to see whether the k-th place is decided). Memoised by case name: choosing the
        validation images (validation_cases) and the reference stage need the same answers."""
        if case.name not in self.rankings:
            with single_thread():
                self.rankings[case.name] = self._rank(case.data, self.k + 1)
        return self.rankings[case.name]

    def _rank(self, data, k: int) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            probabilities = torch.softmax(self.model(self.transform(open_image(data)).unsqueeze(0)), dim=1)[0]
            values, ids = torch.topk(probabilities, min(k, probabilities.numel()))
        return values.numpy(), ids.numpy().astype(np.int64)

    @cached_property
    def rankings(self) -> dict:
        """The original's top-(k+1) (probabilities, ids) by case name (the memo of
        _original_ranking; a test may seed it)."""
        return {}

    def decided(self, case: Case) -> bool:
        """Whether the original's top-k ids are determined beyond the probability tolerance: every
        two neighbouring places among the top k+1 differ by more than twice the tolerance band (an
        artifact within tolerance on both could swap them otherwise, and an exact id comparison
        would be a coin flip)."""
        values, _ = self._original_ranking(case)
        tol = self.tolerances()["probabilities"]
        band = tol.atol + tol.rtol * values[:-1]
        return bool(np.all(values[:-1] - values[1:] > 2 * band))

    # --- the wrapper ------------------------------------------------------------------------------
    def build_wrapper(self, fmt: str = "onnx"):
        preprocess = ClassificationPreprocess(self.resize, self.crop, self.mean, self.std, pillow_pass_order=self.pass_order)
        classifier = TopKClassifier(preprocess, self.model, self.k).eval()
        if fmt == "onnx":
            return classifier  # labels are looked up behind it (onnx_postprocessor)
        # TorchScript: scripted, not traced: a trace would freeze the preprocessing's shape math.
        ctx = quiet_torchscript()
        try:
            return torch.jit.script(WithLabels(classifier, self.labels) if self.labels else classifier)
        finally:
            ctx.__exit__(None, None, None)

    def onnx_postprocessor(self, opset: int):
        return label_lookup_graph(self.labels, opset) if self.labels else None

    # --- specs ------------------------------------------------------------------------------------
    def output_specs(self):
        specs = (TensorSpec("probabilities", "float32", (self.k,), "softmax probabilities, most probable first"),
                 TensorSpec("class_ids", "int64", (self.k,), "class index of each probability"))
        if self.labels:
            specs += (TensorSpec("labels", "string", (self.k,), "class name of each class id (--labels)"),)
        return specs

    def model_output_specs(self, fmt: str = "onnx"):
        # ONNX: labels are looked up behind the captured module; TorchScript returns them itself.
        return self.output_specs()[:2] if fmt == "onnx" else self.output_specs()

    def preprocessing(self) -> dict:
        info = {
            "input": self.input_description(),
            "resize": f"shorter side to {self.resize}, bilinear with antialiasing, uint8 fixed point as PIL "
                      f"(Pillow {PIL.__version__}, pass order rule: {self.pass_order})",
            "center_crop": self.crop, "scale": "1/255", "mean": list(self.mean), "std": list(self.std),
            "layout": "NCHW float32", "head": f"softmax, top {self.k}",
        }
        if self.labels:
            info["labels"] = self.labels
        return info

    # --- data -------------------------------------------------------------------------------------
    def example_image(self) -> np.ndarray:
        return synthetic_image(300, 400, seed=1000)

    def validation_cases(self) -> list[Case]:
        """Seeded synthetic images, one per size in validation_sizes (36). Encoded: PNG at every
        other size (PNG decodes exactly, so the pixel cases already cover the rest) plus, at 3
        sizes each, every ENCODED_KINDS file (36). Each case takes the first seed whose original
        ranking is decided (see `decided`)."""
        sizes = self.validation_sizes
        if not self.encoded:
            return [self._decided_case("pixels", None, {}, i, h, w) for i, (h, w) in enumerate(sizes)]
        cases = [self._decided_case("png", "PNG", {}, i, h, w) for i, (h, w) in enumerate(sizes) if i % 2 == 0]
        for n, (kind, fmt, options) in enumerate(ENCODED_KINDS):
            for i in (3 + n, 17 + n, 27 + n):  # small, wide or tall, large: different per kind
                cases.append(self._decided_case(kind, fmt, options, i, *sizes[i % len(sizes)]))
        return cases

    def _decided_case(self, kind: str, fmt: str | None, options: dict, index: int, height: int, width: int) -> Case:
        for attempt in range(DECIDING_SEEDS):
            seed = index + 1000 * attempt
            image = synthetic_image(height, width, seed)
            case = Case(f"{kind}_{height}x{width}_seed{seed}", image if fmt is None else encode(image, fmt, **options))
            if self.decided(case):
                return case
        raise BuildError(f"no {kind} image of {height}x{width} among {DECIDING_SEEDS} seeds has a top-{self.k} "
                         f"ranking separated beyond the probability tolerance: this model's probabilities are too "
                         f"flat for exact class-id parity; try --top-k 1 or other weights")


class TorchvisionClassifier(ImageClassifierFamily):
    """ImageClassifierFamily over torchvision.models (get_model by name, weights=None: no downloads)."""

    library = "torchvision"
    arch_hint = "see torchvision.models.list_models(module=torchvision.models)"

    def architectures(self) -> Sequence[str]:
        return torchvision.models.list_models(module=torchvision.models)

    def create_model(self, arch: str, num_classes: int | None = None):
        if num_classes is None:
            return torchvision.models.get_model(arch, weights=None)
        # For a state_dict: torchvision's trained googlenet / inception_v3 carry no auxiliary
        # classifiers (aux_logits=False), and their slow init would be overwritten anyway.
        extra = {"aux_logits": False, "init_weights": False} if arch in ("googlenet", "inception_v3") else {}
        return torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **extra)


# --- helpers ------------------------------------------------------------------------------------------
def read_labels(path: Path) -> list[str]:
    """One class name per line (UTF-8; a final newline ends the last line, it adds no class)."""
    try:
        names = [line.rstrip("\r") for line in path.read_text(encoding="utf-8").split("\n")]
    except UnicodeDecodeError as exc:
        raise InputError(f"--labels {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if names and names[-1] == "":
        names.pop()  # the newline that ends the last line
    if not names:
        raise InputError(f"--labels {path} is empty; give one class name per line")
    return names


def classifier_layer(model):
    """(name, module) of the model's last Linear or Conv2d: its classifier layer."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))][-1]


def torchvision_transform(resize: int = 256, crop: int = 224, mean: Sequence[float] = IMAGENET_MEAN,
                          std: Sequence[float] = IMAGENET_STD):
    """torchvision's evaluation transforms: Resize(resize), CenterCrop(crop), ToTensor, Normalize."""
    return transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(crop), transforms.ToTensor(),
                               transforms.Normalize(mean=list(mean), std=list(std))])


@contextlib.contextmanager
def single_thread():
    """Run torch on one thread: the reference answers are then the same on every machine (a
    different thread count may change float sums), and an oversubscribed machine does not make
    OpenMP spin (measured on a loaded 2-core box: resnet18 1.9 s per image on 2 threads, 0.08 s on 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def calibrate_batchnorm(model, transform=None) -> None:
    """Make a seeded classifier behave like a trained one, deterministically:
    1. BatchNorm running statistics recomputed on CALIBRATION_IMAGES seeded synthetic images
       (exportable.weights.calibrating_batchnorm says why);
    2. the classifier layer scaled so that logits spread over classes with standard deviation
       LOGIT_STD on those images, as a trained model's do (untrained heads give ~1/1000 to every
       class, or exactly 1/1000 where torchvision zero-initialises them: every class tied).
    `transform`: the original's preprocessing (default torchvision's ImageNet evaluation one).
    Single-threaded, so the weights and their hash are the same on every machine."""
    transform = torchvision_transform() if transform is None else transform
    batch = torch.stack([transform(Image.fromarray(synthetic_image(180 + 11 * i, 240 - 7 * i, 5000 + i)))
                         for i in range(CALIBRATION_IMAGES)])
    with calibrating_batchnorm(model), torch.no_grad(), single_thread():
        model(batch)
    _spread_logits(model, batch)


def _spread_logits(model, batch) -> None:
    """Scale the classifier layer so the logits on `batch` have standard deviation LOGIT_STD over
    classes (a zero-initialised layer first gets small seeded random weights)."""
    head = classifier_layer(model)[1]
    with torch.no_grad(), single_thread():
        if float(head.weight.abs().max()) == 0.0:
            head.weight.copy_(torch.randn(head.weight.shape, generator=torch.Generator().manual_seed(SEED)) * 0.01)
        spread = float(model(batch).std(dim=1).mean())
        scale = LOGIT_STD / spread if spread > 0 else 1.0
        head.weight.mul_(scale)
        if head.bias is not None:
            head.bias.mul_(scale)
