"""Out-of-core reductions of a stored Jacobian with dask, written back under ``reductions/<name>``.

Every reduction reads the store chunk by chunk through ``dask.array.from_zarr``, so memory is
bounded by a few chunks whatever the store's size. Results are small xarray-compatible groups:
``xarray.open_zarr(store, group="reductions/saliency")``.

An incomplete store is refused (missing blocks would read as zeros and bias every statistic)
unless ``partial=True``: then the chunks of missing blocks are masked as NaN, NaN-aware
reductions skip them, and the result records the fraction of (sample, output step) rows reduced.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dask.array as da
import numpy as np
import zarr

from jacengine.errors import InputError, StoreError
from jacengine.storage.store import JacobianStore

REDUCTIONS_GROUP = "reductions"


@dataclass
class Reduction:
    """Named result arrays with their dimension names, plus scalar attributes."""

    name: str
    arrays: dict[str, tuple[Any, tuple[str, ...]]]
    coords: dict[str, np.ndarray]
    attrs: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> np.ndarray:
        return np.asarray(self.arrays[key][0])


def jacobian_for_reduction(store: JacobianStore, partial: bool = False) -> tuple[da.Array, float]:
    """The store as a dask array, with missing blocks masked as NaN when ``partial``.

    Returns the array and the fraction of (sample, output step) rows that are present.
    """
    pending = store.pending_blocks()
    jacobian = store.to_dask()
    if not pending:
        return jacobian, 1.0
    if not partial:
        listed = ", ".join(str(b.index) for b in pending[:20]) + (" ..." if len(pending) > 20 else "")
        raise StoreError(
            f"{store.path} is incomplete: {len(pending)} of {len(store.plan.blocks)} blocks missing ({listed}). "
            "Finish it by rerunning compute, or pass partial=True (--partial) to reduce the completed part only."
        )
    spec, plan = store.spec, store.plan
    present = np.ones((spec.batch, len(spec.t_out)), dtype=bool)
    for block in pending:
        present[block.batch_start : block.batch_stop, block.row_start : block.row_stop] = False
    mask = da.from_array(present, chunks=(plan.batch_chunk, plan.t_out_chunk))[:, :, None, None, None]
    return da.where(mask, jacobian, np.nan), float(present.mean())


def _coords(store: JacobianStore, *names: str) -> dict[str, np.ndarray]:
    return {name: store.coordinate(name) for name in names}


def _entry_dims(store: JacobianStore) -> tuple[str, ...]:
    """The dimensions of one sample's Jacobian: (t_out, f_out, t_in or lag, f_in)."""
    return store.dims[1:]


def saliency(store: JacobianStore, partial: bool = False) -> Reduction:
    """Mean over the batch of |J| and of J, per (t_out, f_out, t_in, f_in) (lag instead of t_in
    in the lag layout)."""
    jacobian, coverage = jacobian_for_reduction(store, partial)
    dims = _entry_dims(store)
    return Reduction(
        "saliency",
        {"mean_abs": (da.nanmean(abs(jacobian), axis=0), dims), "mean": (da.nanmean(jacobian, axis=0), dims)},
        _coords(store, *dims),
        {"coverage": coverage},
    )


def feature_importance(store: JacobianStore, partial: bool = False) -> Reduction:
    """Per output step: the sum over input steps of |J| for each input feature, mean over the batch
    (in the lag layout: over the stored lags only)."""
    jacobian, coverage = jacobian_for_reduction(store, partial)
    dims = ("t_out", "f_out", "f_in")
    importance = da.nanmean(abs(jacobian).sum(axis=3), axis=0)
    return Reduction("feature-importance", {"sum_abs": (importance, dims)}, _coords(store, *dims), {"coverage": coverage})


def window_sum(store: JacobianStore, start: int, stop: int, partial: bool = False) -> Reduction:
    """Sum of J over input steps [start, stop), per sample and output step (the seed's
    ``reduce_sum(grads[:, :, :, :10], axis=3)``)."""
    if store.spec.layout == "lag":
        raise InputError(
            "window-sum sums J over input steps, and this store holds lags (layout 'lag'). Compute the store with "
            "layout='full', or the sum directly without J: jacengine.directional(model, x, over='inputs', t_in=slice(start, stop))."
        )
    steps = store.spec.input_steps
    if not 0 <= start < stop <= steps:
        raise InputError(f"window [{start}, {stop}) must lie within the {steps} input steps.")
    jacobian, coverage = jacobian_for_reduction(store, partial)
    dims = ("batch", "t_out", "f_out", "f_in")
    total = jacobian[:, :, :, start:stop, :].sum(axis=3)
    return Reduction(
        "window-sum", {"sum": (total, dims)}, _coords(store, "t_out", "f_out", "f_in"),
        {"coverage": coverage, "window_start": start, "window_stop": stop},
    )


