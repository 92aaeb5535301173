"""The on-disk Jacobian store (format version 2, a public contract described in docs/store-format.md).

One zarr v3 group holding the ``jacobian`` array, 1-D coordinate arrays named like its
dimensions, a ``block_manifest`` array recording which blocks are done (and their checksums),
and the group attribute ``jacengine`` with the spec, plan and fingerprint that produced it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
import uuid
import warnings
import weakref
from collections.abc import Iterable
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from jacengine._version import __version__
from jacengine.errors import BlockError, StoreError, StoreMismatchError
from jacengine.planning.blocks import Block, Plan
from jacengine.planning.spec import JacobianSpec
from jacengine.storage.chunkfiles import (
    check_raw_layout,
    chunk_path,
    encode_chunk,
    fault_point,
    fsync_files,
    remove_temporary_files,
    write_files,
)
from jacengine.storage.locking import store_lock
from jacengine.timing import phase

FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)  # format 1: a compressed manifest without row checks; read and resumed as it is
ATTRIBUTE = "jacengine"
MANIFEST = "block_manifest"  # (n_blocks, 3) uint64: [1 when done, checksum of the block's bytes, row check]
ROUNDING = "rounding_error"  # float16 stores: (n_blocks,) float64, largest |stored - computed| per block


def spec_dims(spec: JacobianSpec) -> tuple[str, ...]:
    """The dimension names of the ``jacobian`` array of ``spec``'s layout."""
    return ("batch", "t_out", "f_out", spec.in_axis, "f_in")


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


def is_jacengine_store(path: str | Path) -> bool:
    """True when ``path`` is a zarr group carrying jacengine's group attribute."""
    path = Path(path)
    if not (path / "zarr.json").is_file():
        return False
    try:
        return ATTRIBUTE in zarr.open_group(str(path), mode="r", use_consolidated=False).attrs
    except Exception:  # an unreadable zarr.json is not a store of ours
        return False


def describe_mismatch(stored: dict[str, Any], requested: dict[str, Any]) -> list[str]:
    """Names of the fingerprint components that differ, with both values shortened."""
    differences = []
    for key in sorted(set(stored) | set(requested)):
        if stored.get(key) != requested.get(key):
            differences.append(f"{key}: store has {_short(stored.get(key))}, this run has {_short(requested.get(key))}")
    return differences


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


