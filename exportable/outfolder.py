"""The artifact folder is replaced in one step, so a crash (even SIGKILL) at any point leaves
either the previous artifact or the new one, never half of one.

An export builds in a private temp folder beside `out` named `.{out}.tmp-{pid}-...`; publish
swaps it with `out` atomically (renameat2 RENAME_EXCHANGE on Linux), then deletes the old one.
Where the kernel or filesystem cannot exchange, two renames are used and the old artifact waits
under `.{out}.old-{pid}-...` in between. A killed process cannot clean up after itself: the next
export to the same `out` removes temp folders whose process is gone, and puts a previous
artifact back if a crash fell between the two renames (tests/test_trust_crash.py kills real
exports at every stage).
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import tempfile
from pathlib import Path

RENAME_EXCHANGE = 2  # linux/fs.h
AT_FDCWD = -100
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)-")


def temp_folder(out: Path) -> Path:
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def clean_leftovers(out: Path) -> list[Path]:
    """Remove what crashed exports to `out` left beside it (their process is gone); restore a
    previous artifact a crash left under .old- when `out` itself is missing. Returns what was
    removed or restored."""
    handled = []
    if not out.parent.is_dir():
        return handled
    for path in sorted(out.parent.iterdir()):
        match = _LEFTOVER.match(path.name)
        if not match or match["name"] != out.name or _alive(int(match["pid"])):
            continue
        if match["kind"] == "old" and not out.exists():
            path.rename(out)  # the crash fell between the two renames: the previous artifact is back
        else:
            shutil.rmtree(path, ignore_errors=True)
        handled.append(path)
    return handled


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2); False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def swap_into_place(folder: Path, out: Path, crash_point=lambda name: None) -> None:
    """Make `folder` the artifact at `out`; the previous artifact there (if any) is deleted only
    once the new one is in place."""
    folder.chmod(0o755)  # mkdtemp makes it private; an artifact folder is meant to be shared
    if not out.exists():
        folder.rename(out)
        return
    if _exchange(folder, out):
        crash_point("publish:swapped")
        shutil.rmtree(folder, ignore_errors=True)  # now holds the previous artifact
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-{os.getpid()}-", dir=out.parent))
    out.replace(old)  # an empty dir is replaced by rename(2)
    crash_point("publish:between-renames")
    folder.rename(out)
    shutil.rmtree(old, ignore_errors=True)
