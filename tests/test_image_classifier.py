"""image_classifier: preprocessing equal to torchvision's bit for bit, parity from pixels, PNG/JPEG
bytes and TorchScript, weights and labels files, and bad input (a one-line InputError, never a
crashed runtime). The exports are shared with tests/test_recipes.py (session `exported` fixture)."""

import importlib
import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_cli
from exportable import api, runtime
from exportable.blocks import image_io, vision
from exportable.errors import InputError

ic = importlib.import_module("exportable.recipes.image_classifier")
PIXEL_FORMATS = "onnx,torchscript"


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """2 shared cores: OpenMP threads spinning against other processes made torch 20x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pixels(exported):
    return exported("image_classifier", PIXEL_FORMATS)  # the same export as test_recipes' parity case


@pytest.fixture(scope="module")
def imagenet_labels(tmp_path_factory):
    path = tmp_path_factory.mktemp("labels") / "imagenet.txt"
    path.write_text("".join(f"class {i:03d}\n" for i in range(1000)))
    return str(path)


@pytest.fixture(scope="module")
def encoded(exported, imagenet_labels):
    """Encoded inputs, and labels looked up in the ONNX graph (one export covers both)."""
    return exported("image_classifier", "onnx", inputs="encoded", labels=imagenet_labels)


def _report(exported, *key):
    return next(result.report for k, (_, result) in exported.results.items() if k[:2] == key[:2] and
                dict(k[2]) == key[2])


def _torchvision(image: np.ndarray) -> np.ndarray:
    from PIL import Image
    from torchvision import transforms

    transform = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                                    transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    return transform(Image.fromarray(image)).unsqueeze(0).numpy()


# --- preprocessing ----------------------------------------------------------------------------------
SHAPES = [(1, 1), (7, 9), (2, 999), (999, 2), (224, 224), (255, 257), (256, 300), (601, 401), (1000, 257),
          (333, 777), (640, 480)]


def test_preprocessing_equals_torchvision_bit_for_bit(tmp_path):
    """Eager, TorchScript and the ONNX graph give torchvision's float32 tensor exactly (max abs
    diff 0.0), including a shape where Pillow resizes vertically first (1000x257)."""
    from exportable.exporters import onnx as onnx_exporter
    from exportable.recipe import TensorSpec

    module = vision.ClassificationPreprocess().eval()
    quiet = runtime.quiet_torchscript()
    try:
        scripted = torch.jit.script(module)
    finally:
        quiet.__exit__(None, None, None)
    spec = TensorSpec("image", "uint8", ("height", "width", 3))
    capture = onnx_exporter.export(module, {"image": ic.synthetic_image(300, 400, 1)}, [spec],
                                   [TensorSpec("x", "float32", (1, 3, 224, 224))], tmp_path / "pre.onnx")
    import onnxruntime as ort

    session = ort.InferenceSession(capture.model.SerializeToString())
    for i, (h, w) in enumerate(SHAPES):
        image = ic.synthetic_image(h, w, seed=i)
        expected = _torchvision(image)
        for name, got in (("eager", module(torch.from_numpy(image)).numpy()),
                          ("torchscript", scripted(torch.from_numpy(image)).numpy()),
                          ("onnx", session.run(None, {"image": image})[0])):
            assert got.dtype == np.float32 and np.array_equal(got, expected), \
                (name, (h, w), float(np.abs(got - expected).max()))


def test_both_pillow_pass_orders_are_reproduced_and_validated():
    assert vision.installed_pillow_pass_order() is True  # Pillow 13 picks the order; older Pillow does not
    orders = set()
    for h, w in ic.SIZES:
        out = vision.shorter_side_size(torch.tensor([h, w]), 256)
        shrink_h, shrink_w = h - int(out[0]), w - int(out[1])
        orders.add(shrink_h > 0 and shrink_h > 2 * shrink_w)
    assert orders == {True, False}, "the validation sizes must exercise both resize pass orders"


# --- parity ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_pixel_parity(exported, pixels, fmt):
    report = _report(exported, "image_classifier", PIXEL_FORMATS, {})
    results = report.parity[fmt]
    assert len(results) >= 30 and all(r.passed for r in results), [r.failures for r in results if not r.passed]
    names = " ".join(r.case for r in results)
    for size in ("_1x1_", "_7x9_", "_2x999_", "_999x2_", "_255x257_", "_900x1200_"):
        assert size in names
    worst = max(m.max_rel for r in results for m in r.metrics if m.output == "probabilities")
    assert worst <= 1e-4  # measured 2.5e-5 (ONNX: fp32 kernel order), 0 (TorchScript: the same kernels)
    assert sum(m.mismatched for r in results for m in r.metrics if m.output == "class_ids") == 0
    assert api.verify_artifact(pixels, [fmt])[fmt]


def test_encoded_parity(exported, encoded, imagenet_labels):
    report = _report(exported, "image_classifier", "onnx", {"inputs": "encoded", "labels": imagenet_labels})
    results = report.parity["onnx"]
    assert len(results) >= 30 and all(r.passed for r in results), [r.failures for r in results if not r.passed]
    kinds = {r.case.split("_")[0] for r in results} | {"_".join(r.case.split("_")[:2]) for r in results}
    assert {"png", "jpeg444", "jpeg444_progressive", "jpeg_gray", "png_rgba", "png_gray", "png_palette"} <= kinds
    for r in results:  # PNG decodes exactly: held to what pixels measure, not to the JPEG tolerance
        if r.case.startswith("png"):
            prob = next(m for m in r.metrics if m.output == "probabilities")
            assert prob.max_rel <= 1e-4, r.case
    model = runtime.load(encoded / "model.onnx")
    assert json.loads(model.metadata["exportable.inputs"])[0]["name"] == "image_bytes"
    assert model.custom_op_domains == ["com.microsoft.extensions"]
    answer = model.run({"image_bytes": np.frombuffer(ic.encode(ic.synthetic_image(90, 70, 2), "PNG"), np.uint8)})
    assert answer["labels"].tolist() == [f"class {i:03d}" for i in answer["class_ids"]]
    assert len(json.loads(model.metadata["exportable.preprocessing"])["labels"]) == 1000


def test_class_ids_are_compared_only_where_the_ranking_is_decided():
    """A validation image is kept only if the original's top-(k+1) probabilities are pairwise
    further apart than twice the tolerance band: otherwise an artifact within tolerance could
    swap two ids, and an exact id check would be a coin flip."""
    recipe = ic.ImageClassifier()
    tol = recipe.tolerances()["probabilities"]
    recipe.rankings["tie"] = (np.array([0.30, 0.30 - 1.5 * tol.atol, 0.1, 0.05, 0.02, 0.01], np.float32), None)
    recipe.rankings["clear"] = (np.array([0.30, 0.2, 0.1, 0.05, 0.02, 0.01], np.float32), None)
    recipe.rankings["boundary"] = (np.array([0.30, 0.2, 0.1, 0.05, 0.0101, 0.0101], np.float32), None)
    assert not recipe.decided(ic.Case("tie", None))
    assert recipe.decided(ic.Case("clear", None))
    assert not recipe.decided(ic.Case("boundary", None))  # the k-th place against the (k+1)-th


def test_torchscript_is_refused_for_encoded_inputs(tmp_path):
    with pytest.raises(InputError, match="--inputs encoded"):
        api.export_recipe("image_classifier", out=tmp_path / "a", formats="torchscript", inputs="encoded")
    result = run_cli("recipe", "image_classifier", "--inputs", "encoded", "--format", "onnx,torchscript",
                     "--out", tmp_path / "b")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr


# --- weights and labels ----------------------------------------------------------------------------------
NAMES = ["cat", "dog", "bird", "fish", "fox", "owl", "elk", "bee", "ant", "yak"]


@pytest.fixture(scope="module")
def small_weights(tmp_path_factory):
    """A 10-class mobilenet_v3_small state_dict saved both ways, with BatchNorm calibrated like
    the recipe's default (an uncalibrated one gives every class the same probability)."""
    import torchvision
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(3)
    model = torchvision.models.mobilenet_v3_small(num_classes=10)
    ic.calibrate_batchnorm(model)
    torch.save(model.state_dict(), folder / "small.pt")
    save_file(model.state_dict(), str(folder / "small.safetensors"))
    (folder / "labels.txt").write_text("\n".join(NAMES) + "\n")
    return folder, model.state_dict()


