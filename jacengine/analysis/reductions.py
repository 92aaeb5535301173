"""Out-of-core reductions of a stored Jacobian with dask, as ``xarray.Dataset``s written back
under ``reductions/<name>``.

Every reduction is lazy: it reads the store chunk by chunk through ``dask.array.from_zarr``, so
memory is bounded by a few chunks whatever the store's size. :func:`reduce_many` computes several
of them in one pass over the store (the graphs share their reads and their saliency map), writes
each with ``Dataset.to_zarr(group="reductions/<name>")`` and returns them opened from there, so
nothing is computed twice. Written results open anywhere with
``xarray.open_zarr(store, group="reductions/saliency")``.

An incomplete store is refused (missing blocks would read as zeros and bias every statistic)
unless ``partial=True``: then the chunks of missing blocks are masked as NaN, NaN-aware
reductions skip them, and the result records the fraction of (sample, output step) rows reduced.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
import zarr

from jacengine.errors import InputError
from jacengine.progress import dask_progress
from jacengine.storage.publishing import publish, staged
from jacengine.storage.store import JacobianStore, consolidate_metadata

REDUCTIONS_GROUP = "reductions"
NAME_ATTRIBUTE = "jacengine_reduction"  # each result's attribute naming the reduction that made it


def jacobian_for_reduction(store: JacobianStore, partial: bool = False) -> tuple[da.Array, float]:
    """The store as a dask array, with missing blocks masked as NaN when ``partial``.

    Returns the array and the fraction of (sample, output step) rows that are present.
    """
    pending = store.pending_for_reading(partial)
    present = np.ones((store.spec.batch, len(store.spec.t_out)), dtype=bool)
    for block in pending:
        present[block.batch_start : block.batch_stop, block.row_start : block.row_stop] = False
    return store.to_dask(partial=partial), float(present.mean())


def reduction_name(result: xr.Dataset) -> str:
    """The name of the reduction that produced ``result`` (``saliency``, ``lag-profile``, ...)."""
    return str(result.attrs[NAME_ATTRIBUTE])


def _dataset(name: str, variables: dict[str, tuple[tuple[str, ...], Any]], coords: dict[str, Any],
             attrs: dict[str, Any]) -> xr.Dataset:
    return xr.Dataset(variables, coords=coords, attrs={NAME_ATTRIBUTE: name, **attrs})


def _coords(store: JacobianStore, *names: str) -> dict[str, np.ndarray]:
    return {name: store.coordinate(name) for name in names}


def _entry_dims(store: JacobianStore) -> tuple[str, ...]:
    """The dimensions of one sample's Jacobian: (t_out, f_out, t_in or lag, f_in)."""
    return store.dims[1:]


def saliency(store: JacobianStore, partial: bool = False) -> xr.Dataset:
    """Mean over the batch of |J| (``mean_abs``) and of J (``mean``), per (t_out, f_out, t_in, f_in)
    (lag instead of t_in in the lag layout)."""
    jacobian, coverage = jacobian_for_reduction(store, partial)
    dims = _entry_dims(store)
    return _dataset(
        "saliency",
        {"mean_abs": (dims, da.nanmean(abs(jacobian), axis=0)), "mean": (dims, da.nanmean(jacobian, axis=0))},
        _coords(store, *dims), {"coverage": coverage},
    )


def feature_importance(store: JacobianStore, partial: bool = False) -> xr.Dataset:
    """Per output step: the sum over input steps of |J| for each input feature, mean over the batch
    (in the lag layout: over the stored lags only)."""
    jacobian, coverage = jacobian_for_reduction(store, partial)
    dims = ("t_out", "f_out", "f_in")
    importance = da.nanmean(abs(jacobian).sum(axis=3), axis=0)
    return _dataset("feature-importance", {"sum_abs": (dims, importance)}, _coords(store, *dims), {"coverage": coverage})


def window_sum(store: JacobianStore, start: int, stop: int, partial: bool = False) -> xr.Dataset:
    """Sum of J over input steps [start, stop), per sample and output step (the seed's
    ``reduce_sum(grads[:, :, :, :10], axis=3)``)."""
    if store.spec.layout == "lag":
        raise InputError(
            "window-sum sums J over input steps, and this store holds lags (layout 'lag'). Compute the store with "
            "layout='full' (--layout full), or the sum directly without J: jacengine.directional(model, x, "
            "over='inputs', t_in=slice(start, stop)) (jacengine directional --over inputs --t-in start:stop)."
        )
    steps = store.spec.input_steps
    if not 0 <= start < stop <= steps:
        raise InputError(f"window [{start}, {stop}) must lie within the {steps} input steps (--window start:stop).")
    jacobian, coverage = jacobian_for_reduction(store, partial)
    dims = ("batch", "t_out", "f_out", "f_in")
    total = jacobian[:, :, :, start:stop, :].sum(axis=3)
    return _dataset("window-sum", {"sum": (dims, total)}, _coords(store, "t_out", "f_out", "f_in"),
                    {"coverage": coverage, "window_start": start, "window_stop": stop})


