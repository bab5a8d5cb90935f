"""Where a `--model` value points: a local folder, or a Hugging Face model id already in the local
Hugging Face cache. The hub is never contacted (exports run offline); a missing id is a one-line
error that says how to get it into the cache.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from huggingface_hub import snapshot_download

from .errors import InputError

# owner/name as the hub spells ids (a bare name is a legacy id): letters, digits, - _ . only.
_HUB_ID = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9_.-]*/)?[A-Za-z0-9][A-Za-z0-9_.-]*$")


def hub_cache_dir() -> Path:
    """The cache huggingface_hub reads, from the environment *now*: huggingface_hub.constants is
    computed once at import, so a later HF_HOME (a test's temp cache) would be missed there."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg).expanduser() / "huggingface" / "hub"


def looks_like_hub_id(value: str) -> bool:
    return bool(_HUB_ID.match(value)) and not value.startswith((".", "~")) and ".." not in value


def resolve_checkpoint(value: str | os.PathLike, flag: str = "--model") -> Path:
    """A local folder for `value`: the folder itself, or the cached snapshot of a hub id."""
    path = Path(value).expanduser()
    if path.is_dir():
        return path
    text = str(value)
    if path.exists():
        raise InputError(f"{flag} {text}: is a file; pass the model folder (the one holding config.json)")
    if not looks_like_hub_id(text):
        raise InputError(f"{flag} {text}: no such folder; pass a local model folder or a Hugging Face model id")
    return _cached_snapshot(text, flag)


def _cached_snapshot(repo_id: str, flag: str) -> Path:
    cache = hub_cache_dir()
    try:
        return Path(snapshot_download(repo_id, cache_dir=cache, local_files_only=True))
    except Exception:  # LocalEntryNotFoundError and friends: the id is not (fully) in the cache
        raise InputError(
            f"{flag} {repo_id}: no such folder, and not in the local Hugging Face cache ({cache}); "
            f"exports run offline: fetch it once with `hf download {repo_id}` (or set HF_HOME to the "
            "cache that has it), or pass a local folder") from None