def test_safetensors_weights_and_labels_in_torchscript(exported, small_weights):
    """Another architecture from a .safetensors file, 10 classes, labels returned by the scripted
    module. (ONNX labels: test_encoded_parity; ONNX with --weights: the same capture as the default.)"""
    folder, _ = small_weights
    options = dict(arch="mobilenet_v3_small", weights=str(folder / "small.safetensors"),
                   labels=str(folder / "labels.txt"), top_k=3)
    out = exported("image_classifier", "torchscript", **options)
    report = _report(exported, "image_classifier", "torchscript", options)
    assert len(report.parity["torchscript"]) >= 30 and all(r.passed for r in report.parity["torchscript"])
    answer = runtime.load(out / "model.pt").run({"image": ic.synthetic_image(50, 70, 4)})
    assert answer["labels"].tolist() == [NAMES[i] for i in answer["class_ids"]]
    assert answer["probabilities"].shape == (3,)
    from exportable.hashing import sha256_files

    assert report.source["sha256"] == sha256_files([folder / "small.safetensors"])


def test_pt_weights_load_with_weights_only(small_weights):
    folder, state = small_weights
    recipe = ic.ImageClassifier(arch="mobilenet_v3_small", weights=str(folder / "small.pt"))
    loaded = recipe.model.state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    assert recipe.num_classes_of(recipe.model) == 10


