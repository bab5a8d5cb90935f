"""Where recipes come from, and `resolve(spec)`: a name, a recipe file, or a module.

Three sources, each entry recording where it came from (`exportable list` shows it):
- recipe packages given to `add_source(package)`: every module in them not named `_*` is
  imported on first use and registers its recipes with `@register`. The registry knows no
  package of its own: `exportable/__init__.py` adds the built-in one, `exportable.recipes` (the
  repo's `recipes/` folder, installed under the exportable namespace), with origin "built-in";
- plugins: installed distributions that declare the entry-point group `exportable.recipes`
  (`my_model = my_pkg.recipes:MyRecipe`, or a module whose Recipe subclasses all count);
- a file or module named on the command line (`./my_recipe.py[:Class]`, `pkg.mod:Class`),
  loaded for that run only (resolve()).

A plugin that fails to load is listed as broken with its reason and breaks nothing else. Two
recipes claiming one name are both refused, naming both origins: a silent pick (Optimum keeps
one of two duplicates) would export a model the user did not ask for.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import inspect
import pkgutil
import sys
import traceback
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from .errors import InputError, RecipeNotFound
from .recipe import Recipe

ENTRY_POINT_GROUP = "exportable.recipes"


@dataclass
class Entry:
    """One recipe name and where it came from; `problem` says why it cannot be used."""

    name: str
    origin: str
    cls: type | None = None
    problem: str | None = None


class RecipeClash(ValueError):
    """Two different classes registered under one name."""


_RECIPES: dict[str, Entry] = {}  # usable recipes
_REFUSED: dict[str, Entry] = {}  # broken plugins and clashing names: listed, never exported
_SOURCES: dict[str, str] = {}  # recipe package -> origin, in the order add_source() was called
_loading_origin: str | None = None  # set while a source package / a plugin is imported
_loaded = False


def add_source(package: str, origin: str = "built-in") -> None:
    """Make every module of `package` (a dotted name; modules named `_*` are skipped) a recipe
    source, labelled `origin` in `exportable list`. Nothing is imported until the registry is
    first asked; a source added after that is imported at once."""
    if package in _SOURCES:
        return
    _SOURCES[package] = origin
    if _loaded:
        _load_package(package, origin)


def sources() -> dict[str, str]:
    """The recipe packages given to add_source(), each with its origin."""
    return dict(_SOURCES)


def origin_of(cls: type) -> str:
    return _loading_origin or f"module {cls.__module__}"


def _same_class(a: type, b: type) -> bool:
    """One class imported twice (the same file as `recipes.x` and `exportable.recipes.x`, or a
    recipe file loaded again) is not a clash."""
    if a is b:
        return True
    try:
        return a.__qualname__ == b.__qualname__ and inspect.getfile(a) == inspect.getfile(b)
    except TypeError:
        return False


def register(cls):
    """Class decorator: make `cls` exportable by its `name`."""
    name = getattr(cls, "name", None)
    if not name:
        raise TypeError(f"{cls.__qualname__} must set a class attribute `name` to be registered")
    if name in _REFUSED:
        return cls
    existing = _RECIPES.get(name)
    if existing is not None and not _same_class(existing.cls, cls):
        raise RecipeClash(f"recipe name {name!r} is registered twice: {existing.origin} ({existing.cls.__module__}) "
                          f"and {origin_of(cls)} ({cls.__module__}); rename one of them")
    if existing is None:
        _RECIPES[name] = Entry(name, origin_of(cls), cls)
    return cls


def unregister(name: str) -> None:
    """Forget the usable recipe called `name`, if any (a test's temporary recipe)."""
    _RECIPES.pop(name, None)


def recipe_classes(module) -> list[type]:
    """The Recipe subclasses with a `name` defined in `module` (not imported into it)."""
    return [obj for obj in vars(module).values()
            if inspect.isclass(obj) and issubclass(obj, Recipe) and obj is not Recipe
            and obj.__module__ == module.__name__ and getattr(obj, "name", None)]


# --- source packages and plugins -----------------------------------------------------------------
def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for package, package_origin in list(_SOURCES.items()):
        _load_package(package, package_origin)
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        _load_plugin(ep)


def _load_package(name: str, package_origin: str) -> None:
    global _loading_origin
    package = importlib.import_module(name)
    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            _loading_origin = package_origin
            try:
                importlib.import_module(f"{name}.{info.name}")
            finally:
                _loading_origin = None


def _plugin_origin(ep) -> str:
    dist = getattr(ep, "dist", None)
    where = f"{dist.name} {dist.version}" if dist is not None else "unknown distribution"
    return f"plugin {where} (entry point {ep.name} = {ep.value})"


def _load_plugin(ep) -> None:
    global _loading_origin
    origin = _plugin_origin(ep)
    _loading_origin = origin
    try:
        obj = ep.load()
    except RecipeClash as exc:
        _refuse(ep.name, origin, str(exc))
        return
    except Exception as exc:  # any import failure of someone else's package: listed, not raised
        _REFUSED[ep.name] = Entry(ep.name, origin, problem=f"broken: {_one_line(exc)}")
        return
    finally:
        _loading_origin = None
    classes = [obj] if inspect.isclass(obj) else recipe_classes(obj) if inspect.ismodule(obj) else []
    if not classes or not all(inspect.isclass(c) and issubclass(c, Recipe) and getattr(c, "name", None)
                              for c in classes):
        _REFUSED[ep.name] = Entry(ep.name, origin, problem=f"broken: {ep.value} is not a Recipe subclass with a "
                                                          "`name` (or a module defining one)")
        return
    for cls in classes:
        existing = _RECIPES.get(cls.name)
        if existing is not None and not _same_class(existing.cls, cls):
            _refuse(cls.name, origin, f"name clashes with {existing.origin}")
        elif cls.name in _REFUSED:
            continue
        else:
            _RECIPES[cls.name] = Entry(cls.name, origin, cls)  # a @register inside it recorded a module origin


def _refuse(name: str, origin: str, why: str) -> None:
    """Both claimants of a name are refused: `get(name)` says who they are."""
    existing = _RECIPES.pop(name, None)
    both = f"{existing.origin} and {origin}" if existing is not None else origin
    _REFUSED[name] = Entry(name, both, problem=f"refused: recipe name {name!r} is claimed by {both}; "
                                               "uninstall one of them or rename its recipe")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def names() -> list[str]:
    """The usable recipe names (built-in and plugins)."""
    _load()
    return sorted(_RECIPES)


def entries() -> list[Entry]:
    """Every recipe name with its origin, the broken and refused ones included."""
    _load()
    return sorted([*_RECIPES.values(), *_REFUSED.values()], key=lambda e: e.name)


def origin(name: str) -> str:
    _load()
    return _RECIPES[name].origin if name in _RECIPES else ""


def get(name: str) -> type:
    _load()
    if name in _RECIPES:
        return _RECIPES[name].cls
    if name in _REFUSED:
        entry = _REFUSED[name]
        raise InputError(f"recipe {name!r} ({entry.origin}) cannot be used: {entry.problem}")
    close = difflib.get_close_matches(name, _RECIPES, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise RecipeNotFound(
        f"unknown recipe {name!r}; {hint}available: {', '.join(sorted(_RECIPES))} "
        "(see `python -m exportable list`; a recipe file is passed as ./file.py, a module as pkg.module:Class)"
    )


# --- a spec from the command line or the API -----------------------------------------------------
def is_file_spec(spec: str) -> bool:
    path = spec.rsplit(":", 1)[0] if spec.count(":") and spec.rsplit(":", 1)[1].isidentifier() else spec
    return path.endswith(".py") or "/" in path or "\\" in path


def resolve(spec: str) -> type:
    """The Recipe class `spec` names: `./file.py`, `./file.py:Class`, `pkg.mod:Class`, `pkg.mod`
    (one recipe in it), or a registered name. Every failure is one InputError line."""
    if is_file_spec(spec):
        path, _, cls_name = spec.rpartition(":") if _has_class_part(spec) else (spec, "", "")
        return _pick(load_file(Path(path)), f"recipe file {path}", path, cls_name or None)
    if ":" in spec or "." in spec:
        module_name, _, cls_name = spec.partition(":")
        return _pick(_import_module(module_name), f"recipe module {module_name}", module_name, cls_name or None)
    return get(spec)


def _has_class_part(spec: str) -> bool:
    head, sep, tail = spec.rpartition(":")
    return bool(sep) and tail.isidentifier() and bool(head)


def load_file(path: Path):
    """Import a recipe file as a module of its own (a stable name per path: loading it again
    reuses the module)."""
    shown = str(path)
    if not path.is_file():
        why = "is a folder" if path.is_dir() else "does not exist"
        raise InputError(f"recipe file {shown} {why}; pass the path of a .py file that defines a Recipe subclass")
    if path.suffix != ".py":
        raise InputError(f"recipe file {shown} is not a .py file; pass a Python file that defines a Recipe subclass")
    resolved = path.resolve()
    module_name = "exportable_recipe_file_" + hashlib.sha1(str(resolved).encode()).hexdigest()[:12]
    cached = sys.modules.get(module_name)
    if cached is not None and getattr(cached, "__exportable_mtime__", None) == resolved.stat().st_mtime_ns:
        return cached
    spec = importlib.util.spec_from_file_location(module_name, resolved)
    module = importlib.util.module_from_spec(spec)
    module.__exportable_mtime__ = resolved.stat().st_mtime_ns
    sys.modules[module_name] = module  # dataclasses and pickling look the module up by name
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        sys.modules.pop(module_name, None)
        raise InputError(f"recipe file {shown}:{exc.lineno}: syntax error: {exc.msg}; fix the file") from None
    except Exception as exc:
        sys.modules.pop(module_name, None)
        line = _line_in(exc, resolved)
        raise InputError(f"recipe file {shown}{line}: importing it raised {_one_line(exc)}; fix the file "
                         "(or install what it imports)") from None
    return module


def _line_in(exc: BaseException, path: Path) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename) == path]
    return f":{frames[-1].lineno}" if frames else ""


