"""The on-disk Jacobian store (format version 3, a public contract described in docs/store-format.md).

One zarr v3 group holding the ``jacobian`` array, 1-D coordinate arrays named like its
dimensions, a ``block_manifest`` array recording which blocks are done (and their checksums),
and the group attribute ``jacengine`` with the spec, plan and fingerprint that produced it.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
import uuid
import warnings
import weakref
from collections.abc import Iterable, Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec

from jacengine._version import __version__
from jacengine.errors import StoreError, StoreMismatchError
from jacengine.planning.blocks import Block, Plan
from jacengine.planning.spec import JacobianSpec
from jacengine.storage.chunkfiles import fsync_files, raise_if_disk_full, remove_temporary_files
from jacengine.storage.ledger import ATTRIBUTE, MANIFEST, ROUNDING, BlockLedger
from jacengine.storage.locking import store_lock
from jacengine.storage.publishing import publish, staged

MARKER = f"{MANIFEST}/jacengine-store"  # jacengine's own mark on its stores (beside the lock: not a zarr member)

FORMAT_VERSION = 3
# format 1: a compressed manifest without row checks; format 2: chunks without their CRC-32C.
# Both are read and resumed as they are.
READABLE_FORMATS = (1, 2, 3)


def spec_dims(spec: JacobianSpec) -> tuple[str, ...]:
    """The dimension names of the ``jacobian`` array of ``spec``'s layout."""
    return ("batch", "t_out", "f_out", spec.in_axis, "f_in")


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

    Open existing stores with :func:`open_store`; create them with :meth:`create`. This class
    holds the metadata and the arrays; which blocks are done, and the commit protocol that
    writes them, are its :attr:`ledger`'s (:class:`~jacengine.storage.ledger.BlockLedger`).
    """

    def __init__(self, path: str | Path, mode: str = "r", *, durable: bool = True) -> None:
        self.path = Path(path)
        self.durable = durable  # fsync each block before recording it done (see BlockLedger.write)
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

        The store is built beside ``path`` and renamed into place whole
        (:mod:`jacengine.storage.publishing`): a creation that dies, or runs out of disk, leaves
        nothing under ``path``, and an overwritten store stays whole until the new one is.
        ``sources`` records the model and inputs file paths (when they were files), so that
        ``jacengine verify`` can find them again; they are not part of the fingerprint.
        """
        path = Path(path)
        plan.check_alignment(spec)
        check_writable_target(path, overwrite=overwrite)
        with staged(path) as staging, _disk_full_is_said(path):
            _build(staging, spec, plan, {
                "format": FORMAT_VERSION,
                "version": __version__,
                "layout": spec.layout,
                "causal": spec.causal,
                "spec": spec.to_dict(),
                "plan": plan.to_dict(),
                "fingerprint": fingerprint,
                "sources": sources or {},
                "generation": uuid.uuid4().hex,  # new on every creation: see jacengine.storage.locking
            })
            _publish_store(staging, path, overwrite=overwrite, durable=durable)
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

    # -- completion: the commit protocol lives in jacengine.storage.ledger ---------------------
    @cached_property
    def ledger(self) -> BlockLedger:
        """The store's blocks: which are done, and the commit protocol that records them."""
        return BlockLedger(self.path, self._group, self.spec, self.plan, generation=self.generation,
                           durable=self.durable)

    def manifest(self) -> np.ndarray:
        """(n_blocks, 2) array of [done flag, checksum] per block (:meth:`BlockLedger.manifest`)."""
        return self.ledger.manifest()

    def completion(self) -> tuple[set[int], set[int]]:
        """(done, damaged) blocks (:meth:`BlockLedger.completion`)."""
        return self.ledger.completion()

    def done_blocks(self) -> set[int]:
        """Blocks recorded done whose chunk files are all present at their full size."""
        return self.completion()[0]

    def pending_blocks(self) -> list[Block]:
        done = self.done_blocks()
        return [b for b in self.plan.blocks if b.index not in done]

    @property
    def is_complete(self) -> bool:
        return not self.pending_blocks()

    def write_block(self, block: Block, data: np.ndarray) -> None:
        """Write a block's values, then record it as done (:meth:`BlockLedger.write`: the commit protocol)."""
        self.ledger.write(block, data)

    def forget_blocks(self, indices: Iterable[int]) -> None:
        """Mark blocks pending again (e.g. after verify found them corrupt)."""
        self.ledger.forget(indices)

    def rounding_error(self) -> float | None:
        """The largest |stored - computed| over the done blocks of a float16 store; None otherwise."""
        return self.ledger.rounding_error()

    def record_rounding_error(self) -> None:
        """Once the store is complete, put the float16 rounding bound in the group attribute.
        Written only when complete, so concurrent shards all write the same value."""
        bound = self.rounding_error()
        if bound is not None and self.is_complete:
            attributes = dict(self.attrs, rounding_error_max_abs=bound)
            self._group.attrs[ATTRIBUTE] = attributes
            consolidate_metadata(self.path)

    def remove_temporary_files(self, min_age_s: float = 0) -> int:
        """Delete temporary files left by writes interrupted mid-way; returns how many. With
        other processes writing to the store, pass ``min_age_s`` so their in-flight files stay."""
        return remove_temporary_files(self.path, min_age_s, time.time())

    def read_block(self, block: Block) -> np.ndarray:
        return np.asarray(
            self.array[block.batch_start : block.batch_stop, block.row_start : block.row_stop, :, : block.in_stop, :]
        )

    # -- reading ----------------------------------------------------------------------------
    # Every reader checks completion first: a pending block (never written, or corrupt) would
    # read as zeros, or fail its checksum, and an answer built on it would be silently wrong.
    def pending_for_reading(self, partial: bool) -> list[Block]:
        """The pending blocks, once it is checked that the caller accepts them: raises
        :class:`StoreError` on an incomplete store unless ``partial``."""
        pending = self.pending_blocks()
        if pending and not partial:
            listed = ", ".join(str(b.index) for b in pending[:20]) + (" ..." if len(pending) > 20 else "")
            raise StoreError(
                f"{self.path} is incomplete: {len(pending)} of {len(self.plan.blocks)} blocks pending ({listed}), "
                "never written or found corrupt. Finish it by rerunning compute (it recomputes them), or pass "
                "partial=True (--partial) to read the pending blocks as NaN."
            )
        return pending

    def to_dask(self, partial: bool = False) -> Any:
        """The Jacobian as a lazy dask array, one dask chunk per zarr chunk (float16 stores are
        read as float32, so that reductions do not accumulate in half precision). Raises on an
        incomplete store unless ``partial``: then the pending blocks read as NaN, without
        reading their chunk files."""
        import dask.array as da
        from dask.base import tokenize

        pending = self.pending_for_reading(partial)
        source = self.array if not pending else _SkippingPending(self.array, self.plan.chunks(self.spec),
                                                                  self._chunk_indices(pending))
        # a name fixed by the store's content, so that reductions built apart share their reads when computed together
        name = f"jacobian-{tokenize(str(self.path.resolve()), self.generation, sorted(b.index for b in pending))}"
        jacobian = da.from_array(source, chunks=self.array.chunks, name=name, asarray=True, fancy=False)
        return jacobian.astype(np.float32) if jacobian.dtype == np.float16 else jacobian  # sum in float32

    def to_xarray(self, partial: bool = False) -> Any:
        """The Jacobian as a lazy ``xarray.DataArray`` (dask-backed) with its dimension names and
        coordinates, without the store's bookkeeping arrays; ``partial`` as for :meth:`to_dask`."""
        import xarray as xr

        if not self.pending_for_reading(partial):
            return xr.open_zarr(self.path, consolidated=has_consolidated_metadata(self.path))["jacobian"]
        coords = {name: self.coordinate(name) for name in self.dims[1:]}
        return xr.DataArray(self.to_dask(partial=True), dims=self.dims, coords=coords, name="jacobian")

    def to_numpy(self, partial: bool = False) -> np.ndarray:
        """Materialise the whole Jacobian (only for Jacobians that fit in memory); ``partial`` as
        for :meth:`to_dask`."""
        if not self.pending_for_reading(partial):
            return np.asarray(self.array[...])
        return np.asarray(self.to_dask(partial=True).compute(scheduler="synchronous"), dtype=self.array.dtype)

    def _chunk_indices(self, blocks: Iterable[Block]) -> set[tuple[int, ...]]:
        """The grid indices of the ``jacobian`` chunks of ``blocks``."""
        root = self.path / "jacobian" / "c"
        return {tuple(int(part) for part in path.relative_to(root).parts)
                for block in blocks for path in self.ledger.chunk_files(block)}

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
        elif (path / MARKER).is_file():
            if not overwrite:
                raise StoreError(f"{path} is a jacengine store whose metadata cannot be read (damaged: its zarr.json is "
                                 "missing or not valid); pass overwrite=True (--overwrite) to replace it with a new one.")
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
    fsync_files([Path(path) / "zarr.json"])  # zarr renames it into place, without an fsync


