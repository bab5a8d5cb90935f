"""exportable: single-file, end-to-end inference artifacts with proof of parity."""

from . import registry
from ._version import __version__

# The recipe contract (light: numpy only), for `from exportable import Recipe, TensorSpec, Case`.
from .recipe import EXACT, Case, Option, Recipe, Source, TensorSpec, Tolerance  # noqa: E402
from .registry import register  # noqa: E402

# The built-in recipes (the repo's recipes/ folder, installed as exportable.recipes) are one
# source the registry is given, not one it knows: it imports nothing above itself. Their modules
# are imported when the registry is first asked, not here.
registry.add_source("exportable.recipes", origin="built-in")

__all__ = ["__version__", "EXACT", "Case", "Option", "Recipe", "Source", "TensorSpec", "Tolerance", "register",
           "export_recipe", "verify_artifact", "load_artifact"]


def __getattr__(name):
    # The API imports torch/onnx; keep `import exportable` (and `--help`) light.
    if name in ("export_recipe", "verify_artifact", "load_artifact"):
        from . import api  # noqa: PLC0415  # on first use: at the top, every `--help` would load torch

        return getattr(api, name)
    raise AttributeError(name)
