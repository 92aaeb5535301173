"""The planner (pure Python): blocks tile the Jacobian exactly once, on the chunk grid."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jacengine.errors import BudgetError, InputError
from jacengine.planning.blocks import Plan, make_plan, window_start
from jacengine.planning.costmodel import CostModel, block_work, choose_plan
from jacengine.planning.selection import normalise_selection
from jacengine.planning.spec import JacobianSpec


def make_spec(batch: int, steps: int, t_out: tuple[int, ...], causal: bool, truncatable: bool = True) -> JacobianSpec:
    return JacobianSpec(
        batch=batch, input_steps=steps, input_features=2, output_steps=steps, output_features=1,
        t_out=t_out, f_out=(0,), f_in=(0, 1), causal=causal, truncatable=truncatable,
    )


@st.composite
def specs_and_grids(draw):
    steps = draw(st.integers(1, 40))
    batch = draw(st.integers(1, 9))
    t_out = tuple(sorted(draw(st.sets(st.integers(0, steps - 1), min_size=1))))
    spec = make_spec(batch, steps, t_out, draw(st.booleans()), draw(st.booleans()))
    grid = dict(
        batch_chunk=draw(st.integers(1, batch)),
        t_out_chunk=draw(st.integers(1, len(t_out))),
        t_in_chunk=draw(st.integers(1, steps)),
    )
    return spec, grid, draw(st.integers(1, 5)), draw(st.integers(1, 8))


@settings(max_examples=200, deadline=None)
@given(specs_and_grids())
def test_blocks_cover_every_entry_once_on_chunk_boundaries(case) -> None:
    spec, grid, per_block, n_buckets = case
    plan = make_plan(spec, chunks_per_block=lambda watch: per_block, prefixes=n_buckets, **grid)
    cover = np.zeros((spec.batch, len(spec.t_out)), dtype=int)
    for block in plan.blocks:
        cover[block.batch_start : block.batch_stop, block.row_start : block.row_stop] += 1
        assert block.batch_start % grid["batch_chunk"] == 0
        assert block.row_start % grid["t_out_chunk"] == 0
        assert block.row_stop % grid["t_out_chunk"] == 0 or block.row_stop == len(spec.t_out)
        assert block.in_stop % grid["t_in_chunk"] == 0 or block.in_stop == spec.input_steps
        last_step = spec.t_out[block.row_stop - 1]
        if spec.causal:
            # every input step an output of the block can depend on is watched and written
            assert block.watch_steps > last_step and block.in_stop > last_step
            assert block.forward_steps == (block.watch_steps if spec.truncatable else spec.input_steps)
        else:
            assert block.watch_steps == block.in_stop == block.forward_steps == spec.input_steps
        assert block.compute_batch >= block.n_batch and block.compute_rows >= block.n_rows
    assert (cover == 1).all()
    # bounded tracing: one compiled shape per prefix bucket
    assert len(plan.shape_keys) <= len({b.watch_steps for b in plan.blocks}) <= n_buckets + 1
    assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan


@settings(max_examples=200, deadline=None)
@given(specs_and_grids(), st.integers(1, 40))
def test_lag_windows_hold_every_lag_and_fit_the_prefix(case, max_lag) -> None:
    spec, grid, per_block, n_buckets = case
    spec = dataclasses.replace(spec, layout="lag", max_lag=min(max_lag, spec.input_steps))
    plan = make_plan(spec, chunks_per_block=lambda watch: per_block, prefixes=n_buckets, **grid)
    cover = np.zeros((spec.batch, len(spec.t_out)), dtype=int)
    for block in plan.blocks:
        cover[block.batch_start : block.batch_stop, block.row_start : block.row_stop] += 1
        assert block.in_stop == spec.max_lag  # every block writes its rows' whole lag axis
        start = window_start(spec, block)
        assert 0 <= start and start + block.watch_steps <= block.forward_steps
        for step in spec.t_out[block.row_start : block.row_stop]:
            # the window covers each row's step and its lags back to max_lag - 1 (or to step 0)
            assert start <= max(0, step - spec.max_lag + 1) and step < start + block.watch_steps
            if spec.causal:
                assert step < block.forward_steps
    assert (cover == 1).all()
    assert len(plan.shape_keys) <= n_buckets + 1


@pytest.mark.parametrize("causal", [True, False])
def test_a_work_cap_bounds_every_block_and_only_shrinks_them(causal) -> None:
    spec = make_spec(32, 500, tuple(range(500)), causal=causal)
    cost = CostModel(fixed_bytes=100e6, bytes_per_work=40.0, trace_seconds=2.0, seconds_per_work=1e-7)
    free = choose_plan(spec, cost, 8 * 2**30)
    largest = max(CostModel.work(spec, b) for b in free.blocks)
    capped = choose_plan(spec, cost, 8 * 2**30, max_work=largest / 10)
    assert max(CostModel.work(spec, b) for b in capped.blocks) <= largest / 10
    assert len(capped.blocks) > len(free.blocks)
    assert choose_plan(spec, cost, 8 * 2**30, max_work=2 * largest) == free  # a loose cap changes nothing


def test_causal_plan_skips_the_upper_triangle() -> None:
    spec = make_spec(4, 100, tuple(range(100)), causal=True)
    plan = make_plan(spec, batch_chunk=4, t_out_chunk=10, t_in_chunk=10, chunks_per_block=lambda w: 1, prefixes=10)
    assert [b.in_stop for b in plan.blocks] == list(range(10, 101, 10))
    assert len(plan.shape_keys) == 10


def test_budget_shrinks_blocks_and_names_the_minimum() -> None:
    spec = make_spec(32, 500, tuple(range(500)), causal=True)
    cost = CostModel(fixed_bytes=100e6, bytes_per_work=400.0, trace_seconds=2.0, seconds_per_work=1e-7)
    big, small = choose_plan(spec, cost, 4 * 2**30), choose_plan(spec, cost, 256 * 2**20)
    assert len(small.blocks) > len(big.blocks)
    for plan, budget in ((big, 4 * 2**30), (small, 256 * 2**20)):
        for block in plan.blocks:
            assert cost.block_peak_bytes(spec, block) <= budget
    with pytest.raises(BudgetError, match=r"Raise budget \(--budget\) to at least"):
        choose_plan(spec, cost, int(100e6))


def test_forward_work_counts_input_directions_and_its_plans_fit_the_budget() -> None:
    """Forward mode pays one forward pass per input direction plus the rows it keeps; reverse
    mode one backward pass per output row."""
    reverse = make_spec(8, 200, tuple(range(200)), causal=False)
    forward = dataclasses.replace(reverse, method="forward")
    assert block_work(forward, 8, 10, 200) == 8 * 200 * 2 * (200 + 10)
    assert block_work(reverse, 8, 10, 200) == 8 * 10 * 1 * 200
    cost = CostModel(fixed_bytes=100e6, bytes_per_work=400.0, trace_seconds=2.0, seconds_per_work=1e-7)
    for budget in (300 * 2**20, 2**30, 8 * 2**30):
        for spec in (reverse, forward):
            plan = choose_plan(spec, cost, budget)
            assert all(cost.block_peak_bytes(spec, b) <= budget for b in plan.blocks)
            assert sum(b.n_rows * b.n_batch for b in plan.blocks) == 8 * 200


def test_a_loop_block_holds_its_rows_in_flight_and_every_row_of_its_result() -> None:
    """The loop's memory work counts the VJPs in flight (LOOP_PARALLEL_ROWS); the copies of its
    result grow with every row, and plans add them (result_copies x the result's bytes). When
    they were left out, a probe of 500 rows x 8 features over 1000 steps peaked at 840 MiB under
    a 128 MiB budget."""
    from jacengine.planning.costmodel import result_bytes
    from jacengine.planning.methods import LOOP_FREE_BATCH, LOOP_PARALLEL_ROWS, METHODS

    loop = dataclasses.replace(make_spec(8, 1000, tuple(range(1000)), causal=True), method="reverse-loop")
    reverse = dataclasses.replace(loop, method="reverse")
    assert block_work(loop, 2, 500, 1000, memory=True) == block_work(loop, 2, LOOP_PARALLEL_ROWS, 1000, memory=True)
    copies = METHODS["reverse-loop"].result_copies
    assert copies >= 4  # TensorArray, stack, transpose, gather
    for rows in (1, 16, 500):
        assert result_bytes(loop, 2, rows, 1000) == copies * 4 * 2 * rows * 1 * 1000 * 2  # (B, R, Fo, W, Fi) float32
        assert result_bytes(reverse, 2, rows, 1000) == 0.0  # reverse mode's work grows with its result
    cost = CostModel(fixed_bytes=50e6, bytes_per_work=1000.0, trace_seconds=1.0, seconds_per_work=1e-6)
    assert cost.peak_bytes(loop, 2, 500, 1000) - cost.peak_bytes(loop, 2, 16, 1000) == pytest.approx(
        result_bytes(loop, 2, 500 - 16, 1000))
    assert block_work(loop, 1, 10, 100) == block_work(loop, LOOP_FREE_BATCH, 10, 100) == LOOP_FREE_BATCH * 10 * 100


def test_a_small_budget_gives_loop_blocks_of_one_step_as_many_samples_as_fit() -> None:
    """Where no block of the default t_out chunks fits, one-step chunks are tried with every
    batch chunk: the loop's time is the same for 1 or 4 samples, so 4 samples is 4 times faster
    (before, the plan fell back to one sample per block)."""
    loop = dataclasses.replace(make_spec(8, 1000, tuple(range(1000)), causal=True), method="reverse-loop")
    cost = CostModel(fixed_bytes=50e6, bytes_per_work=10_000.0, trace_seconds=1.0, seconds_per_work=1e-6,
                     seconds_per_block=0.01, one_trace=True)
    budget = 128 * 2**20
    plan = choose_plan(loop, cost, budget)
    assert plan.grid[:2] == (4, 1)  # 8 samples of one step would not fit; 4 do
    assert all(cost.block_peak_bytes(loop, b) <= budget for b in plan.blocks)
    assert sum(b.n_rows * b.n_batch for b in plan.blocks) == 8 * 1000


def test_only_the_pooled_share_of_the_work_memory_is_planned_at_the_pool_factor() -> None:
    spec = make_spec(4, 100, tuple(range(100)), causal=False)
    base = CostModel(fixed_bytes=1e6, bytes_per_work=1000.0, trace_seconds=1.0, seconds_per_work=1e-6, pool_factor=2.0)
    work = block_work(spec, 4, 10, 100, memory=True)
    assert base.peak_bytes(spec, 4, 10, 100) == 1e6 + 2 * 1000.0 * work  # unmeasured: all of it is pooled
    measured = dataclasses.replace(base, pooled_bytes_per_work=50.0)
    assert measured.peak_bytes(spec, 4, 10, 100) == 1e6 + (1000.0 + 50.0) * work
    no_pool = dataclasses.replace(measured, pool_factor=1.0)
    assert no_pool.peak_bytes(spec, 4, 10, 100) == 1e6 + 1000.0 * work


@pytest.mark.parametrize(
    ("selection", "expected"),
    [(None, (0, 1, 2, 3, 4)), (2, (2,)), (-1, (4,)), (slice(1, None, 2), (1, 3)), ([0, 3], (0, 3))],
)
def test_selections(selection, expected) -> None:
    assert normalise_selection(selection, 5, "t_out") == expected


@pytest.mark.parametrize("selection", [[3, 1], [1, 1], [7], [], slice(3, 1), "a"])
def test_bad_selections_are_refused(selection) -> None:
    with pytest.raises(InputError, match="t_out"):
        normalise_selection(selection, 5, "t_out")


@given(specs_and_grids(), st.integers(1, 6))
def test_shards_partition_the_blocks_and_balance_predicted_work(case, count) -> None:
    from jacengine.executors.shards import assign_blocks
    from jacengine.planning.costmodel import CostModel

    spec, grid, per_block, n_buckets = case
    plan = make_plan(spec, chunks_per_block=lambda watch: per_block, prefixes=n_buckets, **grid)
    shards = assign_blocks(spec, plan, count)
    indices = sorted(b.index for blocks in shards for b in blocks)
    assert indices == list(range(len(plan.blocks)))  # every block in exactly one shard
    assert assign_blocks(spec, plan, count) == shards  # deterministic
    loads = [sum(CostModel.work(spec, b) for b in blocks) for blocks in shards]
    largest = max(CostModel.work(spec, b) for b in plan.blocks)
    assert max(loads) - min(loads) <= largest  # greedy longest-first bound


def test_fallback_plan_exists_below_the_minimum_and_plans_aim_below_the_budget() -> None:
    from jacengine.planning.costmodel import PLANNED_FRACTION, CostModel, choose_plan, predicted_peak

    spec = make_spec(4, 100, tuple(range(100)), causal=True)
    cost = CostModel(fixed_bytes=100e6, bytes_per_work=1000.0, trace_seconds=1.0, seconds_per_work=1e-6,
                     retained_bytes_per_trace=5e6)
    smallest = choose_plan(spec, cost, 1, fallback_to_smallest=True)  # a probe plan even for a 1-byte budget
    assert smallest.blocks
    for budget in (150e6, 300e6, 2e9):
        plan = choose_plan(spec, cost, int(budget))
        assert predicted_peak(spec, plan, cost) <= PLANNED_FRACTION * budget


def test_a_plan_whose_block_splits_a_chunk_is_refused_at_store_creation(tmp_path) -> None:
    from jacengine.storage.store import JacobianStore

    spec = JacobianSpec(batch=4, input_steps=8, input_features=1, output_steps=8, output_features=1,
                        t_out=tuple(range(8)), f_out=(0,), f_in=(0,), causal=True, truncatable=True)
    plan = make_plan(spec, batch_chunk=2, t_out_chunk=4, t_in_chunk=4, chunks_per_block=lambda w: 1, prefixes=1)
    plan.check_alignment(spec)
    torn = dataclasses.replace(plan, blocks=(dataclasses.replace(plan.blocks[0], row_stop=3), *plan.blocks[1:]))
    with pytest.raises(BudgetError, match="not whole chunks"):
        JacobianStore.create(tmp_path / "s.zarr", spec, torn, {"format": 1})
    assert not (tmp_path / "s.zarr").exists()