@pytest.mark.parametrize("options,message", [
    (dict(arch="resnet181"), "did you mean resnet18"),
    (dict(weights="/nonexistent/w.pt"), "no such file"),
    (dict(labels="/nonexistent/labels.txt"), "no such file"),
    (dict(top_k=0), "at least 1"),
    (dict(arch="mobilenet_v3_small", weights="WEIGHTS", labels="ELEVEN"), "has 11 names but the model has 10"),
    (dict(arch="mobilenet_v3_small", weights="WEIGHTS", top_k=11), "more than the model's 10 classes"),
    (dict(arch="resnet18", weights="WEIGHTS"), "not a torchvision resnet18 state_dict"),
    (dict(weights="NOT_A_STATE_DICT"), "not a state_dict"),
    (dict(weights="WRONG_SUFFIX"), "expected a .pt, .pth or .safetensors"),
])
def test_option_errors_are_one_line(small_weights, tmp_path, options, message):
    folder, _ = small_weights
    (tmp_path / "eleven.txt").write_text("\n".join(NAMES + ["extra"]))
    torch.save([1, 2, 3], tmp_path / "list.pt")
    (tmp_path / "w.bin").write_bytes(b"x")
    paths = {"WEIGHTS": folder / "small.safetensors", "ELEVEN": tmp_path / "eleven.txt",
             "NOT_A_STATE_DICT": tmp_path / "list.pt", "WRONG_SUFFIX": tmp_path / "w.bin"}
    options = {k: str(paths.get(v, v)) if isinstance(v, str) else v for k, v in options.items()}
    with pytest.raises(InputError, match=message) as caught:
        _ = ic.ImageClassifier(**options).model
    assert "\n" not in str(caught.value)


# --- bad input at run time ---------------------------------------------------------------------------------
BAD_PIXELS = [
    (np.zeros((8, 8, 4), np.uint8), "dimension 2 must be 3"),
    (np.zeros((8, 8, 1), np.uint8), "dimension 2 must be 3"),
    (np.zeros((8, 8), np.uint8), "must have rank 3"),
    (np.zeros((8, 8, 3), np.float32), "must be uint8, got float32"),
    (np.zeros((0, 8, 3), np.uint8), "image is empty"),
    (np.zeros((8, 0, 3), np.uint8), "image is empty"),
]


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_bad_pixels_give_one_line_errors(pixels, fmt):
    model = runtime.load(pixels / api.MODEL_FILES[fmt])
    for image, message in BAD_PIXELS:
        with pytest.raises(InputError, match=message) as caught:
            model.run({"image": image})
        assert "\n" not in str(caught.value), str(caught.value)


def _jpeg(seed: int = 5, **options) -> bytes:
    return ic.encode(ic.synthetic_image(60, 80, seed), "JPEG", **options)


