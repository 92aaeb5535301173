"""``jacengine demo``: the seed problem end to end on a built-in model, no files needed."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from jacengine.api import compute
from jacengine.store import is_jacengine_store


def run_demo(store: str | Path, *, batch: int, steps: int, budget: str, echo: Callable[[str], None]) -> None:
    """Build the seed model (LSTM(32) then a per-step Dense(1)), compute its Jacobian on
    synthetic inputs and print which input steps drive output step 10."""
    from jacengine.tf.zoo import seed_model

    model = seed_model()
    inputs = np.random.default_rng(0).normal(size=(batch, steps, 1)).astype("float32")
    started = time.perf_counter()
    result = compute(model, inputs, store, budget=budget, overwrite=is_jacengine_store(store))
    seconds = time.perf_counter() - started
    jacobian = result.to_dask()
    t_out = min(10, steps - 1)
    profile = abs(jacobian[:, t_out, 0, :, 0]).mean(axis=0).compute()
    first_ten = jacobian[:, t_out, 0, :10, 0].sum(axis=1).compute()
    echo(f"jacobian {result.shape} {result.dims} in {seconds:.1f} s -> {result.path}")
    echo(f"blocks: {len(result.plan.blocks)}, causal: {result.attrs['causal']}")
    echo(f"output step {t_out}: mean |dy/dx| is largest at input steps {[int(i) for i in np.argsort(profile)[::-1][:5]]}")
    echo(f"output step {t_out}: sum over the first 10 input steps, per sample: {[round(float(v), 4) for v in first_ten]}")
    upper = abs(jacobian[:, t_out, 0, t_out + 1 :, 0]).max().compute() if t_out + 1 < steps else 0.0
    echo(f"largest |dy/dx| on future input steps (must be 0 for a causal model): {float(upper)}")
