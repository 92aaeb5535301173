"""Who may write to a store: a lock file inside it, and a generation id.

Every run that writes blocks holds a *shared* lock on ``<store>/block_manifest/jacengine.lock``
while it runs (inside the manifest's folder: zarr would warn about a file at the group's top).
Replacing a store (overwrite) and deleting the temporary files of interrupted writes without
waiting for them to age take it *exclusively*, and do neither while another run holds it.

The lock is ``flock(2)``. On NFS, Linux emulates it with ``fcntl`` byte-range locks, which hold
where the server supports locking (NFSv4, or NFSv3 with lockd). Where locking is unavailable
(Windows, a file system without locks) the lock is not held: cleanup then falls back to the age
rule, and overwrite proceeds as before; each says so in the log.

Each store also carries a generation id (a random token in its attributes, new on every
creation). A writer checks it before writing a block and before recording it done, so a
writer of a store that was overwritten meanwhile stops instead of committing into the new one.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("jacengine")

LOCK_FILE = "block_manifest/jacengine.lock"  # the manifest array's folder: not a member zarr lists


@contextlib.contextmanager
def store_lock(store: Path, *, exclusive: bool) -> Iterator[bool | None]:
    """Hold the store's lock while the block runs. Yields True when held, False when another
    run holds it (an exclusive lock is tried without waiting), None where locking is unavailable."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield None
        return
    try:
        handle = open(store / LOCK_FILE, "a+")  # noqa: SIM115 - held open for the lock's lifetime
    except OSError as exc:
        log.info("no lock on %s (%s): concurrent runs are detected by age only", store, exc.strerror)
        yield None
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB if exclusive else fcntl.LOCK_SH)
        except BlockingIOError:
            yield False
            return
        except OSError as exc:  # a file system without locks
            log.info("cannot lock %s (%s): concurrent runs are detected by age only", store, exc.strerror)
            yield None
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
