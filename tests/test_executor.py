"""The executor contract, without TensorFlow: one shared test class run against every executor
(as zarr's ``StoreTests`` is reused per store), plus the out-of-memory split.

A :class:`FakeTask` computes a known formula for J, so every stored value has an exact
reference; it is picklable, so the dask executor sends it to its workers like a real task.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from jacengine.errors import BlockOutOfMemory, BudgetError
from jacengine.executors import DaskExecutor, Executor, LocalExecutor, ShardExecutor
from jacengine.executors.shards import shard_blocks
from jacengine.executors.splitting import SplittingCompute
from jacengine.planning.blocks import Block, make_plan
from jacengine.planning.spec import JacobianSpec
from jacengine.storage.store import JacobianStore

SPEC = JacobianSpec(batch=4, input_steps=8, input_features=1, output_steps=8, output_features=1,
                    t_out=tuple(range(8)), f_out=(0,), f_in=(0,), causal=True, truncatable=True)


def reference_values(block: Block) -> np.ndarray:
    """A deterministic fake Jacobian: value = 1000 b + 10 row + t_in (zero above the diagonal)."""
    b = np.arange(block.batch_start, block.batch_stop)[:, None, None, None, None]
    r = np.arange(block.row_start, block.row_stop)[None, :, None, None, None]
    t = np.arange(block.in_stop)[None, None, None, :, None]
    return np.where(t <= r, 1000 * b + 10 * r + t, 0).astype("float32")


class FakeTask:
    """A block task over the store at ``path`` whose J is :func:`reference_values`."""

    def __init__(self, path: Path, wrong_shape_from: int | None = None) -> None:
        self.path = str(path)
        self.wrong_shape_from = wrong_shape_from  # blocks from this index on return a wrong shape

    @property
    def store(self) -> JacobianStore:
        return JacobianStore(self.path, mode="r+")

    @property
    def spec(self) -> JacobianSpec:
        return self.store.spec

    @property
    def plan(self) -> Any:
        return self.store.plan

    def compute(self, block: Block) -> np.ndarray:
        if self.wrong_shape_from is not None and block.index >= self.wrong_shape_from:
            return np.zeros((1, 1, 1, 1, 1), "float32")
        return reference_values(block)

    def write(self, block: Block, values: np.ndarray) -> None:
        self.store.write_block(block, values)

    def claim(self, block: Block, *, wait: bool) -> Any:
        return self.store.ledger.claim(block, wait=wait)

    def is_done(self, block: Block) -> bool:
        return self.store.ledger.is_done(block)

    def __call__(self, index: int) -> dict[str, Any]:
        block = self.plan.blocks[index]
        self.write(block, self.compute(block))
        return {"index": index, "seconds": 0.0, "pid": os.getpid(), "peak_rss_bytes": 0}


def new_store(path: Path) -> JacobianStore:
    plan = make_plan(SPEC, batch_chunk=2, t_out_chunk=2, t_in_chunk=2, chunks_per_block=lambda w: 1, prefixes=2)
    return JacobianStore.create(path, SPEC, plan, {"format": 1})


class ExecutorTests:
    """What every executor promises; subclasses say how to make one (and which blocks it owns)."""

    def executor(self) -> Executor:
        raise NotImplementedError

    def owned(self, store: JacobianStore) -> set[int]:
        """Indices of the blocks this executor computes when given all of them."""
        return {b.index for b in store.plan.blocks}

    def test_computes_its_blocks_exactly(self, tmp_path) -> None:
        store = new_store(tmp_path / "s.zarr")
        done = self.executor().run(FakeTask(store.path), store.plan.blocks)
        owned = self.owned(store)
        assert done == len(owned) and store.done_blocks() == owned
        for block in store.plan.blocks:
            if block.index in owned:
                np.testing.assert_array_equal(store.read_block(block), reference_values(block))

    def test_runs_only_the_blocks_given(self, tmp_path) -> None:
        store = new_store(tmp_path / "s.zarr")
        given = store.plan.blocks[::2]
        self.executor().run(FakeTask(store.path), given)
        assert store.done_blocks() == {b.index for b in given} & self.owned(store)

    def test_stops_between_blocks_leaving_whole_blocks(self, tmp_path) -> None:
        store = new_store(tmp_path / "s.zarr")
        done = self.executor().run(FakeTask(store.path), store.plan.blocks, should_stop=lambda: True)
        assert done <= 1 < len(self.owned(store))  # at most the block in flight when asked
        for block in store.plan.blocks:
            if block.index in store.done_blocks():
                np.testing.assert_array_equal(store.read_block(block), reference_values(block))

    def test_a_failing_block_fails_the_run(self, tmp_path) -> None:
        store = new_store(tmp_path / "s.zarr")
        with pytest.raises(ValueError, match="expected"):
            self.executor().run(FakeTask(store.path, wrong_shape_from=0), store.plan.blocks)
        assert not store.done_blocks()


class TestLocalExecutor(ExecutorTests):
    def executor(self) -> Executor:
        return LocalExecutor(progress=False)

    def test_blocks_run_grouped_by_shape(self, tmp_path) -> None:
        store = new_store(tmp_path / "g.zarr")
        seen = []

        class Recording(FakeTask):
            def compute(self, block: Block) -> np.ndarray:
                seen.append(block.shape_key)
                return super().compute(block)

        self.executor().run(Recording(store.path), store.plan.blocks)
        changes = sum(1 for a, b in zip(seen, seen[1:], strict=False) if a != b)
        assert changes == len(set(seen)) - 1  # each shape's blocks run consecutively


class SlowTask(FakeTask):
    """A :class:`FakeTask` whose blocks take a while, so that a stop arrives while most wait."""

    def compute(self, block: Block) -> np.ndarray:
        import time

        time.sleep(0.3)
        return super().compute(block)


class TestDaskExecutor(ExecutorTests):
    WORKERS = 2

    @pytest.fixture(autouse=True)
    def _cluster(self):
        distributed = pytest.importorskip("distributed")
        with distributed.LocalCluster(n_workers=self.WORKERS, threads_per_worker=1, processes=False,
                                      dashboard_address=None) as cluster:
            self.cluster = cluster
            yield

    def executor(self) -> Executor:
        return DaskExecutor(cluster=self.cluster, progress=False)

    def test_stops_between_blocks_leaving_whole_blocks(self, tmp_path) -> None:
        """The base test's promise on dask: the client sees the stop at its first poll and cancels
        the blocks. Blocks already running on the workers (one per worker thread, and one each
        that may start before the cancel reaches it) finish whole; the others never run."""
        store = new_store(tmp_path / "s.zarr")
        done = self.executor().run(SlowTask(store.path), store.plan.blocks, should_stop=lambda: True)
        written = store.done_blocks()
        assert done <= 1 and len(written) <= 2 * self.WORKERS < len(store.plan.blocks), written
        for block in store.plan.blocks:
            if block.index in store.done_blocks():
                np.testing.assert_array_equal(store.read_block(block), reference_values(block))


class TestShardExecutor(ExecutorTests):
    def executor(self) -> Executor:
        return ShardExecutor(LocalExecutor(progress=False), 1, 3)

    def owned(self, store: JacobianStore) -> set[int]:
        return {b.index for b in shard_blocks(store.spec, store.plan, 1, 3)}

    def test_every_shard_together_completes_the_store(self, tmp_path) -> None:
        store = new_store(tmp_path / "s.zarr")
        for index in range(3):
            ShardExecutor(LocalExecutor(progress=False), index, 3).run(FakeTask(store.path), store.pending_blocks())
        assert store.is_complete


def test_out_of_memory_blocks_are_split_and_later_blocks_start_split() -> None:
    limit = 3  # pretend any block with more than 3 (sample, row) pairs runs out of memory
    calls = []

    def compute(block: Block) -> np.ndarray:
        calls.append((block.n_batch, block.n_rows))
        if block.n_batch * block.n_rows > limit:
            raise BlockOutOfMemory("fake")
        return reference_values(block)

    plan = make_plan(SPEC, batch_chunk=2, t_out_chunk=4, t_in_chunk=4, chunks_per_block=lambda w: 1, prefixes=1)
    split = SplittingCompute(compute)
    for block in plan.blocks:
        np.testing.assert_array_equal(split(block), reference_values(block))
    failures = [c for c in calls if c[0] * c[1] > limit]
    assert len(failures) == 2, calls  # the first block fails at full size and at half size; later ones start split


def test_a_block_that_fails_at_one_sample_and_row_is_a_budget_error() -> None:
    plan = make_plan(SPEC, batch_chunk=1, t_out_chunk=1, t_in_chunk=1, chunks_per_block=lambda w: 1)

    def always_fails(block: Block) -> np.ndarray:
        raise BlockOutOfMemory("fake")

    with pytest.raises(BudgetError, match="one sample and one output step"):
        SplittingCompute(always_fails)(plan.blocks[0])


def test_the_local_cluster_it_starts_speaks_only_tls() -> None:
    """Other users of a shared node cannot connect: TLS with a temporary certificate."""
    pytest.importorskip("distributed")
    with DaskExecutor(workers=1, progress=False)._address() as cluster:
        assert cluster.scheduler_address.startswith("tls://")
        assert cluster.security.require_encryption