def _import_module(module_name: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise InputError(f"recipe module {module_name}: does not import ({_one_line(exc)}); check the spelling, "
                         "install its package, or pass a file as ./path.py") from None
    except Exception as exc:
        raise InputError(f"recipe module {module_name}: importing it raised {_one_line(exc)}; fix the module") from None


def _pick(module, what: str, where: str, cls_name: str | None) -> type:
    found = recipe_classes(module)
    if cls_name is not None:
        obj = getattr(module, cls_name, None)
        if obj is None:
            have = ", ".join(c.__name__ for c in found) or "none"
            raise InputError(f"{what} has no class {cls_name!r}; its recipes: {have}")
        if not (inspect.isclass(obj) and issubclass(obj, Recipe)):
            raise InputError(f"{what}: {cls_name} is not a Recipe subclass; subclass exportable.Recipe")
        if not getattr(obj, "name", None):
            raise InputError(f"{what}: {cls_name} sets no `name`; add e.g. name = \"my_model\" to the class")
        return obj
    if not found:
        unnamed = [obj.__name__ for obj in vars(module).values() if inspect.isclass(obj) and issubclass(obj, Recipe)
                   and obj is not Recipe and obj.__module__ == module.__name__]
        if unnamed:
            raise InputError(f"{what}: {', '.join(unnamed)} sets no `name`; add e.g. name = \"my_model\" to the class")
        raise InputError(f"{what} defines no Recipe subclass; define `class MyRecipe(Recipe): name = \"my_model\"` "
                         "(docs/bring-your-own-model.md)")
    if len(found) > 1:
        listed = ", ".join(c.__name__ for c in found)
        raise InputError(f"{what} defines {len(found)} recipes ({listed}); name one, e.g. {where}:{found[0].__name__}")
    return found[0]
