"""Pictures of a stored Jacobian (matplotlib, the optional ``plot`` extra)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jacengine.analysis.reductions import lag_profile, saliency
from jacengine.storage.store import JacobianStore


def plot_summary(store: JacobianStore, path: str | Path, partial: bool = False) -> Path:
    """Three panels: mean |J| over (t_out, t_in), the lag profile, the feature-importance map."""
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure  # not pyplot: no backend is chosen, so inline plots in Jupyter keep theirs

    # one pass over the store: the lag profile and the feature importance (sum over t_in of the
    # batch mean of |J|, the same as the batch mean of the sum) both derive from the saliency map
    mean_abs = saliency(store, partial)["mean_abs"]  # (t_out, f_out, t_in, f_in)
    heat = np.nansum(mean_abs, axis=(1, 3))  # (t_out, t_in)
    lags = lag_profile(store, partial=partial, mean_abs=mean_abs)
    profile = lags["mean_abs"].sum(axis=(1, 2))
    importance = np.nansum(mean_abs, axis=(1, 2))  # (t_out, f_in)
    in_axis = store.spec.in_axis  # t_in, or lag in the lag layout
    t_out, t_in, f_in = store.coordinate("t_out"), store.coordinate(in_axis), store.coordinate("f_in")

    figure = Figure(figsize=(16, 4.6), layout="constrained")
    left, middle, right = figure.subplots(1, 3)
    positive = heat[heat > 0]
    norm = LogNorm(vmin=max(positive.min(), positive.max() * 1e-6), vmax=positive.max()) if positive.size else None
    image = left.imshow(np.where(heat > 0, heat, np.nan), origin="lower", aspect="auto", norm=norm, cmap="viridis",
                        extent=(t_in[0] - 0.5, t_in[-1] + 0.5, t_out[0] - 0.5, t_out[-1] + 0.5))
    left.set(xlabel="input step t_in" if in_axis == "t_in" else "lag t_out - t_in", ylabel="output step t_out",
             title="mean |dy/dx| over samples")
    figure.colorbar(image, ax=left, label="mean |J| (output units per input unit)")

    middle.semilogy(lags.coords["lag"], np.maximum(profile, 1e-30), marker=".", lw=1)
    quantile = int(lags["quantile_lag"].max())
    middle.axvline(quantile, color="tab:red", ls="--", label=f"{lags.attrs['fraction']:.0%} of influence within lag {quantile}")
    middle.set(xlabel="lag t_out - t_in (steps)", ylabel="mean |J|", title="lag profile (effective memory)")
    middle.legend()

    image = right.imshow(importance.T, origin="lower", aspect="auto", cmap="magma",
                         extent=(t_out[0] - 0.5, t_out[-1] + 0.5, -0.5, f_in.size - 0.5))
    right.set_yticks(range(f_in.size), [str(f) for f in f_in])
    right.set(xlabel="output step t_out", ylabel="input feature f_in", title="feature importance")
    figure.colorbar(image, ax=right, label=f"sum over {in_axis} of mean |J|")
    figure.suptitle(f"Jacobian {store.shape} from {store.path.name}")
    path = Path(path)
    figure.savefig(path, dpi=110)
    return path
