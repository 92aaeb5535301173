"""Scratch stores: where a Jacobian wanted in memory (``compute(..., store=None)``) is written.

The engine always fills a zarr store block by block, so a result wanted in memory gets a store
of its own in a private directory: on tmpfs (``/dev/shm``, which is memory) when that has room
for it, else in the system's temporary directory. The directory is deleted when the
:class:`~jacengine.JacobianStore` that owns it is garbage collected, or at exit.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

MEMORY_DIRECTORY = Path("/dev/shm")
ROOM_FACTOR = 1.25  # zarr metadata and a block being written beside the finished ones


def scratch_store_path(nbytes: int) -> Path:
    """A fresh, private path for a store of about ``nbytes`` bytes (its parent is the folder to
    delete with it)."""
    folder = Path(tempfile.mkdtemp(prefix="jacengine-", dir=_memory_directory(nbytes)))
    return folder / "jacobian.zarr"


def _memory_directory(nbytes: int) -> str | None:
    try:
        room = shutil.disk_usage(MEMORY_DIRECTORY).free
    except OSError:  # no tmpfs here (macOS, Windows)
        return None
    return str(MEMORY_DIRECTORY) if room > ROOM_FACTOR * nbytes else None
