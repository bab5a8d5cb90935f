"""Recipe registry: `@register` on a Recipe subclass; `get(name)` with close-match hints.

Recipes live one per file in the top-level `recipes/` package and are imported on first use,
so adding a recipe is adding a file.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil

from .errors import RecipeNotFound

_RECIPES: dict[str, type] = {}
_loaded = False


def register(cls):
    name = getattr(cls, "name", None)
    if not name:
        raise TypeError(f"{cls.__qualname__} must set a class attribute `name` to be registered")
    if name in _RECIPES and _RECIPES[name] is not cls:
        # Optimum silently keeps one of two duplicates; a silent pick hides a real mistake.
        raise ValueError(
            f"recipe name {name!r} is registered twice ({_RECIPES[name].__module__} and "
            f"{cls.__module__}); rename one of them"
        )
    _RECIPES[name] = cls
    return cls


def _load_recipes() -> None:
    global _loaded
    if _loaded:
        return
    import recipes

    for info in pkgutil.iter_modules(recipes.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"recipes.{info.name}")
    _loaded = True


def names() -> list[str]:
    _load_recipes()
    return sorted(_RECIPES)


def get(name: str) -> type:
    _load_recipes()
    if name in _RECIPES:
        return _RECIPES[name]
    close = difflib.get_close_matches(name, _RECIPES, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise RecipeNotFound(
        f"unknown recipe {name!r}; {hint}available: {', '.join(sorted(_RECIPES))} "
        "(see `python -m exportable list`)"
    )
