"""The sha256 and size of every model file an export wrote, recorded in report.json and in the
vectors manifest ("files": {name: {"sha256", "bytes"}}), and checked before a file is trusted:
an artifact is loaded far from where it was made, and a file changed or cut short on the way
must be refused by name, not discovered through wrong answers.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from .errors import InputError
from .external import data_file_name

MANIFEST = Path("vectors") / "manifest.json"
REPORT = Path("report.json")
OPT_OUT = "re-export the artifact or pass --no-hash-check"


class IntegrityError(InputError):
    """A model file differs from what the export recorded (a changed file is bad input: exit 2)."""

    stage = "integrity"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def describe(folder: Path, names: Iterable[str]) -> dict[str, dict]:
    """{file name: {"sha256": ..., "bytes": ...}} for the model files an export wrote."""
    return {name: {"sha256": sha256_file(folder / name), "bytes": (folder / name).stat().st_size}
            for name in sorted(set(names))}


def read_json(path: Path, folder: Path) -> dict:
    """A JSON object from an artifact's file, or a one-line InputError naming what is wrong."""
    shown = path.relative_to(folder) if path.is_relative_to(folder) else path
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"{shown} cannot be read ({exc.strerror}); re-export the artifact") from None
    except UnicodeDecodeError:
        raise InputError(f"{shown} is not UTF-8 text (the file is damaged); re-export the artifact") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{shown} is not valid JSON ({exc.msg} at line {exc.lineno}); the file is damaged or "
                         "was cut short: re-export the artifact") from None
    if not isinstance(data, dict):
        raise InputError(f"{shown} holds a JSON {type(data).__name__}, not an object; re-export the artifact")
    return data


def recorded(folder: Path) -> dict[str, dict[str, dict]]:
    """The records an artifact folder holds: {"report.json" | "vectors/manifest.json": files}.
    A record file that exists but cannot be read is an InputError; an artifact made before
    hashes were recorded simply has none."""
    found = {}
    for rel in (MANIFEST, REPORT):
        path = folder / rel
        if path.exists():
            files = read_json(path, folder).get("files")
            if isinstance(files, dict) and all(isinstance(v, dict) and "sha256" in v for v in files.values()):
                found[str(rel)] = files
    return found


def check_files(folder: str | Path, names: Iterable[str]) -> None:
    """Refuse (IntegrityError, one line) a model file whose size or sha256 is not what the export
    recorded, in either record. Sizes first: a truncated file is named without hashing it. A
    model's external-data file (model.onnx.data) is checked with it when it was recorded."""
    folder = Path(folder)
    records = recorded(folder)
    for name in [n for model in names for n in (model, data_file_name(model))]:
        path = folder / name
        wanted = [(where, files[name]) for where, files in records.items() if name in files]
        if not wanted or not path.is_file():
            continue  # not recorded (an older artifact), or missing: the loader names a missing file
        size, digest = path.stat().st_size, None
        for where, entry in wanted:
            if entry.get("bytes") is not None and entry["bytes"] != size:
                raise IntegrityError(f"{name} is {size} bytes, but {where} recorded {entry['bytes']} (the file was "
                                     f"changed or cut short after export); {OPT_OUT}")
            digest = digest or sha256_file(path)
            if entry["sha256"] != digest:
                raise IntegrityError(f"{name} does not match its recorded sha256 ({where}: {entry['sha256'][:16]}..., "
                                     f"file: {digest[:16]}...); the file was changed after export: {OPT_OUT}")


def artifact_folder_of(model_path: Path) -> Path | None:
    """The artifact folder a model file sits in (one with vectors/manifest.json or report.json)."""
    folder = Path(model_path).parent
    return folder if (folder / MANIFEST).exists() or (folder / REPORT).exists() else None