def lag_profile(
    store: JacobianStore, fraction: float = 0.9, partial: bool = False, mean_abs: np.ndarray | None = None
) -> Reduction:
    """Mean |J| as a function of lag = t_out - t_in, per (f_out, f_in): the model's memory.

    Also the smallest lag L such that lags 0..L hold ``fraction`` of the total influence (sum of
    mean |J| over lags >= 0), per (f_out, f_in). Negative lags (the future) appear only for
    non-causal models. In the lag layout the lags are the stored ones (0..max_lag-1), and the
    fraction is of the influence within them. Computed from the saliency map (To, Fo, Ti or L,
    Fi), which is small; pass it as ``mean_abs`` when already computed to save a pass over the store.
    """
    if not 0 < fraction <= 1:
        raise InputError(f"fraction must be in (0, 1], got {fraction}.")
    coverage = jacobian_for_reduction(store, partial)[1]
    values = saliency(store, partial)["mean_abs"] if mean_abs is None else mean_abs
    t_out = store.coordinate("t_out")
    if store.spec.layout == "lag":
        lags = store.coordinate("lag")
        reached = (t_out[:, None] - lags[None, :] >= 0)[:, None, :, None]  # lag l of step s exists when s - l >= 0
        totals = np.nan_to_num(np.where(reached, values, 0)).sum(axis=0).transpose(1, 0, 2)
        counts = reached[:, 0, :, 0].sum(axis=0)
    else:
        t_in = store.coordinate("t_in")
        lags = np.arange(0 if store.attrs["causal"] else -(t_in.size - 1), t_in.size)
        totals = np.zeros((lags.size, values.shape[1], values.shape[3]))
        counts = np.zeros(lags.size)
        for i, step in enumerate(t_out):
            lag_of_t_in = step - t_in
            keep = (lag_of_t_in >= lags[0]) & (lag_of_t_in <= lags[-1])
            where = lag_of_t_in[keep] - lags[0]
            totals[where] += np.nan_to_num(values[i][:, keep, :]).transpose(1, 0, 2)
            counts[where] += 1
    profile = totals / np.maximum(counts, 1)[:, None, None]
    past = totals[lags >= 0]
    cumulative = np.cumsum(past, axis=0) / np.maximum(past.sum(axis=0), 1e-300)
    quantile_lag = np.argmax(cumulative >= fraction - 1e-12, axis=0)
    return Reduction(
        "lag-profile",
        {
            "mean_abs": (profile, ("lag", "f_out", "f_in")),
            "total_abs": (totals, ("lag", "f_out", "f_in")),
            "quantile_lag": (quantile_lag, ("f_out", "f_in")),
        },
        {"lag": lags, **_coords(store, "f_out", "f_in")},
        {"coverage": coverage, "fraction": fraction},
    )


