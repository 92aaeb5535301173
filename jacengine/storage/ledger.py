"""Which blocks a store holds, and the commit protocol that records them: the half of a
:class:`~jacengine.storage.store.JacobianStore` that writes.

The ``block_manifest`` array has one row per block of the plan, [1 when done, checksum of the
block's bytes, row check] (format 1 stores: [done, checksum]). A block is written chunk by
chunk, and only then recorded done; see :meth:`BlockLedger.write`. A block recorded done counts
as done only while its chunk files are whole: present, at their size, and (format 3) matching
their CRC-32C, so a flipped bit makes its block pending and a resume recomputes it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterable
from functools import cached_property
from pathlib import Path

import numpy as np
import zarr

from jacengine.errors import BlockError, StoreError
from jacengine.planning.blocks import Block, Plan
from jacengine.planning.spec import JacobianSpec
from jacengine.storage.chunkfiles import (
    CHECKSUM_BYTES,
    check_raw_layout,
    checksum_matches,
    chunk_path,
    encode_chunk,
    fault_point,
    fsync_files,
    write_files,
)
from jacengine.timing import phase

ATTRIBUTE = "jacengine"  # the store's group attribute: spec, plan, fingerprint, generation id
MANIFEST = "block_manifest"  # (n_blocks, 3) uint64: [1 when done, checksum of the block's bytes, row check]
ROUNDING = "rounding_error"  # float16 stores: (n_blocks,) float64, largest |stored - computed| per block
CLAIMS = "claims"  # block_manifest/claims/<index>: the lock files of blocks being computed


def block_checksum(data: np.ndarray) -> int:
    """A 63-bit checksum of a block's bytes in C order (fits zarr's uint64 and JSON), hashed in
    place (a copy would be one more block's worth of memory in the writer)."""
    digest = hashlib.blake2b(np.ascontiguousarray(data).data, digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def row_check(index: int, done: int, checksum: int) -> int:
    """The third field of a manifest row: a 63-bit hash of the block index and the row's other
    two fields, so that a garbled or misplaced row never reads as a done block."""
    values = np.array([index, done, checksum], dtype="<u8").tobytes()
    return int.from_bytes(hashlib.blake2b(values, digest_size=8).digest(), "little") >> 1


class BlockLedger:
    """The blocks of the store at ``path`` (its zarr ``group``, computing ``spec`` by ``plan``):
    which are done, and the writes that record them. ``generation``: the store's generation id
    when it was opened (writes stop if the store was replaced since). ``durable``: fsync each
    block before recording it done."""

    def __init__(self, path: Path, group: zarr.Group, spec: JacobianSpec, plan: Plan, *, generation: str | None,
                 durable: bool) -> None:
        self.path, self.group, self.spec, self.plan = path, group, spec, plan
        self.generation, self.durable = generation, durable
        # chunk files this handle found whole (or wrote), by (inode, size, mtime): not read again
        self._whole: dict[Path, tuple[int, int, int]] = {}

    @property
    def _manifest(self) -> zarr.Array:
        return self.group[MANIFEST]  # type: ignore[return-value]

    def manifest(self) -> np.ndarray:
        """(n_blocks, 2) array of [done flag, checksum] per block. A row that cannot be read (a
        truncated chunk), or whose row check fails (garbled bytes), reads as pending, [0, 0]."""
        try:
            rows = np.asarray(self._manifest[:])
        except Exception:  # one bad row: read them one by one
            rows = np.zeros(self._manifest.shape, dtype="uint64")
            for index in range(len(rows)):
                try:
                    rows[index] = self._manifest[index]
                except Exception:
                    pass
        if rows.shape[1] == 3:
            valid = [int(check) == row_check(i, int(done), int(checksum)) for i, (done, checksum, check) in enumerate(rows)]
            rows = np.where(np.array(valid)[:, None], rows[:, :2], 0).astype("uint64")
        return rows

    def completion(self) -> tuple[set[int], set[int]]:
        """(done, damaged): the blocks recorded done, split by whether their chunk files are all
        whole (:meth:`intact`); damaged ones are pending again. One read of the manifest, and
        one read of each chunk file this handle has not yet found whole (format 3: its checksum)."""
        done: set[int] = set()
        damaged: set[int] = set()
        for index in np.flatnonzero(self.manifest()[:, 0] == 1):
            (done if self.intact(self.plan.blocks[int(index)]) else damaged).add(int(index))
        return done, damaged

    def write(self, block: Block, data: np.ndarray) -> None:
        """Write a block's values (whole chunks only), then record it as done.

        The commit protocol: (1) each of the block's chunks is written to a temporary file of
        jacengine's own naming, fsynced, and renamed over the chunk's name; chunks of zeros are
        written too (all but those above a causal diagonal, see :meth:`chunks`), so that every
        chunk of a done block exists (:mod:`~jacengine.storage.chunkfiles`);
        (2) the chunk directories are fsynced; (3) the store's generation id is checked (see
        :mod:`jacengine.storage.locking`); (4) the manifest row [1, checksum, row check] is
        written the same way and fsynced. A crash before (4) leaves the block pending and a
        resume recomputes it; rewriting a block leaves identical bytes. On reading, a recorded
        block whose chunk files are missing or short (power loss after the row reached the disk
        but not the data) counts as pending, and so does a manifest row that cannot be read or
        fails its row check. A store opened with ``durable=False`` skips the fsyncs: faster on
        slow disks, and safe against a killed process, but not against a power loss.
        """
        expected = (block.n_batch, block.n_rows, len(self.spec.f_out), block.in_stop, len(self.spec.f_in))
        if data.shape != expected:
            raise ValueError(f"block {block.index} data has shape {data.shape}, expected {expected}")
        with phase("store write"):
            self._check_generation()
            self._write_checked_block(block, data)

    @cached_property
    def _layout(self) -> tuple[np.dtype, bool]:
        """The ``jacobian`` array's dtype and whether its chunks carry a CRC-32C, once its chunks
        are checked to be the layout that :meth:`write` writes (opened once per handle)."""
        array = self.group["jacobian"]
        assert isinstance(array, zarr.Array)
        return array.dtype, check_raw_layout(array)

    def _write_checked_block(self, block: Block, data: np.ndarray) -> None:
        dtype, checksummed = self._layout
        with np.errstate(over="ignore"):  # float16 overflow is refused just below, with a message
            stored = np.ascontiguousarray(data, dtype=dtype)
        if dtype == np.float16:
            self._record_rounding(block, data, stored)
        chunk_shape = self.plan.chunks(self.spec)
        # encoded one at a time as they are written: the writer holds the block, not a copy of it
        chunks = self.chunks(block)
        files = ((path, encode_chunk(stored[local], chunk_shape, dtype, checksummed=checksummed)) for path, local in chunks)
        write_files(files, durable=self.durable, block_index=block.index)
        for path, _ in chunks:
            self._whole[path] = _identity(path)
        fault_point("after-data", block.index)
        self._check_generation()
        self._write_manifest_row(block.index, done=1, checksum=block_checksum(stored))
        fault_point("after-manifest", block.index)

    def _write_manifest_row(self, index: int, *, done: int, checksum: int) -> None:
        """Write one manifest row as the commit protocol says (format 1 stores: through zarr)."""
        path = chunk_path(self.path / MANIFEST, (index, 0))
        if self._manifest.shape[1] == 2:
            self._manifest[index : index + 1, :] = np.array([[done, checksum]], dtype="uint64")
            if self.durable:
                fsync_files([path])
            return
        row = np.array([done, checksum, row_check(index, done, checksum)], dtype="<u8")
        write_files([(path, row.tobytes())], durable=self.durable, block_index=index)

    def chunks(self, block: Block) -> list[tuple[Path, tuple[slice, ...]]]:
        """Each chunk of ``block`` in the ``jacobian`` array: its file, and the part of the
        block's data it holds (blocks cover whole chunks: :meth:`Plan.check_alignment`).
        Chunks wholly above a causal model's diagonal (every input step after every output
        step of the chunk) are structurally zero and none of a block's: zarr reads them as the
        fill value."""
        plan, spec = self.plan, self.spec
        spans = [(block.batch_start, block.batch_stop, plan.batch_chunk), (block.row_start, block.row_stop, plan.t_out_chunk),
                 (0, block.in_stop, plan.t_in_chunk)]
        axes = [[(c, slice(c * size - start, min((c + 1) * size, stop) - start)) for c in range(start // size, -(-stop // size))]
                for start, stop, size in spans]
        root = self.path / "jacobian"
        whole = slice(None)
        causal_full = spec.causal and spec.layout == "full"
        last_step = {r: spec.t_out[min(len(spec.t_out), (r + 1) * plan.t_out_chunk) - 1] for r, _ in axes[1]}
        return [(chunk_path(root, (b, r, 0, i, 0)), (batch, rows, whole, inputs, whole))
                for b, batch in axes[0] for r, rows in axes[1] for i, inputs in axes[2]
                if not (causal_full and i * plan.t_in_chunk > last_step[r])]

    def chunk_files(self, block: Block) -> list[Path]:
        """The chunk files of ``block`` in the ``jacobian`` array."""
        return [path for path, _ in self.chunks(block)]

    def intact(self, block: Block) -> bool:
        """Whether every chunk file of a done block is whole: it exists at its exact size (power
        loss can leave a renamed file missing or short) and, in a checksummed store, its bytes
        match their CRC-32C (a flipped bit, a chunk file swapped with another's content)."""
        dtype, checksummed = self._layout
        size = int(np.prod(self.plan.chunks(self.spec))) * dtype.itemsize + CHECKSUM_BYTES * checksummed
        return all(self._whole_file(path, size, checksummed) for path in self.chunk_files(block))

    def _whole_file(self, path: Path, size: int, checksummed: bool) -> bool:
        try:
            identity = _identity(path)
            if identity[1] != size:
                return False
            if self._whole.get(path) == identity:
                return True
            if checksummed and not checksum_matches(path.read_bytes()):
                return False
        except FileNotFoundError:
            return False
        self._whole[path] = identity
        return True

    def _record_rounding(self, block: Block, computed: np.ndarray, stored: np.ndarray) -> None:
        """Refuse values float16 cannot hold; record the block's largest rounding error."""
        if not np.isfinite(stored).all():
            largest = float(np.abs(computed).max())
            raise BlockError(
                f"block {block.index} has derivatives up to {largest:.3g}, beyond float16's range (65504); "
                "the block was not stored. Use store_dtype='float32' (--store-dtype float32)."
            )
        error = float(np.abs(stored.astype(np.float64) - computed).max()) if stored.size else 0.0
        self._rounding[block.index : block.index + 1] = np.array([error])

    @property
    def _rounding(self) -> zarr.Array:
        return self.group[ROUNDING]  # type: ignore[return-value]

    def rounding_error(self) -> float | None:
        """The largest |stored - computed| over the done blocks of a float16 store; None otherwise."""
        if ROUNDING not in self.group:
            return None
        done = sorted(self.completion()[0])
        return float(np.asarray(self._rounding[:])[done].max()) if done else 0.0

    def claim(self, block: Block, *, wait: bool) -> BlockClaim | None:
        """Claim ``block`` for this process (an exclusive ``flock`` on its claim file,
        ``block_manifest/claims/<index>``), so that another run resuming the same store
        computes other blocks meanwhile. None when another process holds it (only without
        ``wait``). A claim ends with :meth:`BlockClaim.release`, or with the process."""
        folder = self.path / MANIFEST / CLAIMS
        folder.mkdir(exist_ok=True)
        descriptor = os.open(folder / str(block.index), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(descriptor)
            return None
        except OSError:  # a file system without locks: every run computes every block it sees pending
            pass
        return BlockClaim(descriptor)

    def is_done(self, block: Block) -> bool:
        """Whether ``block`` is done: its manifest row says so and its chunk files are whole (one
        row and one block read: for a run holding a claim, to skip what another run finished)."""
        try:
            row = np.asarray(self._manifest[block.index])
        except Exception:  # an unreadable row is not done
            return False
        recorded = bool(row[0] == 1) and (len(row) == 2 or int(row[2]) == row_check(block.index, 1, int(row[1])))
        return recorded and self.intact(block)

    def forget(self, indices: Iterable[int]) -> None:
        """Mark blocks pending again (e.g. after verify found them corrupt)."""
        for index in indices:
            self._write_manifest_row(index, done=0, checksum=0)

    def _check_generation(self) -> None:
        """Refuse to write into a store that was overwritten since this handle opened it."""
        try:
            on_disk = json.loads((self.path / "zarr.json").read_text())["attributes"][ATTRIBUTE].get("generation")
        except (OSError, KeyError, ValueError):
            on_disk = "missing"
        if on_disk != self.generation:
            raise StoreError(f"{self.path} was replaced (overwritten or deleted) by another run since this run opened it; "
                             "this run stops without writing into the new store.")


class BlockClaim:
    """A held claim on one block (see :meth:`BlockLedger.claim`)."""

    def __init__(self, descriptor: int) -> None:
        self._descriptor: int | None = descriptor

    def release(self) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)  # closing drops the flock
            self._descriptor = None


def _identity(path: Path) -> tuple[int, int, int]:
    """(inode, size, modification time) of a file: a rename or rewrite changes it."""
    status = path.stat()
    return status.st_ino, status.st_size, status.st_mtime_ns
