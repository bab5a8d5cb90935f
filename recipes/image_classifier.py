"""image_classifier: a torchvision classifier from pixels (or PNG/JPEG bytes) to top-k labels.

Original (what a user runs today): PIL image -> transforms.Resize(256), CenterCrop(224),
ToTensor(), Normalize(ImageNet mean, std) -> model -> softmax -> topk(k). With `--inputs encoded`
the image comes from `Image.open(BytesIO(data)).convert("RGB")`.

Artifact: `image` uint8 [height, width, 3] RGB of any size (or, ONNX only, `image_bytes` uint8 [n]:
a whole PNG or JPEG file) -> `probabilities` [k] float32, `class_ids` [k] int64 and, with
`--labels`, `labels` [k] string. Preprocessing: exportable.blocks.vision (PIL's uint8 resize
reproduced exactly: the preprocessed tensor equals torchvision's bit for bit). Decoding:
exportable.blocks.image_io (onnxruntime-extensions' DecodeImage behind checks, because the raw op
ends the process on bad JPEG bytes). Measurements: docs/image-preprocessing.md. Everything but the
tolerances comes from exportable.families.image_classifier.TorchvisionClassifier (docs/writing-a-recipe.md, Families).

Default weights: torchvision's init under torch.manual_seed(0), no hub downloads, made to behave
like a trained classifier (calibrate_batchnorm): BatchNorm statistics from 8 seeded synthetic
images, and the last layer scaled so logits spread with std 2 over classes. Raw, the untrained
resnet18 named one top-1 class for all 36 validation images, and mobilenet_v3 / efficientnet gave
exactly 1/1000 to every class (all tied). `--weights FILE` loads a state_dict (.pt/.pth via
torch.load(weights_only=True), or .safetensors); its classifier layer gives the class count.

Parity: probabilities within tolerances() (the reasons are there), class ids exact. Exact ids need
a decided ranking: a validation image is kept only if the original's top-(k+1) probabilities are
pairwise further apart than twice the tolerance band (`decided`); otherwise the next seed of that
size is drawn. These are made-up test images, so we make ones whose answer is well defined; the
default set replaced 5 of 36 (pixels) and 18 of 36 (encoded, whose JPEG tolerance is wider).

JPEG with subsampled chroma (4:2:0, PIL's default and most cameras') is not in the parity cases:
libjpeg 9 in DecodeImage and libjpeg-turbo in PIL upsample chroma differently (pixels up to ~100
apart at colour edges), which moved the seeded resnet18's probabilities by up to 6.5e-2 and
changed its top-5 on 21-23 of 34 images. tests/test_image_classifier.py keeps it as a strict xfail.
"""

from __future__ import annotations

from exportable.families.image_classifier import (
    SIZES,
    TorchvisionClassifier,
    calibrate_batchnorm,
    classifier_options,
)
from exportable.images import encode, synthetic_image
from exportable.recipe import EXACT, Case, Tolerance
from exportable.registry import register

# Used from here by tests and by the subprocess snippets they run (`from exportable.recipes.image_classifier import ...`).
__all__ = ["ImageClassifier", "Case", "SIZES", "calibrate_batchnorm", "encode", "synthetic_image"]


@register
class ImageClassifier(TorchvisionClassifier):
    name = "image_classifier"
    summary = "torchvision classifier (default resnet18, seeded): RGB pixels or PNG/JPEG bytes -> top-k classes"
    original_pipeline = ("PIL image -> torchvision Resize(256), CenterCrop(224), ToTensor, Normalize(ImageNet) "
                         "-> model -> softmax -> topk")
    options = classifier_options("resnet18", "torchvision classification model (resnet18, mobilenet_v3_small, "
                                             "efficientnet_b0, ...)")

    def tolerances(self):
        if self.encoded:
            # JPEG: the in-graph decoder (libjpeg 9) and PIL's (libjpeg-turbo) differ by 1 in a few
            # pixels of a 4:4:4 JPEG. Over 204 such files that moved the seeded resnet18's
            # probabilities by up to 7.7e-3 relative (1.3e-3 absolute; 99% under 4e-3). PNG decodes
            # exactly (the tests hold PNG cases to the pixel tolerance). 4:2:0: see the module doc.
            probabilities = Tolerance(atol=1e-5, rtol=2e-2)
        else:
            # The preprocessed tensor is bit-identical to torchvision's; what remains is fp32 kernel
            # order and approximations (ONNX Runtime vs torch), measured up to 2.5e-5 relative for
            # resnet18, 4.2e-5 for mobilenet_v3_small, 5.0e-4 for efficientnet_b0 (its SiLU/sigmoid).
            probabilities = Tolerance(atol=1e-6, rtol=2e-3)
        return {"probabilities": probabilities, "class_ids": EXACT, "labels": EXACT}
