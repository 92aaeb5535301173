"""Reference Jacobians and plan overrides shared by the TensorFlow tests."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from jacengine.api import execute
from jacengine.executors import LocalExecutor
from jacengine.options import RunOptions
from jacengine.planning.blocks import make_plan
from jacengine.preparation import Prepared, prepare
from jacengine.storage.store import JacobianStore
from jacengine.task import BlockTask


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


def prepare_with_blocks(
    model: Any, x: Any, *, chunks_per_block: int, t_chunk: int, batch_chunk: int, prefixes: int | str = 4, **options: Any
) -> Prepared:
    """Prepare a run with a forced block size (independent of any cost calibration)."""
    prepared: Prepared = prepare(model, x, RunOptions(**options), calibrate=False)
    plan = make_plan(
        prepared.spec,
        batch_chunk=batch_chunk,
        t_out_chunk=t_chunk,
        t_in_chunk=t_chunk,
        chunks_per_block=lambda watch: chunks_per_block,
        prefixes=prefixes,
    )
    return dataclasses.replace(prepared, plan=plan, fingerprint=dict(prepared.fingerprint, grid=list(plan.grid)))


def compute_with_blocks(model: Any, x: Any, path: Path, **options: Any) -> JacobianStore:
    """Run the engine with a forced block size; options as for :func:`prepare_with_blocks`."""
    prepared = prepare_with_blocks(model, x, **options)
    target = JacobianStore.create(path, prepared.spec, prepared.plan, prepared.fingerprint)
    task = BlockTask(str(path), model, x, RunOptions(), token=f"forced-blocks-{path}")
    return execute(prepared, target, task, LocalExecutor(progress=False))


def create_with_blocks(model: Any, x: Any, path: Path, **options: Any) -> JacobianStore:
    """Create the store of a forced-block-size run without computing anything (like an init)."""
    prepared = prepare_with_blocks(model, x, **options)
    return JacobianStore.create(path, prepared.spec, prepared.plan, prepared.fingerprint)


def store_hash(path: Path) -> str:
    """SHA-256 over every chunk file of the jacobian array, with its relative path."""
    digest = hashlib.sha256()
    for chunk in sorted((path / "jacobian").rglob("*")):
        if chunk.is_file() and chunk.name != "zarr.json":
            digest.update(str(chunk.relative_to(path)).encode())
            digest.update(chunk.read_bytes())
    return digest.hexdigest()



