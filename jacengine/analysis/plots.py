"""Pictures of a stored Jacobian (matplotlib, the optional ``plot`` extra).

Each panel is a function that draws into an ``ax`` of the caller's (a notebook's figure, a
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

from jacengine.analysis.reductions import Reduction, lag_profile, saliency
from jacengine.errors import InputError
from jacengine.storage.store import JacobianStore


def check_matplotlib() -> None:
    """Raise a clear error now, before any work, when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise InputError("plots need matplotlib: pip install 'jacengine[plot]'.") from None


def plot_saliency(store: JacobianStore, mean_abs: np.ndarray, ax: Any = None) -> Any:
    """mean |J| over samples, summed over features, on the (t_in or lag, t_out) plane (log colours)."""
    from matplotlib.colors import LogNorm

    ax = ax if ax is not None else _new_axes()
    heat = np.nansum(mean_abs, axis=(1, 3))  # (t_out, t_in)
    positive = heat[heat > 0]
    norm = LogNorm(vmin=max(positive.min(), positive.max() * 1e-6), vmax=positive.max()) if positive.size else None
    in_axis = store.spec.in_axis
    mesh = ax.pcolormesh(_edges(store.coordinate(in_axis)), _edges(store.coordinate("t_out")),
                         np.where(heat > 0, heat, np.nan), norm=norm, cmap="viridis")
    ax.set(xlabel="input step t_in" if in_axis == "t_in" else "lag t_out - t_in", ylabel="output step t_out",
           title="mean |dy/dx| over samples")
    ax.figure.colorbar(mesh, ax=ax, label="mean |J| (output units per input unit)")
    return ax


def plot_lag_profile(lags: Reduction, ax: Any = None) -> Any:
    """The lag profile (mean |J| per lag, summed over features) and the lag within which the
    reduction's fraction of the influence lies."""
    ax = ax if ax is not None else _new_axes()
    profile = lags["mean_abs"].sum(axis=(1, 2))
    ax.semilogy(lags.coords["lag"], np.maximum(profile, 1e-30), marker=".", lw=1)
    quantile = int(lags["quantile_lag"].max())
    ax.axvline(quantile, color="tab:red", ls="--", label=f"{lags.attrs['fraction']:.0%} of influence within lag {quantile}")
    ax.set(xlabel="lag t_out - t_in (steps)", ylabel="mean |J|", title="lag profile (effective memory)")
    ax.legend()
    return ax


def plot_feature_importance(store: JacobianStore, mean_abs: np.ndarray, ax: Any = None) -> Any:
    """Per output step and input feature, the sum over input steps of mean |J|."""
    ax = ax if ax is not None else _new_axes()
    importance = np.nansum(mean_abs, axis=(1, 2))  # (t_out, f_in)
    f_in = store.coordinate("f_in")
    mesh = ax.pcolormesh(_edges(store.coordinate("t_out")), np.arange(f_in.size + 1) - 0.5, importance.T, cmap="magma")
    ax.set_yticks(range(f_in.size), [str(f) for f in f_in])
    ax.set(xlabel="output step t_out", ylabel="input feature f_in", title="feature importance")
    ax.figure.colorbar(mesh, ax=ax, label=f"sum over {store.spec.in_axis} of mean |J|")
    return ax


def summary_figure(store: JacobianStore, partial: bool = False) -> Any:
    """The three panels side by side, from one pass over the store: the lag profile and the
    feature importance both derive from the saliency map."""
    from matplotlib.figure import Figure

    mean_abs = saliency(store, partial)["mean_abs"]  # (t_out, f_out, t_in, f_in)
    figure = Figure(figsize=(16, 4.6), layout="constrained")
    left, middle, right = figure.subplots(1, 3)
    plot_saliency(store, mean_abs, left)
    plot_lag_profile(lag_profile(store, partial=partial, mean_abs=mean_abs), middle)
    plot_feature_importance(store, mean_abs, right)
    figure.suptitle(f"Jacobian {store.shape} from {store.path.name}")
    return figure


def plot_summary(store: JacobianStore, path: str | Path, partial: bool = False) -> Path:
    """Write :func:`summary_figure` to ``path`` (the format from its suffix: .png, .svg, .pdf)."""
    check_matplotlib()
    path = Path(path)
    summary_figure(store, partial).savefig(path, dpi=110)
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
