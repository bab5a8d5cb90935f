"""exportable: single-file, end-to-end inference artifacts with proof of parity."""

from ._version import __version__

# The recipe contract (light: numpy only), for `from exportable import Recipe, TensorSpec, Case`.
from .recipe import EXACT, Case, Option, Recipe, Source, TensorSpec, Tolerance  # noqa: E402
from .registry import register  # noqa: E402

__all__ = ["__version__", "EXACT", "Case", "Option", "Recipe", "Source", "TensorSpec", "Tolerance", "register",
           "export_recipe", "verify_artifact", "load_artifact"]


def __getattr__(name):
    # The API imports torch/onnx; keep `import exportable` (and `--help`) light.
    if name in ("export_recipe", "verify_artifact", "load_artifact"):
        from . import api

        return getattr(api, name)
    raise AttributeError(name)