BAD_BYTES = [
    (b"", "empty or too short"),
    (b"GIF89a" + bytes(64), "not a PNG or JPEG"),
    (b"hello, I am text and not an image at all", "not a PNG or JPEG"),
    (image_io.RED_PIXEL_PNG[:8] + bytes(40), "corrupt PNG"),
    (image_io.RED_PIXEL_PNG[:-20], "could not be decoded"),
    (b"\xff\xd8\xff\xe0" + bytes(100), "truncated or corrupt JPEG"),
    (_jpeg()[:-300], "truncated or corrupt JPEG"),
    (_jpeg().replace(b"\xff\xc0\x00\x11\x08", b"\xff\xc0\x00\x11\x0c", 1), "JPEG kind the in-graph decoder"),
    (_jpeg().replace(b"\xff\xc0", b"\xff\xc3", 1), "JPEG kind the in-graph decoder"),
    (ic.encode(np.zeros((20, 20, 3), np.uint8), "JPEG-CMYK"), "JPEG kind the in-graph decoder"),
    (_jpeg().replace(b"\xff\xda\x00\x0c\x03\x01", b"\xff\xda\x00\x0c\x03\x09", 1), "corrupt JPEG"),
]


def test_bad_bytes_give_one_line_errors(encoded):
    model = runtime.load(encoded / "model.onnx")
    for data, message in BAD_BYTES:
        with pytest.raises(InputError, match=message) as caught:
            model.run({"image_bytes": np.frombuffer(data, np.uint8)})
        assert "\n" not in str(caught.value), str(caught.value)


GARBAGE = """
import io, json, random, sys
import numpy as np, onnxruntime as ort
from onnxruntime_extensions import get_library_path
sys.path.insert(0, {root!r})
from {module} import encode, synthetic_image
so = ort.SessionOptions(); so.register_custom_ops_library(get_library_path()); so.log_severity_level = 4
so.intra_op_num_threads = 1
session = ort.InferenceSession({model!r}, so)
rng = random.Random(0)
sources = [encode(synthetic_image(40 + 7 * i, 50 - 3 * i, i), kind[0], **kind[1]) for i, kind in enumerate(
    [("JPEG", {{}}), ("JPEG", {{"progressive": True}}), ("JPEG", {{"subsampling": 0, "restart_marker_blocks": 1}}),
     ("JPEG-L", {{}}), ("PNG", {{}})])]
inputs = [b"", b"\\xff\\xd8", b"\\xff\\xd8\\xff\\xd9", bytes(rng.randrange(256) for _ in range(3000))]
for n in range(100):
    data = bytearray(rng.choice(sources))
    kind = n % 5
    if kind == 0:
        data = data[:rng.randrange(len(data))]
    elif kind in (1, 2):
        for _ in range(rng.randrange(1, 6)):
            data[rng.randrange(min(len(data), 600) if kind == 1 else len(data))] = rng.randrange(256)
    elif kind == 3:
        at = rng.randrange(len(data)); data = data[:at] + data[at + rng.randrange(1, 40):]
    else:
        at = rng.randrange(len(data)); data = data[:at] + bytes(rng.randrange(256) for _ in range(20)) + data[at:]
    inputs.append(bytes(data))
outcomes = {{"decoded": 0, "input error": 0, "other error": []}}
for data in inputs:
    try:
        session.run(None, {{"image_bytes": np.frombuffer(data, np.uint8)}})
        outcomes["decoded"] += 1
    except Exception as exc:
        if "input error: " in str(exc):
            outcomes["input error"] += 1
        else:
            outcomes["other error"].append(str(exc)[:200])
print(json.dumps(outcomes))
"""


def test_garbage_bytes_never_crash_onnx_runtime(encoded):
    """Plain ONNX Runtime (no exportable runner), 104 damaged files in one process: every run ends
    in a result or an ordinary exception. Without the graph's checks, DecodeImage exits the
    process (next test) or loops forever on a truncated JPEG."""
    root = str(Path(__file__).resolve().parents[1])
    code = textwrap.dedent(GARBAGE.format(root=root, model=str(encoded / "model.onnx"), module=ic.__name__))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    outcomes = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcomes["decoded"] + outcomes["input error"] == 104 and not outcomes["other error"], outcomes
    assert outcomes["input error"] > 40 and outcomes["decoded"] > 10, outcomes


