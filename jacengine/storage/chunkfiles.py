"""Chunk files of an uncompressed zarr v3 array, written by jacengine itself.

The store's per-block data (the ``jacobian`` chunks and the ``block_manifest`` rows) is written
here rather than through zarr, so that jacengine owns every step of a commit: a private
temporary file (named with :data:`TEMPORARY_SUFFIX`, so cleanup never depends on zarr's private
naming), its fsync, the rename over the chunk's name, and the directory's fsync, with a fault
point after each step for the tests. What is written is what zarr itself would write and reads
back: by the zarr v3 specification, a chunk of an array whose only codec is ``bytes`` (little
endian) is the chunk's values in C order, padded with the fill value at the array's edges, at
the key ``c/<i>/<j>/...`` of the default chunk key encoding; with the ``crc32c`` codec after it
(store format 3), those bytes are followed by their CRC-32C as a little-endian uint32.
:func:`check_raw_layout` refuses an array with any other encoding.
"""

from __future__ import annotations

import errno
import os
import signal
import uuid
from collections.abc import Iterable
from pathlib import Path

import google_crc32c
import numpy as np
import zarr
from zarr.codecs import BytesCodec, Crc32cCodec
from zarr.codecs.bytes import Endian
from zarr.core.chunk_key_encodings import DefaultChunkKeyEncoding

from jacengine.errors import DiskFullError

TEMPORARY_SUFFIX = ".jacengine-tmp"
FAULT_VARIABLE = "JACENGINE_FAULT"  # tests only: "<point>" or "<point>:<block index>"
FAULT_POINTS = ("after-temp", "after-rename", "after-data", "after-manifest")


CHECKSUM_BYTES = 4  # the crc32c codec's CRC-32C after the chunk's bytes


def check_raw_layout(array: zarr.Array) -> bool:
    """Raise unless ``array``'s chunks are raw little-endian bytes at default keys, optionally
    followed by their CRC-32C; returns whether they are (the ``crc32c`` codec)."""
    metadata = array.metadata
    codecs = tuple(getattr(metadata, "codecs", ()))
    raw = bool(codecs) and isinstance(codecs[0], BytesCodec) and codecs[0].endian in (None, Endian.little)
    checksummed = len(codecs) == 2 and isinstance(codecs[1], Crc32cCodec)
    keys = getattr(metadata, "chunk_key_encoding", None)
    if not (raw and len(codecs) == 1 + checksummed and isinstance(keys, DefaultChunkKeyEncoding) and keys.separator == "/"):
        raise ValueError(f"array {array.name} is not uncompressed with default chunk keys (codecs {codecs}, keys {keys}); "
                         "jacengine writes only the layout it creates.")
    return checksummed


def checksum_matches(chunk: bytes) -> bool:
    """Whether a checksummed chunk file's bytes end with the CRC-32C of the rest."""
    return google_crc32c.value(chunk[:-CHECKSUM_BYTES]) == int.from_bytes(chunk[-CHECKSUM_BYTES:], "little")


def chunk_path(array_root: Path, index: tuple[int, ...]) -> Path:
    """The file of chunk ``index`` (default chunk key encoding, separator "/")."""
    return array_root.joinpath("c", *map(str, index))


def encode_chunk(values: np.ndarray, chunk_shape: tuple[int, ...], dtype: np.dtype, *, checksummed: bool,
                 fill: float = 0) -> bytes:
    """``values`` (a chunk, smaller at the array's edges) as the chunk's bytes: padded to
    ``chunk_shape`` with ``fill``, little endian, C order, and with ``checksummed`` their CRC-32C."""
    little = np.dtype(dtype).newbyteorder("<")
    if values.shape != tuple(chunk_shape):
        padded = np.full(chunk_shape, fill, dtype=little)
        padded[tuple(slice(0, n) for n in values.shape)] = values
        values = padded
    data = np.ascontiguousarray(values, dtype=little).tobytes()
    return data + google_crc32c.value(data).to_bytes(CHECKSUM_BYTES, "little") if checksummed else data


def write_files(files: Iterable[tuple[Path, bytes]], *, durable: bool, block_index: int) -> None:
    """Write each (path, bytes) through a temporary file renamed over ``path``; with
    ``durable`` each file is fsynced before its rename and each directory after. A full disk
    raises :class:`DiskFullError` with the temporary file removed."""
    directories: set[Path] = set()
    for path, data in files:
        # a directory created here is an entry in its parent: that parent is fsynced too
        created = []
        for parent in path.parents:
            if parent.exists():
                break
            created.append(parent)
        path.parent.mkdir(parents=True, exist_ok=True)
        directories.update(parent.parent for parent in created)
        temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}{TEMPORARY_SUFFIX}")
        try:
            _write_temporary(temporary, data, durable)
        except OSError as exc:
            temporary.unlink(missing_ok=True)
            raise_if_disk_full(exc, path)
            raise
        fault_point("after-temp", block_index)
        os.replace(temporary, path)
        fault_point("after-rename", block_index)
        directories.add(path.parent)
    if durable:
        for directory in directories:
            fsync_directory(directory)


def _write_temporary(temporary: Path, data: bytes, durable: bool) -> None:
    with open(temporary, "wb") as file:
        file.write(data)
        if durable:
            file.flush()
            os.fsync(file.fileno())


def raise_if_disk_full(error: OSError, path: Path) -> None:
    """Raise :class:`DiskFullError` from ``error`` when it is a full disk (or quota) at ``path``."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        raise DiskFullError(f"no space left to write {path} ({error.strerror}). Every block recorded done is whole: free "
                            "space (or raise the quota) and rerun the same command to resume.") from error


def remove_temporary_files(root: Path, min_age_s: float, now: float) -> int:
    """Delete temporary files of interrupted writes under ``root`` at least ``min_age_s`` old."""
    removed = 0
    for leftover in root.rglob(f"*{TEMPORARY_SUFFIX}"):
        try:
            if now - leftover.stat().st_mtime >= min_age_s:
                leftover.unlink()
                removed += 1
        except FileNotFoundError:  # another process just renamed or removed it
            pass
    return removed


def fsync_files(paths: Iterable[Path]) -> None:
    """fsync files written by someone else (zarr) and then their directories."""
    for path in paths:
        try:
            with open(path, "rb") as file:
                os.fsync(file.fileno())
        except FileNotFoundError:
            continue
        fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    """Make the renames in ``directory`` durable (where the platform can open directories)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def fault_point(name: str, index: int) -> None:
    """Kill this process here when the fault-injection variable asks for it (tests only)."""
    wanted = os.environ.get(FAULT_VARIABLE)
    if wanted and wanted.split(":")[0] == name and (":" not in wanted or int(wanted.split(":")[1]) == index):
        os.kill(os.getpid(), signal.SIGKILL)
