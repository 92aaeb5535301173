"""Reference Jacobians and plan overrides shared by the TensorFlow tests."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from jacengine.api import Prepared, execute, prepare
from jacengine.costmodel import CostModel, plan_for_buckets
from jacengine.plan import make_plan
from jacengine.store import JacobianStore


def reference_jacobian(model: Any, x: np.ndarray) -> np.ndarray:
    """TensorFlow's own batch_jacobian of the whole model, as (B, To, Fo, Ti, Fi)."""
    import tensorflow as tf

    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = model(xt, training=False)
        if len(y.shape) == 2:
            y = y[:, None, :]
    return tape.batch_jacobian(y, xt).numpy()


def compute_with_blocks(
    model: Any, x: np.ndarray, path: Path, *, chunks_per_block: int, t_chunk: int, batch_chunk: int, **options: Any
) -> JacobianStore:
    """Run the engine with a forced block size (independent of any cost calibration)."""
    prepared: Prepared = prepare(model, x, calibrate=False, **options)
    plan = make_plan(
        prepared.spec,
        batch_chunk=batch_chunk,
        t_out_chunk=t_chunk,
        t_in_chunk=t_chunk,
        chunks_per_block=lambda watch: chunks_per_block,
    )
    prepared = dataclasses.replace(prepared, plan=plan, fingerprint=dict(prepared.fingerprint, grid=list(plan.grid)))
    return execute(prepared, path, resume=False, overwrite=False, progress=False)


def tiny_cost() -> CostModel:
    return CostModel(fixed_bytes=1e6, bytes_per_work=100.0, trace_seconds=1.0, seconds_per_work=1e-7)


__all__ = ["compute_with_blocks", "plan_for_buckets", "reference_jacobian", "tiny_cost"]
