"""TensorFlow text encoders -> one ONNX file, tokenizer included (issue 8).

    from exportable.tf import build_default_savedmodel, convert_savedmodel, run_savedmodel
    build_default_savedmodel(out_dir, vocab_path, seed=0, max_length=256)   # -> SignatureInfo
    model = convert_savedmodel(out_dir, opset=17)                           # -> onnx.ModelProto
    run_savedmodel(out_dir, ["some text"])                                  # TF original, for parity

Needs the tf extra (`pip install -e .[tf]`); importing this package does not import TensorFlow,
calling into it does (and raises MissingDependency with the install line when it is absent).
"""

_EXPORTS = {
    "build_default_savedmodel": "model", "run_savedmodel": "model", "signature_info": "model",
    "SignatureInfo": "model", "convert_savedmodel": "convert",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'exportable.tf' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