def test_raw_decodeimage_ends_the_process_on_bytes_that_are_not_an_image():
    """Why the checks exist: onnxruntime-extensions 0.15.2's DecodeImage, fed text, calls exit(1)
    (libjpeg's default error handler). If this starts failing, upstream fixed it: update
    blocks/image_io.py's doc and docs/image-preprocessing.md."""
    code = textwrap.dedent("""
        import numpy as np, onnxruntime as ort
        from onnx import TensorProto, helper
        from onnxruntime_extensions import get_library_path
        node = helper.make_node("DecodeImage", ["b"], ["i"], domain="com.microsoft.extensions")
        graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("b", TensorProto.UINT8, ["n"])],
                                  [helper.make_tensor_value_info("i", TensorProto.UINT8, None)])
        ops = [helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft.extensions", 1)]
        model = helper.make_model(graph, opset_imports=ops, ir_version=10)
        so = ort.SessionOptions(); so.register_custom_ops_library(get_library_path())
        session = ort.InferenceSession(model.SerializeToString(), so)
        try:
            session.run(None, {"b": np.frombuffer(b"hello world, not an image", np.uint8)})
        except Exception:
            print("raised")
        print("survived")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "survived" not in done.stdout, (done.returncode, done.stdout, done.stderr[-500:])
    assert "Not a JPEG file" in done.stderr


# --- decoding against PIL ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def decoder():
    import onnxruntime as ort

    options = runtime.session_options(["com.microsoft.extensions"], threads=1)
    session = ort.InferenceSession(image_io.decode_image_graph(18).SerializeToString(), options)
    return lambda data: session.run(None, {"image_bytes": np.frombuffer(data, np.uint8)})[0]


def _pil(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)


@pytest.mark.parametrize("fmt,options,max_diff", [
    ("PNG", {}, 0), ("PNG-RGBA", {}, 0), ("PNG-L", {}, 0), ("PNG-P", {}, 0),
    ("JPEG", dict(subsampling=0, quality=90), 1), ("JPEG", dict(subsampling=0, progressive=True), 1),
    ("JPEG-L", {}, 1),
])
def test_decoding_matches_pil(decoder, fmt, options, max_diff):
    for i, (h, w) in enumerate([(1, 1), (9, 7), (60, 80), (257, 129)]):
        data = ic.encode(ic.synthetic_image(h, w, i), fmt, **options)
        assert np.abs(decoder(data).astype(int) - _pil(data)).max() <= max_diff, (fmt, options, (h, w))


@pytest.mark.xfail(strict=True, reason="libjpeg 9 (DecodeImage) upsamples subsampled chroma with a scaled "
                                       "IDCT, libjpeg-turbo (PIL) with a triangle filter: up to ~100 apart at "
                                       "colour edges; see docs/image-preprocessing.md")
def test_chroma_subsampled_jpeg_matches_pil_within_one(decoder):
    data = ic.encode(ic.synthetic_image(60, 80, 3), "JPEG", quality=90)  # PIL's default: 4:2:0
    assert np.abs(decoder(data).astype(int) - _pil(data)).max() <= 1


NATIVE_013 = Path(__file__).parent / "consumers" / "native" / "linux-x64" / "libortextensions.so"


def test_decoder_reads_rgb_with_the_java_go_extensions_build():
    """onnxruntime-extensions 0.13.0 (the Java/Go consumers' build) ignores color_space="rgb"
    and returns BGR; the graph notices (it decodes a red pixel the same way) and flips."""
    if not NATIVE_013.is_file():
        pytest.skip(f"{NATIVE_013} not fetched (tests/consumers/fetch_native.sh)")
    code = textwrap.dedent(f"""
        import sys, numpy as np, onnxruntime as ort
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
        from exportable.blocks.image_io import decode_image_graph
        from {ic.__name__} import encode, synthetic_image
        so = ort.SessionOptions(); so.register_custom_ops_library({str(NATIVE_013)!r})
        session = ort.InferenceSession(decode_image_graph(18).SerializeToString(), so)
        image = synthetic_image(20, 30, 1)
        got = session.run(None, {{"image_bytes": np.frombuffer(encode(image, "PNG"), np.uint8)}})[0]
        print(bool(np.array_equal(got, image)))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip().endswith("True"), done.stderr[-1000:]