def lag_profile(store: JacobianStore, fraction: float = 0.9, partial: bool = False) -> xr.Dataset:
    """Mean |J| as a function of lag = t_out - t_in, per (f_out, f_in): the model's memory.

    Also the smallest lag L such that lags 0..L hold ``fraction`` of the total influence (sum of
    mean |J| over lags >= 0), per (f_out, f_in). Negative lags (the future) appear only for
    non-causal models. In the lag layout the lags are the stored ones (0..max_lag-1), and the
    fraction is of the influence within them. Derived from the saliency map (To, Fo, Ti or L, Fi),
    whose graph it shares with :func:`saliency` when both are computed together.
    """
    if not 0 < fraction <= 1:
        raise InputError(f"fraction must be in (0, 1] (--fraction), got {fraction}.")
    mean_abs = saliency(store, partial)
    t_out = store.coordinate("t_out")
    if store.spec.layout == "lag":
        lags = store.coordinate("lag")
    else:
        steps = store.spec.input_steps
        lags = np.arange(0 if store.attrs["causal"] else -(steps - 1), steps)
    whole = mean_abs["mean_abs"].data.rechunk(-1)  # the small saliency map in one piece
    both = whole.map_blocks(_lag_profile_and_totals, t_out, store.coordinate(store.spec.in_axis), lags, store.spec.layout,
                            chunks=((2,), (lags.size,), (whole.shape[1],), (whole.shape[3],)), dtype=np.float64)
    profile, totals = both[0], both[1]
    quantile_lag = totals.map_blocks(_quantile_lag, lags, fraction, drop_axis=0, dtype=np.int64)
    dims = ("lag", "f_out", "f_in")
    return _dataset(
        "lag-profile",
        {"mean_abs": (dims, profile), "total_abs": (dims, totals), "quantile_lag": (("f_out", "f_in"), quantile_lag)},
        {"lag": lags, **_coords(store, "f_out", "f_in")},
        {"coverage": mean_abs.attrs["coverage"], "fraction": fraction},
    )


def _lag_profile_and_totals(values: np.ndarray, t_out: np.ndarray, in_coordinate: np.ndarray, lags: np.ndarray,
                            layout: str) -> np.ndarray:
    """From the saliency map (To, Fo, Ti or L, Fi): the mean |J| per lag and the total per lag,
    stacked as (2, lags, Fo, Fi)."""
    if layout == "lag":
        reached = (t_out[:, None] - lags[None, :] >= 0)[:, None, :, None]  # lag l of step s exists when s - l >= 0
        totals = np.nan_to_num(np.where(reached, values, 0)).sum(axis=0).transpose(1, 0, 2)
        counts = reached[:, 0, :, 0].sum(axis=0)
    else:
        totals = np.zeros((lags.size, values.shape[1], values.shape[3]))
        counts = np.zeros(lags.size)
        for i, step in enumerate(t_out):
            lag_of_t_in = step - in_coordinate
            keep = (lag_of_t_in >= lags[0]) & (lag_of_t_in <= lags[-1])
            where = lag_of_t_in[keep] - lags[0]
            totals[where] += np.nan_to_num(values[i][:, keep, :]).transpose(1, 0, 2)
            counts[where] += 1
    return np.stack([totals / np.maximum(counts, 1)[:, None, None], totals])


def _quantile_lag(totals: np.ndarray, lags: np.ndarray, fraction: float) -> np.ndarray:
    """The smallest lag L >= 0 such that lags 0..L hold ``fraction`` of the influence, per (Fo, Fi)."""
    past = totals[lags >= 0]
    cumulative = np.cumsum(past, axis=0) / np.maximum(past.sum(axis=0), 1e-300)
    return np.argmax(cumulative >= fraction - 1e-12, axis=0).astype(np.int64)


