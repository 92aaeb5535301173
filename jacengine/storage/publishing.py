"""Directories that appear whole or not at all: built beside their final name, then renamed.

A new store, and each reduction's result, is written into a staging directory next to where it
belongs (``.<name>.<token>.jacengine-staging``), fsynced, and renamed into place in one step,
so a crash or a full disk during the writing never leaves a half-made directory under the
final name: the previous content (an overwritten store, an earlier result) stays whole until
the new one is. A staging directory is locked (``flock``) by the process building it; one that
nobody holds, older than :data:`GRACE_S` (the moment between its creation and its lock), was
abandoned by a process that died, and the next :func:`staged` in the same folder removes it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from jacengine.storage.chunkfiles import fsync_directory

STAGING_SUFFIX = ".jacengine-staging"
REPLACED_SUFFIX = ".jacengine-replaced"  # what a publish replaced, removed once the new one is in place
GRACE_S = 5.0


@contextlib.contextmanager
def staged(final: Path) -> Iterator[Path]:
    """A fresh, locked directory beside ``final`` to build its content in (see the module
    docstring); removed if the block raises. Abandoned staging directories there go first."""
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned(final.parent)
    staging = final.parent / f".{final.name}.{uuid.uuid4().hex[:12]}{STAGING_SUFFIX}"
    staging.mkdir()
    try:
        with _locked(staging, wait=True):
            yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def publish(staging: Path, final: Path, *, replace: bool, durable: bool) -> None:
    """Rename the finished ``staging`` directory to ``final``. With ``replace``, an existing
    ``final`` is moved aside first and deleted once the new one is in place; without, an
    existing ``final`` raises :class:`FileExistsError` (another process published first).
    ``durable``: fsync every file and folder of ``staging`` first, and the parent after."""
    if durable:
        _fsync_tree(staging)
    replaced = final.parent / f".{final.name}.{uuid.uuid4().hex[:12]}{REPLACED_SUFFIX}"
    moved_aside = replace and final.exists()
    if moved_aside:
        os.rename(final, replaced)
    try:
        os.rename(staging, final)  # onto nothing, or an empty folder; a full one raises
    except OSError as exc:
        if moved_aside:
            os.rename(replaced, final)
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise FileExistsError(errno.EEXIST, "published by another process meanwhile", str(final)) from exc
        raise
    fsync_directory(final.parent)
    if moved_aside:
        shutil.rmtree(replaced, ignore_errors=True)


def remove_abandoned(folder: Path) -> int:
    """Remove the staging directories in ``folder`` that no process holds, and leftovers of
    replaced content; returns how many."""
    removed = 0
    for candidate in [*folder.glob(f".*{STAGING_SUFFIX}"), *folder.glob(f".*{REPLACED_SUFFIX}")]:
        with contextlib.suppress(FileNotFoundError):
            if time.time() - candidate.stat().st_mtime < GRACE_S:
                continue
        if candidate.name.endswith(STAGING_SUFFIX):
            with _locked(candidate, wait=False) as held:
                if not held:
                    continue
                shutil.rmtree(candidate, ignore_errors=True)
        else:
            shutil.rmtree(candidate, ignore_errors=True)
        removed += 1
    return removed


@contextlib.contextmanager
def _locked(directory: Path, *, wait: bool) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``directory`` itself (the lock follows it through a
    rename). Yields False when another process holds it (only without ``wait``)."""
    import fcntl

    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except FileNotFoundError:  # removed by another process meanwhile
        yield False
        return
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        except OSError:  # a file system without locks: treat it as held by nobody else
            pass
        yield True
    finally:
        os.close(descriptor)


def _fsync_tree(root: Path) -> None:
    """fsync every file under ``root``, then every folder, deepest first (``root`` last)."""
    folders: list[Path] = []
    for walked, _, files in os.walk(root):
        folders.append(Path(walked))
        for name in files:
            with open(Path(walked) / name, "rb") as file:
                os.fsync(file.fileno())
    for folder in reversed(folders):
        fsync_directory(folder)