def top_k(store: JacobianStore, k: int = 5, partial: bool = False) -> Reduction:
    """For each (t_out, f_out), the k input entries (t_in or lag, f_in) with the largest mean |J|."""
    mean_abs = saliency(store, partial)["mean_abs"]  # (To, Fo, Ti, Fi)
    to, fo, ti, fi = mean_abs.shape
    if not 1 <= k <= ti * fi:
        raise InputError(f"k must be between 1 and {ti * fi}, got {k}.")
    flat = np.nan_to_num(mean_abs, nan=-np.inf).reshape(to, fo, ti * fi)
    order = np.argsort(-flat, axis=2, kind="stable")[:, :, :k]
    in_axis = store.spec.in_axis
    in_coordinate, f_in_coordinate = store.coordinate(in_axis), store.coordinate("f_in")
    dims = ("t_out", "f_out", "rank")
    return Reduction(
        "top-k",
        {
            in_axis: (in_coordinate[order // fi], dims),
            "f_in": (f_in_coordinate[order % fi], dims),
            "mean_abs": (np.take_along_axis(flat, order, axis=2), dims),
        },
        {**_coords(store, "t_out", "f_out"), "rank": np.arange(k)},
        {"k": k},
    )


def _moments_chunk(x: np.ndarray, axis: tuple[int, ...], keepdims: bool, computing_meta: bool = False) -> Any:
    if computing_meta:  # dask probes the function with empty arrays to learn the output type
        return x
    valid = ~np.isnan(x)
    return {
        "n": valid.sum(axis=axis, keepdims=keepdims),
        "sum": np.nansum(x, axis=axis, keepdims=keepdims, dtype="float64"),
        "sumsq": np.nansum(np.square(x, dtype="float64"), axis=axis, keepdims=keepdims),
    }


def _moments_combine(parts: Any, axis: tuple[int, ...], keepdims: bool) -> dict[str, np.ndarray]:
    """Add up the (count, sum, sum of squares) of several chunks."""
    parts = parts if isinstance(parts, list) else [parts]
    return {key: np.sum([p[key] for p in parts], axis=0) for key in ("n", "sum", "sumsq")}


def _std_aggregate(parts: Any, axis: tuple[int, ...], keepdims: bool, computing_meta: bool = False) -> Any:
    if computing_meta:
        return parts
    total = _moments_combine(parts, axis, keepdims)
    n = np.maximum(total["n"], 1)
    mean = total["sum"] / n
    std = np.sqrt(np.maximum(total["sumsq"] / n - mean * mean, 0.0)).astype("float32")
    return std if keepdims else np.squeeze(std, axis=axis)


def batch_std(store: JacobianStore, partial: bool = False) -> Reduction:
    """Standard deviation of J over the batch, per entry: a dask.array.reduction with
    chunk/combine/aggregate (count, sum, sum of squares in float64) for bounded memory."""
    jacobian, coverage = jacobian_for_reduction(store, partial)
    std = da.reduction(
        jacobian, _moments_chunk, _std_aggregate, combine=_moments_combine, axis=0,
        dtype="float32", concatenate=False,
    )
    dims = _entry_dims(store)
    return Reduction("std", {"std": (std, dims)}, _coords(store, *dims), {"coverage": coverage})


def batch_quantiles(store: JacobianStore, quantiles: tuple[float, ...] = (0.1, 0.5, 0.9), partial: bool = False) -> Reduction:
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
    return Reduction("quantiles", {"quantile_values": (result, dims)},
                     {"quantile": q, **_coords(store, *_entry_dims(store))}, {"coverage": coverage})


def custom(store: JacobianStore, name: str, function: Callable[[da.Array], Any], dims: tuple[str, ...],
           partial: bool = False) -> Reduction:
    """A user-defined reduction: ``function`` maps the Jacobian as a dask array (dims batch, t_out,
    f_out, t_in or lag, f_in) to a dask or numpy array with dimension names ``dims``; coordinates are
    attached for the dimensions the store labels."""
    jacobian, coverage = jacobian_for_reduction(store, partial)
    result = function(jacobian)
    if np.ndim(result) != len(dims):
        raise InputError(f"the function of reduction {name!r} returns an array of {np.ndim(result)} dimension(s), but "
                         f"dims={tuple(dims)} names {len(dims)}; pass one name per dimension of its result.")
    labelled = {d for d in dims if d in _entry_dims(store)}
    return Reduction(name, {"values": (result, dims)}, _coords(store, *sorted(labelled)), {"coverage": coverage})


REDUCTIONS: dict[str, Callable[..., Reduction]] = {
    "saliency": saliency,
    "lag-profile": lag_profile,
    "feature-importance": feature_importance,
    "window-sum": window_sum,
    "top-k": top_k,
    "std": batch_std,
    "quantiles": batch_quantiles,
}


def write_reduction(store: JacobianStore, reduction: Reduction) -> str:
    """Write ``reduction`` under ``reductions/<name>`` (an xarray-readable group); returns its path.

    Results are computed here (chunk-wise by dask) and replace an earlier result of the same name.
    """
    path = f"{REDUCTIONS_GROUP}/{reduction.name}"
    root = zarr.open_group(str(store.path), mode="r+")
    group = root.require_group(REDUCTIONS_GROUP).create_group(reduction.name, overwrite=True)
    group.attrs.update({"jacengine_reduction": reduction.name, **reduction.attrs})
    for name, values in reduction.coords.items():
        group.create_array(name, data=np.asarray(values), dimension_names=(name,))
    for name, (values, dims) in reduction.arrays.items():
        if isinstance(values, da.Array):
            # one dask chunk per zarr chunk, so parallel writes never share a chunk
            values = values.rechunk(tuple(max(c) for c in values.chunks))
            target = group.create_array(name, shape=values.shape, dtype=values.dtype, chunks=values.chunksize,
                                        dimension_names=dims, fill_value=np.nan if values.dtype.kind == "f" else 0)
            da.store(values, target, lock=False)  # type: ignore[arg-type]  # a zarr array is a valid target
        else:
            group.create_array(name, data=np.asarray(values), dimension_names=dims)
    return path


def reduce(store: JacobianStore | str, op: str, *, write: bool = True, partial: bool = False, **options: Any) -> Reduction:
    """Run the named reduction ``op`` (one of :data:`REDUCTIONS`) and, by default, store it."""
    if not isinstance(store, JacobianStore):
        store = JacobianStore(store)
    if op not in REDUCTIONS:
        raise InputError(f"unknown reduction {op!r}; choose one of {sorted(REDUCTIONS)}.")
    result = REDUCTIONS[op](store, partial=partial, **options)
    if write:
        write_reduction(store, result)
    return result
