"""Scratch stores: where a Jacobian wanted in memory (``compute(..., store=None)``) is written.

The engine always fills a zarr store block by block, so a result wanted in memory gets a store
of its own in a private directory: on tmpfs (``/dev/shm``, which is memory) when that has room
for it, else in the system's temporary directory. The directory is deleted when the
:class:`~jacengine.JacobianStore` that owns it is garbage collected, or at exit. A process
killed outright (kill -9, the out-of-memory killer) runs neither: its directory is named with
its process id, and the next scratch store made on this machine removes those of processes
that no longer exist.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

MEMORY_DIRECTORY = Path("/dev/shm")
ROOM_FACTOR = 1.25  # zarr metadata and a block being written beside the finished ones
PREFIX = "jacengine-scratch-"
_OWNER = re.compile(rf"^{PREFIX}(\d+)-")


def scratch_store_path(nbytes: int) -> Path:
    """A fresh, private path for a store of about ``nbytes`` bytes (its parent is the folder to
    delete with it)."""
    for parent in (MEMORY_DIRECTORY, Path(tempfile.gettempdir())):
        remove_orphaned(parent)
    folder = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=_memory_directory(nbytes)))
    return folder / "jacobian.zarr"


def remove_orphaned(parent: Path) -> int:
    """Remove the scratch folders in ``parent`` whose process has exited; returns how many."""
    removed = 0
    try:
        candidates = list(parent.glob(f"{PREFIX}*"))
    except OSError:  # no such folder here
        return 0
    for folder in candidates:
        owner = _OWNER.match(folder.name)
        if owner and not _alive(int(owner[1])):
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive, and not ours to judge
        return True
    return True


def _memory_directory(nbytes: int) -> str | None:
    try:
        room = shutil.disk_usage(MEMORY_DIRECTORY).free
    except OSError:  # no tmpfs here (macOS, Windows)
        return None
    return str(MEMORY_DIRECTORY) if room > ROOM_FACTOR * nbytes else None