class JacobianStore:
    """A handle on a Jacobian store; cheap to open, safe to share between processes.

    Open existing stores with :func:`open_store`; create them with :meth:`create`.
    """

    def __init__(self, path: str | Path, mode: str = "r", *, durable: bool = True) -> None:
        self.path = Path(path)
        self.durable = durable  # fsync each block before recording it done (see write_block)
        if not is_jacengine_store(self.path):
            raise StoreError(f"{self.path} is not a jacengine store (no zarr group with a '{ATTRIBUTE}' attribute).")
        # jacengine reads the metadata itself, never the consolidated copy that readers use
        self._group = zarr.open_group(str(self.path), mode=mode, use_consolidated=False)  # type: ignore[arg-type]
        self.last_run: Any = None  # the RunSummary of the run that returned this object (jacengine.api)

    # -- creation ---------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | Path,
        spec: JacobianSpec,
        plan: Plan,
        fingerprint: dict[str, Any],
        *,
        overwrite: bool = False,
        sources: dict[str, str] | None = None,
        durable: bool = True,
    ) -> JacobianStore:
        """Create an empty store; refuses to touch anything that is not a jacengine store.

        ``sources`` records the model and inputs file paths (when they were files), so that
        ``jacengine verify`` can find them again; they are not part of the fingerprint.
        """
        path = Path(path)
        plan.check_alignment(spec)
        check_writable_target(path, overwrite=overwrite)
        if path.exists() and overwrite:
            _remove_unless_in_use(path)
        group = zarr.open_group(str(path), mode="w-", zarr_format=3)
        _create_arrays(group, spec, plan)
        # The attribute goes last: a directory without it is not (yet) a jacengine store, so a
        # creation interrupted half-way is never mistaken for a valid empty store.
        group.attrs[ATTRIBUTE] = {
            "format": FORMAT_VERSION,
            "version": __version__,
            "layout": spec.layout,
            "causal": spec.causal,
            "spec": spec.to_dict(),
            "plan": plan.to_dict(),
            "fingerprint": fingerprint,
            "sources": sources or {},
            "generation": uuid.uuid4().hex,  # new on every creation: see jacengine.storage.locking
        }
        consolidate_metadata(path)
        return cls(path, mode="r+", durable=durable)

    # -- metadata ---------------------------------------------------------------------------
    @property
    def attrs(self) -> dict[str, Any]:
        """The ``jacengine`` group attribute (format, version, layout, causal, spec, plan, fingerprint)."""
        return dict(self._group.attrs[ATTRIBUTE])  # type: ignore[arg-type]

    @cached_property
    def spec(self) -> JacobianSpec:
        return JacobianSpec.from_dict(self.attrs["spec"])

    @cached_property
    def plan(self) -> Plan:
        return Plan.from_dict(self.attrs["plan"])

    @property
    def fingerprint(self) -> dict[str, Any]:
        return dict(self.attrs["fingerprint"])

    @property
    def array(self) -> zarr.Array:
        return self._group["jacobian"]  # type: ignore[return-value]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def dims(self) -> tuple[str, ...]:
        return spec_dims(self.spec)

    def coordinate(self, name: str) -> np.ndarray:
        return np.asarray(self._group[name][:])  # type: ignore[index]

    def check_fingerprint(self, requested: dict[str, Any]) -> None:
        """Raise :class:`StoreMismatchError` naming every component that differs."""
        differences = describe_mismatch(self.fingerprint, requested)
        if differences:
            raise StoreMismatchError(
                f"The store {self.path} was produced by a different run; refusing to mix results.\n  "
                + "\n  ".join(differences)
                + "\nUse a new store path, or pass overwrite=True (--overwrite) to replace this store."
            )

    @cached_property
    def generation(self) -> str | None:
        """The store's generation id as this handle opened it (None: a store from before ids)."""
        return self.attrs.get("generation")

    def _check_generation(self) -> None:
        """Refuse to write into a store that was overwritten since this handle opened it."""
        try:
            on_disk = json.loads((self.path / "zarr.json").read_text())["attributes"][ATTRIBUTE].get("generation")
        except (OSError, KeyError, ValueError):
            on_disk = "missing"
        if on_disk != self.generation:
            raise StoreError(f"{self.path} was replaced (overwritten or deleted) by another run since this run opened it; "
                             "this run stops without writing into the new store.")

    # -- completion -------------------------------------------------------------------------
    @property
    def _manifest(self) -> zarr.Array:
        return self._group[MANIFEST]  # type: ignore[return-value]

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

    def done_blocks(self) -> set[int]:
        """Blocks recorded done whose chunk files are all present at their full size (see
        :meth:`write_block` for the commit protocol)."""
        return self.completion()[0]

    def completion(self) -> tuple[set[int], set[int]]:
        """(done, damaged): the blocks recorded done, split by whether their chunk files are all
        present at their full size; damaged ones (missing or short files) are pending again.
        One read of the manifest and one stat per chunk file."""
        done: set[int] = set()
        damaged: set[int] = set()
        for index in np.flatnonzero(self.manifest()[:, 0] == 1):
            (done if self._intact(self.plan.blocks[int(index)]) else damaged).add(int(index))
        return done, damaged

    def pending_blocks(self) -> list[Block]:
        done = self.done_blocks()
        return [b for b in self.plan.blocks if b.index not in done]

    @property
    def is_complete(self) -> bool:
        return not self.pending_blocks()

    def write_block(self, block: Block, data: np.ndarray) -> None:
        """Write a block's values (whole chunks only), then record it as done.

        The commit protocol: (1) each of the block's chunks is written to a temporary file of
        jacengine's own naming, fsynced, and renamed over the chunk's name; chunks of zeros are
        written too (all but those above a causal diagonal, see :meth:`_chunks`), so that every
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
    def _chunk_dtype(self) -> np.dtype:
        """The ``jacobian`` array's dtype, once its chunks are checked to be the raw layout that
        :meth:`write_block` writes (opened once per handle, not once per block or chunk)."""
        array = self.array
        check_raw_layout(array)
        return array.dtype

    def _write_checked_block(self, block: Block, data: np.ndarray) -> None:
        dtype = self._chunk_dtype
        with np.errstate(over="ignore"):  # float16 overflow is refused just below, with a message
            stored = np.ascontiguousarray(data, dtype=dtype)
        if dtype == np.float16:
            self._record_rounding(block, data, stored)
        chunk_shape = self.plan.chunks(self.spec)
        # encoded one at a time as they are written: the writer holds the block, not a copy of it
        files = ((path, encode_chunk(stored[local], chunk_shape, dtype)) for path, local in self._chunks(block))
        write_files(files, durable=self.durable, block_index=block.index)
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

    def _chunks(self, block: Block) -> list[tuple[Path, tuple[slice, ...]]]:
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

    def _chunk_files(self, block: Block) -> list[Path]:
        """The chunk files of ``block`` in the ``jacobian`` array."""
        return [path for path, _ in self._chunks(block)]

    def _intact(self, block: Block) -> bool:
        """Whether every chunk file of a done block exists with its exact size (a cheap check
        against power loss, which can leave a renamed file missing or short)."""
        size = int(np.prod(self.plan.chunks(self.spec))) * np.dtype(self.spec.store_dtype).itemsize
        try:
            return all(f.stat().st_size == size for f in self._chunk_files(block))
        except FileNotFoundError:
            return False

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
        return self._group[ROUNDING]  # type: ignore[return-value]

    def rounding_error(self) -> float | None:
        """The largest |stored - computed| over the done blocks of a float16 store; None otherwise."""
        if ROUNDING not in self._group:
            return None
        done = sorted(self.done_blocks())
        return float(np.asarray(self._rounding[:])[done].max()) if done else 0.0

    def record_rounding_error(self) -> None:
        """Once the store is complete, put the float16 rounding bound in the group attribute.
        Written only when complete, so concurrent shards all write the same value."""
        bound = self.rounding_error()
        if bound is not None and self.is_complete:
            attributes = dict(self.attrs, rounding_error_max_abs=bound)
            self._group.attrs[ATTRIBUTE] = attributes
            consolidate_metadata(self.path)

    def read_block(self, block: Block) -> np.ndarray:
        return np.asarray(
            self.array[block.batch_start : block.batch_stop, block.row_start : block.row_stop, :, : block.in_stop, :]
        )

    def forget_blocks(self, indices: Iterable[int]) -> None:
        """Mark blocks pending again (e.g. after verify found them corrupt)."""
        for index in indices:
            self._write_manifest_row(index, done=0, checksum=0)

    def remove_temporary_files(self, min_age_s: float = 0) -> int:
        """Delete temporary files left by writes interrupted mid-way; returns how many. With
        other processes writing to the store, pass ``min_age_s`` so their in-flight files stay."""
        return remove_temporary_files(self.path, min_age_s, time.time())

    # -- reading ----------------------------------------------------------------------------
    def to_dask(self) -> Any:
        """The Jacobian as a lazy dask array, one dask chunk per zarr chunk (float16 stores are
        read as float32, so that reductions do not accumulate in half precision)."""
        import dask.array as da
        from dask.base import tokenize

        # a name fixed by the store, so that reductions built apart share their reads when computed together
        jacobian = da.from_zarr(self.array, name=f"jacobian-{tokenize(str(self.path.resolve()), self.generation)}")
        return jacobian.astype(np.float32) if jacobian.dtype == np.float16 else jacobian  # sum in float32

    def to_xarray(self) -> Any:
        """The Jacobian as a lazy ``xarray.DataArray`` (dask-backed) with its dimension names and
        coordinates, without the store's bookkeeping arrays."""
        import xarray as xr

        return xr.open_zarr(self.path, consolidated=has_consolidated_metadata(self.path))["jacobian"]

    def to_numpy(self) -> np.ndarray:
        """Materialise the whole Jacobian (only for Jacobians that fit in memory)."""
        return np.asarray(self.array[...])

    def remove_with_this_object(self, folder: Path) -> None:
        """Delete ``folder`` (which holds this store) when this object is garbage collected or
        at exit: the lifetime of a scratch store (:mod:`jacengine.storage.scratch`)."""
        self._removal = weakref.finalize(self, shutil.rmtree, folder, True)

    def nbytes_on_disk(self) -> int:
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())

    def __repr__(self) -> str:
        done, total = len(self.done_blocks()), len(self.plan.blocks)
        return f"JacobianStore({str(self.path)!r}, shape={self.shape}, dims={self.dims}, blocks {done}/{total} done)"


