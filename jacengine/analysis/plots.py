"""Pictures of a stored Jacobian (matplotlib, the optional ``plot`` extra).

Each panel is a function that draws a reduction (an ``xarray.Dataset`` from
:mod:`jacengine.analysis.reductions`) into an ``ax`` of the caller's (a notebook's figure, a
subplot grid) or into a new figure, and returns the axes; :func:`summary_figure` puts the three
together and :func:`plot_summary` writes them to a file (PNG, SVG, PDF: by its suffix). Only
``matplotlib.figure.Figure`` is used, never pyplot, so no backend is chosen and Jupyter keeps its
inline plots. Axes are placed by the store's coordinates, so uneven selections (``t_out=[1, 5,
100]``) are drawn where they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from jacengine.analysis.reductions import reduce_many
from jacengine.errors import InputError
from jacengine.storage.store import JacobianStore


def check_matplotlib() -> None:
    """Raise a clear error now, before any work, when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise InputError("plots need matplotlib: pip install 'jacengine[plot]'.") from None


def plot_saliency(saliency: xr.Dataset, ax: Any = None) -> Any:
    """mean |J| over samples, summed over features, on the (t_in or lag, t_out) plane (log colours),
    from the ``saliency`` reduction."""
    from matplotlib.colors import LogNorm

    ax = ax if ax is not None else _new_axes()
    in_axis = saliency["mean_abs"].dims[2]
    heat = np.nansum(saliency["mean_abs"].values, axis=(1, 3))  # (t_out, t_in)
    positive = heat[heat > 0]
    norm = LogNorm(vmin=max(positive.min(), positive.max() * 1e-6), vmax=positive.max()) if positive.size else None
    mesh = ax.pcolormesh(_edges(saliency[in_axis].values), _edges(saliency["t_out"].values),
                         np.where(heat > 0, heat, np.nan), norm=norm, cmap="viridis")
    ax.set(xlabel="input step t_in" if in_axis == "t_in" else "lag t_out - t_in", ylabel="output step t_out",
           title="mean |dy/dx| over samples")
    ax.figure.colorbar(mesh, ax=ax, label="mean |J| (output units per input unit)")
    return ax


def plot_lag_profile(lags: xr.Dataset, ax: Any = None) -> Any:
    """The lag profile (mean |J| per lag, summed over features) and the lag within which the
    reduction's fraction of the influence lies, from the ``lag-profile`` reduction."""
    ax = ax if ax is not None else _new_axes()
    profile = lags["mean_abs"].values.sum(axis=(1, 2))
    ax.semilogy(lags["lag"].values, np.maximum(profile, 1e-30), marker=".", lw=1)
    quantile = int(lags["quantile_lag"].max())
    ax.axvline(quantile, color="tab:red", ls="--", label=f"{lags.attrs['fraction']:.0%} of influence within lag {quantile}")
    ax.set(xlabel="lag t_out - t_in (steps)", ylabel="mean |J|", title="lag profile (effective memory)")
    ax.legend()
    return ax


def plot_feature_importance(saliency: xr.Dataset, ax: Any = None) -> Any:
    """Per output step and input feature, the sum over input steps of mean |J|, from the
    ``saliency`` reduction."""
    ax = ax if ax is not None else _new_axes()
    in_axis = saliency["mean_abs"].dims[2]
    importance = np.nansum(saliency["mean_abs"].values, axis=(1, 2))  # (t_out, f_in)
    f_in = saliency["f_in"].values
    mesh = ax.pcolormesh(_edges(saliency["t_out"].values), np.arange(f_in.size + 1) - 0.5, importance.T, cmap="magma")
    ax.set_yticks(range(f_in.size), [str(f) for f in f_in])
    ax.set(xlabel="output step t_out", ylabel="input feature f_in", title="feature importance")
    ax.figure.colorbar(mesh, ax=ax, label=f"sum over {in_axis} of mean |J|")
    return ax


def summary_figure(saliency: xr.Dataset, lags: xr.Dataset, title: str = "") -> Any:
    """The three panels side by side, from the ``saliency`` and ``lag-profile`` reductions
    (:data:`SUMMARY_OPS`; the feature importance derives from the saliency map)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(16, 4.6), layout="constrained")
    left, middle, right = figure.subplots(1, 3)
    plot_saliency(saliency, left)
    plot_lag_profile(lags, middle)
    plot_feature_importance(saliency, right)
    if title:
        figure.suptitle(title)
    return figure


SUMMARY_OPS = ("saliency", "lag-profile")  # the reductions summary_figure draws


def plot_summary(store: JacobianStore, path: str | Path, partial: bool = False, progress: bool | None = None) -> Path:
    """Compute the reductions of :func:`summary_figure` (in one pass, not written to the store)
    and write the figure to ``path`` (the format from its suffix: .png, .svg, .pdf)."""
    check_matplotlib()
    results = reduce_many(store, SUMMARY_OPS, write=False, partial=partial, progress=progress)
    return save_summary(store, results, path)


def save_summary(store: JacobianStore, results: dict[str, xr.Dataset], path: str | Path) -> Path:
    """Write :func:`summary_figure` of already computed ``results`` (``{op: Dataset}`` holding
    :data:`SUMMARY_OPS`) to ``path``."""
    path = Path(path)
    figure = summary_figure(results["saliency"], results["lag-profile"], f"Jacobian {store.shape} from {store.path.name}")
    figure.savefig(path, dpi=110)
    return path


def _new_axes() -> Any:
    from matplotlib.figure import Figure

    return Figure(layout="constrained").subplots()


def _edges(centres: np.ndarray) -> np.ndarray:
    """Cell edges around sorted coordinates: halfway between neighbours, half a step outside
    the ends (one unit for a single coordinate)."""
    centres = np.asarray(centres, dtype=float)
    if centres.size == 1:
        return np.array([centres[0] - 0.5, centres[0] + 0.5])
    middles = (centres[1:] + centres[:-1]) / 2
    return np.concatenate([[centres[0] - (middles[0] - centres[0])], middles, [centres[-1] + (centres[-1] - middles[-1])]])