def has_consolidated_metadata(path: str | Path) -> bool:
    """Whether the store's root holds consolidated metadata (stores from jacengine 0.1.0 do not)."""
    try:
        return json.loads((Path(path) / "zarr.json").read_text()).get("consolidated_metadata") is not None
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def _disk_full_is_said(path: Path) -> Iterator[None]:
    """A full disk while creating ``path`` as :class:`DiskFullError` (nothing was created)."""
    try:
        yield
    except OSError as exc:
        raise_if_disk_full(exc, path)
        raise


def _build(folder: Path, spec: JacobianSpec, plan: Plan, attributes: dict[str, Any]) -> None:
    """A new store's content in ``folder``: the arrays, the group attribute, consolidated
    metadata, and jacengine's marker (a store whose metadata is damaged is still recognised)."""
    group = zarr.open_group(str(folder), mode="w", zarr_format=3)
    _create_arrays(group, spec, plan)
    group.attrs[ATTRIBUTE] = attributes
    consolidate_metadata(folder)
    (folder / MARKER).write_text(json.dumps({"jacengine_store_format": attributes["format"]}))


def _publish_store(staging: Path, path: Path, *, overwrite: bool, durable: bool) -> None:
    """Rename the built store into place; replacing a store only while no other run holds it."""
    with store_lock(path, exclusive=True) if overwrite and path.exists() else contextlib.nullcontext(True) as alone:
        if alone is False:
            raise StoreError(f"another jacengine run is writing to {path}; refusing to overwrite it under that run. "
                             "Wait for it to finish (or stop it), then overwrite.")
        try:
            publish(staging, path, replace=overwrite, durable=durable)
        except FileExistsError:
            raise StoreError(f"another run created {path} while this one was creating it; rerun this command without "
                             "overwrite to resume that store (or with overwrite to replace it).") from None


def _create_arrays(group: zarr.Group, spec: JacobianSpec, plan: Plan) -> None:
    """The store's arrays, empty: the Jacobian (uncompressed and checksummed, zero where never written), its
    coordinates, the manifest (one row per block), and with float16 storage the rounding errors."""
    group.create_array("jacobian", shape=spec.shape, chunks=plan.chunks(spec), dtype=spec.store_dtype, fill_value=0,
                       dimension_names=spec_dims(spec), compressors=[Crc32cCodec()])  # raw bytes, then their CRC-32C
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


class _SkippingPending:
    """The ``jacobian`` array for ``dask.array.from_array``: each chunk read from zarr, except
    the chunks of pending blocks, which are NaN and never read (their files may be corrupt)."""

    def __init__(self, array: zarr.Array, chunks: tuple[int, ...], pending: set[tuple[int, ...]]) -> None:
        self.array, self.chunks, self.pending = array, chunks, pending
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        if tuple(k.start // size for k, size in zip(key, self.chunks, strict=True)) in self.pending:
            return np.full(tuple(k.stop - k.start for k in key), np.nan, dtype=self.dtype)
        return np.asarray(self.array[key])