def check_writable_target(path: Path, *, overwrite: bool) -> None:
    """Refuse a target that would destroy foreign data, before anything is written."""
    if path.exists():
        if not path.is_dir():
            raise StoreError(f"{path} exists and is a file, not a store directory; choose another path.")
        if is_jacengine_store(path):
            if not overwrite:
                raise StoreError(f"{path} is already a jacengine store; pass overwrite=True (--overwrite) to replace it, "
                             "or compute into it without overwrite to resume it.")
        elif (path / "zarr.json").exists():
            raise StoreError(f"{path} is a zarr store that jacengine did not write; refusing to touch it.")
        elif any(path.iterdir()):
            raise StoreError(f"{path} is a non-empty directory that is not a jacengine store; refusing to touch it.")
    ancestor = path
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise StoreError(f"cannot create {path}: {ancestor} is a file, not a directory.")
    try:  # os.access says yes to root even on read-only file systems: really try a write
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as exc:
        raise StoreError(f"cannot write to {ancestor} ({exc.strerror}); choose a writable store path.") from exc


def consolidate_metadata(path: str | Path) -> None:
    """Gather the metadata of every array and group into the root ``zarr.json``, so that readers
    such as ``xarray.open_zarr(path)`` open the store with one read. Called after every change
    of metadata (creation, the rounding bound, reductions); jacengine itself never reads the copy."""
    with warnings.catch_warnings():  # "not part of the Zarr format 3 specification": known, and readers fall back
        warnings.filterwarnings("ignore", "Consolidated metadata", category=UserWarning)
        zarr.consolidate_metadata(str(path))


