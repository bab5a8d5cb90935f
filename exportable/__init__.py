"""exportable: single-file, end-to-end inference artifacts with proof of parity."""

__version__ = "0.1.0"


def __getattr__(name):
    # The API imports torch/onnx; keep `import exportable` (and `--help`) light.
    if name in ("export_recipe", "verify_artifact", "load_artifact"):
        from . import api

        return getattr(api, name)
    raise AttributeError(name)