def top_k(store: JacobianStore, k: int = 5, partial: bool = False) -> xr.Dataset:
    """For each (t_out, f_out), the k input entries (t_in or lag, f_in) with the largest mean |J|."""
    to, fo, ti, fi = store.shape[1:]
    if not 1 <= k <= ti * fi:
        raise InputError(f"k must be between 1 and {ti * fi} (--k), got {k}.")
    mean_abs = saliency(store, partial)
    in_axis = store.spec.in_axis
    flat = mean_abs["mean_abs"].data.rechunk(-1).reshape(to, fo, ti * fi)
    order = flat.map_blocks(_largest, k, chunks=((to,), (fo,), (k,)), dtype=np.int64)
    coordinates = store.coordinate(in_axis), store.coordinate("f_in")
    dims = ("t_out", "f_out", "rank")
    return _dataset(
        "top-k",
        {in_axis: (dims, order.map_blocks(lambda o: coordinates[0][o // fi], dtype=np.int64)),
         "f_in": (dims, order.map_blocks(lambda o: coordinates[1][o % fi], dtype=np.int64)),
         "mean_abs": (dims, da.map_blocks(lambda v, o: np.take_along_axis(v, o, axis=2), flat, order,
                                              chunks=order.chunks, dtype=flat.dtype))},
        {**_coords(store, "t_out", "f_out"), "rank": np.arange(k)},
        {"coverage": mean_abs.attrs["coverage"], "k": k},
    )


def _largest(flat: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k largest values along the last axis, largest first (NaN last)."""
    return np.argsort(-np.nan_to_num(flat, nan=-np.inf), axis=2, kind="stable")[:, :, :k]


def batch_std(store: JacobianStore, partial: bool = False) -> xr.Dataset:
    """Standard deviation of J over the batch, per entry: dask's ``nanstd``, which combines the
    chunks' central moments (stable where the naive mean of squares less the squared mean
    cancels), in float64. Entries of no computed sample (pending blocks) are NaN."""
    jacobian, coverage = jacobian_for_reduction(store, partial)
    sampled = ~da.isnan(jacobian).all(axis=0)  # entries with no sample would warn of a division by zero
    std = da.nanstd(da.where(sampled, jacobian.astype("float64"), 0.0), axis=0)
    std = da.where(sampled, std, np.nan).astype("float32")
    dims = _entry_dims(store)
    return _dataset("std", {"std": (dims, std)}, _coords(store, *dims), {"coverage": coverage})


def batch_quantiles(store: JacobianStore, quantiles: tuple[float, ...] = (0.1, 0.5, 0.9),
                    partial: bool = False) -> xr.Dataset:
    """Quantiles of J over the batch, per entry. Exact quantiles need every sample of an entry at
    once: the array is rechunked to whole batches with fewer entries per chunk, keeping memory
    at about one original chunk's worth."""
    jacobian, coverage = jacobian_for_reduction(store, partial)
    batch = jacobian.shape[0]
    per_chunk = max(1, int(np.prod(jacobian.chunksize)) // batch)
    t_in_chunk = max(1, min(jacobian.shape[3], per_chunk // max(1, jacobian.shape[2] * jacobian.shape[4])))
    whole = jacobian.rechunk((batch, 1, -1, t_in_chunk, -1))
    q = np.asarray(quantiles)
    result = whole.map_blocks(
        lambda block: np.nanquantile(block, q, axis=0).astype("float32"), chunks=((q.size,), *whole.chunks[1:]),
        dtype="float32",
    )
    dims = ("quantile", *_entry_dims(store))
    return _dataset("quantiles", {"quantile_values": (dims, result)},
                    {"quantile": q, **_coords(store, *_entry_dims(store))}, {"coverage": coverage})


def custom(store: JacobianStore, name: str, function: Callable[[da.Array], Any], dims: tuple[str, ...],
           partial: bool = False) -> xr.Dataset:
    """A user-defined reduction: ``function`` maps the Jacobian as a dask array (dims batch, t_out,
    f_out, t_in or lag, f_in) to a dask or numpy array with dimension names ``dims``; coordinates are
    attached for the dimensions the store labels. Write it with :func:`write_reductions`."""
    jacobian, coverage = jacobian_for_reduction(store, partial)
    result = function(jacobian)
    if np.ndim(result) != len(dims):
        raise InputError(f"the function of reduction {name!r} returns an array of {np.ndim(result)} dimension(s), but "
                         f"dims={tuple(dims)} names {len(dims)}; pass one name per dimension of its result.")
    labelled = {d for d in dims if d in _entry_dims(store)}
    return _dataset(name, {"values": (tuple(dims), result)}, _coords(store, *sorted(labelled)), {"coverage": coverage})


REDUCTIONS: dict[str, Callable[..., xr.Dataset]] = {
    "saliency": saliency,
    "lag-profile": lag_profile,
    "feature-importance": feature_importance,
    "window-sum": window_sum,
    "top-k": top_k,
    "std": batch_std,
    "quantiles": batch_quantiles,
}


def write_reductions(store: JacobianStore, results: Iterable[xr.Dataset], *, progress: bool | None = None) -> list[str]:
    """Write each result under ``reductions/<name>``, replacing an earlier result of that name,
    computing all of them in one pass; returns the group paths.

    Each result is written into a staging group beside its name and renamed into place once
    whole (:mod:`jacengine.storage.publishing`): a reduction killed half-way, or out of disk,
    leaves the earlier result as it was. The Jacobian and the other results stay.
    """
    sources: list[da.Array] = []
    targets: list[zarr.Array] = []
    with contextlib.ExitStack() as staging_groups:
        finished = {}
        for result in results:
            final = store.path / REDUCTIONS_GROUP / reduction_name(result)
            staging = staging_groups.enter_context(staged(final))
            group = f"{REDUCTIONS_GROUP}/{staging.name}"
            uniform = _uniform_chunks(result)
            # xarray writes the metadata, coordinates and in-memory variables now; the dask variables
            # of every result go to one da.store below, whose single graph reads each chunk once
            uniform.to_zarr(store.path, group=group, mode="w-", compute=False, consolidated=False, zarr_format=3)
            for name, variable in uniform.data_vars.items():
                if isinstance(variable.data, da.Array):
                    sources.append(variable.data)
                    targets.append(zarr.open_array(str(store.path), path=f"{group}/{name}", mode="r+"))
            finished[staging] = final
        with dask_progress("reduce", progress):
            da.store(sources, targets, lock=False)  # type: ignore[arg-type]  # zarr arrays are valid targets
        for staging, final in finished.items():
            publish(staging, final, replace=True, durable=store.durable)
    consolidate_metadata(store.path)
    return [f"{REDUCTIONS_GROUP}/{final.name}" for final in finished.values()]


def _uniform_chunks(result: xr.Dataset) -> xr.Dataset:
    """Each dask variable rechunked to equal chunks (but the last), as zarr stores them: one dask
    chunk per zarr chunk, so that parallel writes never share a chunk."""
    uniform = result.copy()
    for name, variable in result.data_vars.items():
        if isinstance(variable.data, da.Array):
            uniform[name] = variable.copy(data=variable.data.rechunk(tuple(max(c) for c in variable.data.chunks)))
    return uniform


def reduce_many(store: JacobianStore | str, requests: Mapping[str, Mapping[str, Any]] | Iterable[str], *,
                write: bool = True, partial: bool = False, progress: bool | None = None) -> dict[str, xr.Dataset]:
    """Run several reductions in one pass over the store; returns ``{op: Dataset}``.

    ``requests`` names the ops (:data:`REDUCTIONS`), or maps each to its options, e.g.
    ``{"lag-profile": {"fraction": 0.9}, "window-sum": {"start": 0, "stop": 10}}``. With ``write``
    (the default) each result is stored under ``reductions/<op>`` and returned opened from there
    (lazy, cheap to read again); without, the results are computed into memory.
    """
    if not isinstance(store, JacobianStore):
        store = JacobianStore(store)
    requested = dict(requests) if isinstance(requests, Mapping) else {op: {} for op in requests}
    unknown = sorted(set(requested) - set(REDUCTIONS))
    if unknown:
        raise InputError(f"unknown reduction(s) {unknown}; choose from {sorted(REDUCTIONS)}.")
    lazy = {op: REDUCTIONS[op](store, partial=partial, **options) for op, options in requested.items()}
    if not write:
        with dask_progress("reduce", progress):
            computed = dask.compute(*lazy.values())
        return dict(zip(lazy, computed, strict=True))
    paths = write_reductions(store, lazy.values(), progress=progress)
    return {op: xr.open_zarr(store.path, group=path, consolidated=False) for op, path in zip(lazy, paths, strict=True)}


def reduce(store: JacobianStore | str, op: str, *, write: bool = True, partial: bool = False,
           progress: bool | None = None, **options: Any) -> xr.Dataset:
    """Run the named reduction ``op`` (one of :data:`REDUCTIONS`) and, by default, store it:
    :func:`reduce_many` with one op."""
    return reduce_many(store, {op: options}, write=write, partial=partial, progress=progress)[op]
