"""TensorFlow text encoders -> one ONNX file, tokenizer included (issue 8).

    from exportable.tf import build_default_savedmodel, convert_savedmodel, run_savedmodel
    build_default_savedmodel(out_dir, vocab_path, seed=0, max_length=256)   # -> SignatureInfo
    model = convert_savedmodel(out_dir, opset=17)                           # -> onnx.ModelProto
    run_savedmodel(out_dir, ["some text"])                                  # TF original, for parity

Needs the tf extra (`pip install -e .[tf]`); importing this package does not import TensorFlow
(no module of it does at load), calling into it does (and raises MissingDependency with the
install line when it is absent).
"""

from .convert import convert_savedmodel
from .model import SignatureInfo, build_default_savedmodel, run_savedmodel, signature_info

__all__ = ["SignatureInfo", "build_default_savedmodel", "convert_savedmodel", "run_savedmodel", "signature_info"]
