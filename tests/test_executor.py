"""Executor logic without TensorFlow: out-of-memory splitting, shape grouping, write overlap."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from jacengine.errors import BlockOutOfMemory, BudgetError
from jacengine.executors.local import LocalExecutor
from jacengine.executors.splitting import SplittingCompute
from jacengine.planning.blocks import make_plan
from jacengine.planning.spec import JacobianSpec
from jacengine.storage.store import JacobianStore

SPEC = JacobianSpec(batch=4, input_steps=8, input_features=1, output_steps=8, output_features=1,
                    t_out=tuple(range(8)), f_out=(0,), f_in=(0,), causal=True, truncatable=True)


def reference_values(block) -> np.ndarray:
    """A deterministic fake Jacobian: value = 1000 b + 10 row + t_in (zero above the diagonal)."""
    b = np.arange(block.batch_start, block.batch_stop)[:, None, None, None, None]
    r = np.arange(block.row_start, block.row_stop)[None, :, None, None, None]
    t = np.arange(block.t_in_stop)[None, None, None, :, None]
    return np.where(t <= r, 1000 * b + 10 * r + t, 0).astype("float32")


def test_out_of_memory_blocks_are_split_and_later_blocks_start_split(tmp_path) -> None:
    limit = 3  # pretend any block with more than 3 (sample, row) pairs runs out of memory
    calls = []

    def compute(block):
        calls.append((block.n_batch, block.n_rows))
        if block.n_batch * block.n_rows > limit:
            raise BlockOutOfMemory("fake")
        return reference_values(block)

    plan = make_plan(SPEC, batch_chunk=2, t_out_chunk=4, t_in_chunk=4, chunks_per_block=lambda w: 1, n_buckets=1)
    store = JacobianStore.create(tmp_path / "s.zarr", SPEC, plan, {"format": 1})
    LocalExecutor(progress=False).run(store, plan.blocks, compute)
    everything = dataclasses.replace(plan.blocks[0], batch_start=0, batch_stop=4, row_start=0, row_stop=8, t_in_stop=8)
    expected = reference_values(everything)
    np.testing.assert_array_equal(store.to_numpy(), expected)
    assert store.is_complete
    failures = [c for c in calls if c[0] * c[1] > limit]
    assert len(failures) == 2, calls  # the first block fails at full size and at half size; later ones start split


def test_a_block_that_fails_at_one_sample_and_row_is_a_budget_error() -> None:
    plan = make_plan(SPEC, batch_chunk=1, t_out_chunk=1, t_in_chunk=1, chunks_per_block=lambda w: 1)

    def always_fails(block):
        raise BlockOutOfMemory("fake")

    with pytest.raises(BudgetError, match="one sample and one output step"):
        SplittingCompute(always_fails)(plan.blocks[0])


def test_blocks_run_grouped_by_shape_and_writes_fail_loudly(tmp_path) -> None:
    plan = make_plan(SPEC, batch_chunk=3, t_out_chunk=2, t_in_chunk=2, chunks_per_block=lambda w: 1, n_buckets=2)
    store = JacobianStore.create(tmp_path / "g.zarr", SPEC, plan, {"format": 1})
    seen = []

    def compute(block):
        seen.append(block.shape_key)
        return reference_values(block)

    LocalExecutor(progress=False).run(store, plan.blocks, compute)
    changes = sum(1 for a, b in zip(seen, seen[1:], strict=False) if a != b)
    assert changes == len(set(seen)) - 1  # each shape's blocks run consecutively
    with pytest.raises(ValueError, match="expected"):
        LocalExecutor(progress=False).run(store, plan.blocks[:2], lambda block: np.zeros((1, 1, 1, 1, 1)))
