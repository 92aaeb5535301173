"""``jacengine demo``: the seed problem end to end on a built-in model, no files needed.

The built-in LSTM (LSTM(32) then a per-step Dense(1)) is first trained for a few seconds on
synthetic data whose target has known lags, y_t = x_{t-5} - 0.5 x_{t-20} + noise, so that the
Jacobian has real structure to find; then its Jacobian on fresh (B, T, 1) inputs is computed
into a store, reduced out of core, and the top lags are printed (they should be 5 and 20).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jacengine.analysis.reductions import reduce_many
from jacengine.api import compute
from jacengine.backends import get_backend
from jacengine.backends.base import ExampleBackend
from jacengine.errors import InputError, StoreError
from jacengine.options import RunOptions
from jacengine.storage.store import JacobianStore, is_jacengine_store

TRUE_LAGS = {5: 1.0, 20: -0.5}


@dataclass(frozen=True)
class DemoDefaults:
    """The demo's sizes, stated once (``run_demo`` and ``jacengine demo`` read them)."""

    batch: int = 10
    steps: int = 100  # above the longest true lag
    epochs: int = 40


DEFAULTS = DemoDefaults()


def lagged_data(samples: int, steps: int, rng: np.random.Generator, noise: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """x ~ N(0, 1) and y_t = sum over TRUE_LAGS of weight * x_{t-lag} + noise."""
    x = rng.normal(size=(samples, steps, 1)).astype("float32")
    y = noise * rng.normal(size=x.shape).astype("float32")
    for lag, weight in TRUE_LAGS.items():
        y[:, lag:] += weight * x[:, :-lag]
    return x, y


@dataclass
class DemoResult:
    store: JacobianStore
    top_lags: list[int]
    quantile_lag: int
    seconds: float


def run_demo(
    store: str | Path,
    *,
    batch: int = DEFAULTS.batch,
    steps: int = DEFAULTS.steps,
    budget: str | int = RunOptions.default("budget"),
    epochs: int = DEFAULTS.epochs,
    plot: str | Path | None = None,
    overwrite: bool = False,
    echo: Callable[[str], None] = print,
) -> DemoResult:
    """Train the built-in model, compute its Jacobian into ``store`` (an existing store is
    replaced only with ``overwrite``), reduce it, and say what it found."""
    if is_jacengine_store(store) and not overwrite:  # before training, not after
        raise StoreError(f"{store} is already a jacengine store; pass overwrite=True (--overwrite) to replace it with "
                         "the demo's, or write the demo elsewhere (--out).")
    if plot:  # before training, not after
        from jacengine.analysis.plots import check_matplotlib

        check_matplotlib()
    backend = get_backend("tensorflow")
    if not isinstance(backend, ExampleBackend):
        raise InputError("the tensorflow backend has no built-in example model.")
    rng = np.random.default_rng(0)
    x_train, y_train = lagged_data(512, 60, rng)
    started = time.perf_counter()
    model, loss = backend.example_model(x_train, y_train, epochs)
    if loss is not None:
        echo(f"trained the built-in LSTM on y_t = x_(t-5) - 0.5 x_(t-20) + noise: {epochs} epochs in "
             f"{time.perf_counter() - started:.1f} s, final MSE {loss:.3f}")
    inputs = rng.normal(size=(batch, steps, 1)).astype("float32")
    started = time.perf_counter()
    result = compute(model, inputs, store, budget=budget, overwrite=overwrite)
    seconds = time.perf_counter() - started
    echo(f"jacobian {result.shape} {result.dims} in {seconds:.1f} s, {len(result.plan.blocks)} block(s), "
         f"causal={result.attrs['causal']} -> {result.path}")

    t_out = min(10, steps - 1)
    requests: dict[str, dict[str, Any]] = {"lag-profile": {"fraction": 0.9}, "window-sum": {"start": 0, "stop": min(10, steps)}}
    if plot:
        requests["saliency"] = {}
    results = reduce_many(result, requests)  # one pass over the store
    lags = results["lag-profile"]
    profile = lags["mean_abs"].values[:, 0, 0]
    lag_values = lags["lag"].values
    top = [int(lag_values[i]) for i in np.argsort(profile)[::-1][:5]]
    quantile = int(lags["quantile_lag"][0, 0])
    echo(f"lag profile (mean |dy_t/dx_(t-lag)|): top lags {top}; 90% of the influence lies within lag {quantile}")
    window = results["window-sum"]["sum"].values[:, t_out, 0, 0]
    echo(f"output step {t_out}, sum of dy/dx over input steps 0-9, per sample: {[round(float(v), 4) for v in window]}")
    if plot:
        from jacengine.analysis.plots import save_summary

        echo(f"figure: {save_summary(result, results, plot)}")
    return DemoResult(result, top, quantile, seconds)