def has_consolidated_metadata(path: str | Path) -> bool:
    """Whether the store's root holds consolidated metadata (stores from jacengine 0.1.0 do not)."""
    try:
        return json.loads((Path(path) / "zarr.json").read_text()).get("consolidated_metadata") is not None
    except (OSError, ValueError):
        return False


def _remove_unless_in_use(path: Path) -> None:
    """Remove the store at ``path`` (to overwrite it), refusing while another run holds it."""
    with store_lock(path, exclusive=True) as alone:
        if alone is False:
            raise StoreError(f"another jacengine run is writing to {path}; refusing to overwrite it under that run. "
                             "Wait for it to finish (or stop it), then overwrite.")
        shutil.rmtree(path)


def _create_arrays(group: zarr.Group, spec: JacobianSpec, plan: Plan) -> None:
    """The store's arrays, empty: the Jacobian (uncompressed, zero where never written), its
    coordinates, the manifest (one row per block), and with float16 storage the rounding errors."""
    group.create_array("jacobian", shape=spec.shape, chunks=plan.chunks(spec), dtype=spec.store_dtype, fill_value=0,
                       dimension_names=spec_dims(spec), compressors=None)
    coordinates = {"t_out": spec.t_out_coordinate, "f_out": spec.f_out,
                   spec.in_axis: tuple(range(spec.in_axis_length)), "f_in": spec.f_in}
    for name, values in coordinates.items():
        coordinate = group.create_array(name, shape=(len(values),), dtype="int64", dimension_names=(name,))
        coordinate[:] = np.asarray(values, dtype="int64")
    group.create_array(MANIFEST, shape=(len(plan.blocks), 3), chunks=(1, 3), dtype="uint64", fill_value=0,
                       dimension_names=("block", "field"),
                       compressors=None)  # 24 raw bytes per row: nothing to half-decode
    if spec.store_dtype == "float16":
        group.create_array(ROUNDING, shape=(len(plan.blocks),), chunks=(1,), dtype="float64", fill_value=0,
                           dimension_names=("block",))


def open_store(path: str | Path, mode: str = "r") -> JacobianStore:
    """Open an existing Jacobian store (``mode="r+"`` to resume writing into it)."""
    return JacobianStore(path, mode=mode)
