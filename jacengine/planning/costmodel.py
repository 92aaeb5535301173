"""Predict a block's peak memory and run time, and choose the chunk grid and block sizes.

A block's memory and time grow with its "work", by its method's work formula
(:mod:`jacengine.planning.methods`; e.g. reverse mode: samples x rows x prefix, since pfor
keeps one backward pass per sample and row). The model is linear in the work plus a fixed cost
(the backend's tracing and runtime); an allocator that pools what blocks free lets the pooled
part of the work memory (its tensors) grow by the pool factor over a run:

    peak_bytes = fixed_bytes + (bytes_per_work + (pool_factor - 1) * pooled_bytes_per_work) * memory work
                 + result_copies * the block's result bytes + retained_bytes_per_trace * (n_traces - 1)
    seconds    = trace_seconds * n_traces + sum(seconds_per_block + seconds_per_work * work)

``result_copies`` is the method's (:mod:`jacengine.planning.methods`): the copies of its result
a method holds beyond its work formula (the reverse loop's grow with every row, its work with
the rows in flight only). The last memory term is what TensorFlow keeps after each traced shape
even once its function is dropped, so a plan with many traced shapes needs room for all of them
by its last block.
``n_traces`` is the number of block shapes, or 1 when the backend's one compiled function
serves every shape (``one_trace``); such plans give each causal block its exact prefix.

The coefficients start from a prior derived from the model's size and are calibrated by
measuring probe blocks on the actual model (:mod:`jacengine.planning.calibration`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from dask.utils import format_bytes

from jacengine.errors import BudgetError, setting
from jacengine.planning.blocks import (
    EXACT,
    Block,
    Plan,
    Prefixes,
    default_time_chunk,
    forward_length,
    lag_window,
    make_plan,
    prefix_lengths,
)
from jacengine.planning.methods import METHODS, BlockSize
from jacengine.planning.spec import JacobianSpec


@dataclass(frozen=True)
class CostModel:
    fixed_bytes: float
    bytes_per_work: float
    trace_seconds: float
    seconds_per_work: float
    retained_bytes_per_trace: float = 0.0
    one_trace: bool = False  # one compiled function serves every block shape
    seconds_per_block: float = 0.0  # what a call costs besides its work (dispatch, loop set-up, copies)
    # An allocator that keeps what blocks free (oneDNN's on CPU) lets the memory it manages (the
    # tensors) grow to about this many times a block's own over a run; plans budget for it. The
    # fixed term is measured under that allocator already.
    pool_factor: float = 1.0
    # The tensors' share of bytes_per_work, where the backend measures it (None: all of it). A
    # reverse-loop block's tensors are a few percent of its resident memory: its executor's
    # frames, not tensors, hold the rest, and those are not pooled.
    pooled_bytes_per_work: float | None = None

    def traces(self, plan: Plan) -> int:
        """How many times a plan's blocks are traced."""
        return 1 if self.one_trace else len(plan.shape_keys)

    @staticmethod
    def work(spec: JacobianSpec, block: Block, memory: bool = False) -> int:
        """The work a block is computed at (its padded compute shape); with ``memory``, the work
        its memory grows with (see :func:`block_work`)."""
        return block_work(spec, *_compute_shape(spec, block), memory=memory)

    def peak_bytes(self, spec: JacobianSpec, batch: int, rows: int, prefix: int) -> float:
        """Predicted peak of a block of ``batch`` samples and ``rows`` output steps that needs
        the first ``prefix`` input steps."""
        return self._peak(block_work(spec, batch, rows, prefix, memory=True)) + result_bytes(spec, batch, rows, prefix)

    def block_peak_bytes(self, spec: JacobianSpec, block: Block) -> float:
        return self._peak(self.work(spec, block, memory=True)) + block_result_bytes(spec, block)

    def _peak(self, memory_work: int) -> float:
        pooled = self.bytes_per_work if self.pooled_bytes_per_work is None else min(self.pooled_bytes_per_work,
                                                                                     self.bytes_per_work)
        return self.fixed_bytes + (self.bytes_per_work + (self.pool_factor - 1) * pooled) * memory_work

    def block_seconds(self, spec: JacobianSpec, block: Block) -> float:
        return self.seconds_per_block + self.seconds_per_work * self.work(spec, block)

    def plan_seconds(self, spec: JacobianSpec, plan: Plan) -> float:
        compute = sum(self.block_seconds(spec, b) for b in plan.blocks)
        return self.trace_seconds * self.traces(plan) + compute

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def block_work(spec: JacobianSpec, batch: int, rows: int, prefix: int, watched: int | None = None,
               memory: bool = False) -> int:
    """The work of a block of ``batch`` samples and ``rows`` output steps that needs the first
    ``prefix`` input steps and differentiates ``watched`` of them (default: the whole prefix in
    the full layout, the lag window of ``rows`` consecutive steps in the lag layout), by
    ``spec.method``'s work formula (:mod:`jacengine.planning.methods`); with ``memory``, the
    work its peak memory grows with, else its time."""
    return METHODS[spec.method].work(_block_size(spec, batch, rows, prefix, watched), memory)


def result_bytes(spec: JacobianSpec, batch: int, rows: int, prefix: int, watched: int | None = None) -> float:
    """The copies of a block's result its method holds besides its memory work (its
    ``result_copies``), in bytes; sizes as for :func:`block_work`."""
    copies = METHODS[spec.method].result_copies
    if not copies:  # most methods: nothing to size (the planner asks often)
        return 0.0
    size = _block_size(spec, batch, rows, prefix, watched)
    return float(copies * np.dtype(spec.compute_dtype).itemsize * size.result_entries)


def block_result_bytes(spec: JacobianSpec, block: Block) -> float:
    """:func:`result_bytes` of a block at its compute shape."""
    return result_bytes(spec, *_compute_shape(spec, block))


def _block_size(spec: JacobianSpec, batch: int, rows: int, prefix: int, watched: int | None) -> BlockSize:
    """The sizes the methods' formulas take (see :func:`block_work` for the arguments)."""
    if watched is None:
        watched = lag_window(spec, rows, prefix) if spec.layout == "lag" else prefix
    return BlockSize(batch=max(batch, 2), rows=rows, prefix=prefix, watched=watched,
                     forward_steps=forward_length(spec, prefix), f_out=len(spec.f_out), f_in=len(spec.f_in))


def _compute_shape(spec: JacobianSpec, block: Block) -> tuple[int, int, int, int]:
    """(batch, rows, prefix, watched) of ``block`` at its padded compute shape, for :func:`block_work`."""
    prefix = block.forward_steps if spec.layout == "lag" else block.watch_steps
    return block.compute_batch, block.compute_rows, prefix, block.watch_steps


BUCKET_CHOICES = (1, 2, 4, 8)


def exact_prefixes(spec: JacobianSpec, cost: CostModel) -> bool:
    """Whether plans give causal blocks their exact prefix: extra shapes cost no trace."""
    return cost.one_trace and spec.layout == "full"


# Plans aim at this fraction of the budget: what the cost model leaves out (the writer thread's
# allocator arenas, resident memory that creeps up over a run, variation between shapes and
# thread schedules) needs room; docs/design.md, "Planning margins", has the evidence.
PLANNED_FRACTION = 0.90


def choose_plan(spec: JacobianSpec, cost: CostModel, budget_bytes: int, fallback_to_smallest: bool = False,
                max_work: float = math.inf) -> Plan:
    """The fastest predicted plan whose blocks all fit ``budget_bytes`` (and do at most
    ``max_work`` each: the calibration's trust region, see :mod:`jacengine.planning.calibration`).

    More prefix buckets skip more of a causal upper triangle but cost one trace each, so the
    candidates with 1, 2, 4 and 8 buckets are compared by predicted run time. With
    ``fallback_to_smallest``, a budget below the predicted minimum gives the plan of smallest
    blocks instead of an error (used to pick a probe block before the cost model is measured).
    """
    if fallback_to_smallest:
        try:
            return choose_plan(spec, cost, budget_bytes, max_work=max_work)
        except BudgetError:
            smallest_anywhere = cost.peak_bytes(spec, 1, 1, spec.input_steps)
            return choose_plan(spec, cost, math.ceil(smallest_anywhere / PLANNED_FRACTION) + 1, max_work=max_work)
    candidates, refusals = [], []
    choices: tuple[Prefixes, ...] = ((EXACT,) if exact_prefixes(spec, cost)
                                     else tuple(n for n in BUCKET_CHOICES if n == 1 or spec.causal))
    for prefixes in choices:
        try:
            candidates.append(plan_for_prefixes(spec, cost, budget_bytes, prefixes, max_work))
        except BudgetError as refusal:  # more shapes retain more memory: may not fit where fewer do
            refusals.append(refusal)
    if not candidates:
        raise refusals[0]
    return min(candidates, key=lambda plan: cost.plan_seconds(spec, plan))


def plan_for_prefixes(spec: JacobianSpec, cost: CostModel, budget_bytes: int, prefixes: Prefixes,
                     max_work: float = math.inf) -> Plan:
    """The plan with the largest blocks whose predicted peak (retained traces included) fits.

    Blocks are sized for the budget less what the plan's traces will retain; as that depends on
    how many shapes the plan ends up with, the room is shrunk by the excess until it fits. Raises
    :class:`BudgetError` naming the minimum budget when one sample times one output step does
    not fit.
    """
    usable = budget_bytes * PLANNED_FRACTION
    longest_watch = _longest_watch(spec, prefixes)
    smallest = cost.peak_bytes(spec, 1, 1, longest_watch)
    if smallest > usable:
        raise BudgetError(
            f"the budget of {format_bytes(int(budget_bytes))} is below the minimum for this model and "
            f"shape: one sample and one output step over {longest_watch} input steps is predicted "
            f"to need {format_bytes(int(smallest))}. Raise {setting('budget')} to at least "
            f"{format_bytes(int(minimum_budget(spec, cost, prefixes)))}."
        )
    room = usable
    for _ in range(4):
        plan = _largest_blocks(spec, cost, room, prefixes, max_work)
        excess = predicted_peak(spec, plan, cost) - usable
        if excess <= 0:
            return plan
        room = math.floor(room - excess)
    raise BudgetError(
        f"with prefixes {prefixes!r} the traced shapes alone would retain more than the budget of "
        f"{format_bytes(int(budget_bytes))}; raise {setting('budget')}."
    )


def minimum_budget(spec: JacobianSpec, cost: CostModel, prefixes: Prefixes | None = None) -> int:
    """The smallest budget a plan fits (with 5% to spare): one sample and one output step over
    the longest prefix, by this cost model."""
    if prefixes is None:
        prefixes = EXACT if exact_prefixes(spec, cost) else 1
    return math.ceil(cost.peak_bytes(spec, 1, 1, _longest_watch(spec, prefixes)) / PLANNED_FRACTION * 1.05)


def _longest_watch(spec: JacobianSpec, prefixes: Prefixes) -> int:
    """The input prefix of the plan's last block: all steps, or the causal prefix covering the last output."""
    if not spec.causal:
        return spec.input_steps
    t_in_chunk = default_time_chunk(spec.in_axis_length if prefixes == EXACT else spec.input_steps)
    return next(n for n in prefix_lengths(spec, t_in_chunk, prefixes) if n > spec.t_out[-1])


def _largest_blocks(spec: JacobianSpec, cost: CostModel, budget_bytes: float, prefixes: Prefixes,
                    max_work: float = math.inf) -> Plan:
    """The fastest predicted plan whose blocks fit ``budget_bytes`` by the per-block terms alone,
    and ``max_work``, over chunk grids (batch chunk x t_out chunk); on each grid blocks take as
    many t_out chunks as fit (down to one sample and one output step). Where no grid of the
    default t_out chunk and its halvings fits, chunks of one output step are tried with every
    batch chunk: a reverse-loop block costs the same time for any batch up to
    :data:`~jacengine.planning.methods.LOOP_FREE_BATCH`, so more samples per block are faster."""
    n_rows = len(spec.t_out)
    t_in_chunk = default_time_chunk(spec.in_axis_length)
    default_t_out_chunk = 1 if spec.sequence_to_one else default_time_chunk(n_rows)
    longest_watch = _longest_watch(spec, prefixes)

    def too_big(batch: int, rows: int, watch: int) -> bool:
        return (cost.peak_bytes(spec, batch, rows, watch) > budget_bytes
                or block_work(spec, batch, rows, watch, memory=True) > max_work)

    def plan_on_grid(batch_chunk: int, t_out_chunk: int) -> Plan:
        return _blocks_on_grid(spec, cost, budget_bytes, prefixes, max_work, batch_chunk, t_out_chunk, t_in_chunk)

    # Every grid whose largest block fits, from the whole batch and the default t_out chunk down
    # by halves (finer t_out chunks let blocks fill the budget more closely); the fastest wins.
    batch_chunks = _halvings(spec.batch, 1)
    t_out_chunks = _halvings(default_t_out_chunk, max(1, default_t_out_chunk // 8))
    fitting = [(b, t) for b in batch_chunks for t in t_out_chunks if not too_big(b, t, longest_watch)]
    if not fitting:  # a small budget: one output step per chunk, with as many samples as fit
        fitting = [(b, 1) for b in batch_chunks if not too_big(b, 1, longest_watch)] or [(1, 1)]
    plans = [plan_on_grid(b, t) for b, t in fitting]
    return min(plans, key=lambda plan: (cost.plan_seconds(spec, plan), len(plan.blocks)))


def _halvings(start: int, stop: int) -> list[int]:
    """start, ceil(start / 2), ... down to ``stop``."""
    values = [start]
    while values[-1] > stop:
        values.append(max(stop, math.ceil(values[-1] / 2)))
    return values


def _blocks_on_grid(spec: JacobianSpec, cost: CostModel, budget_bytes: float, prefixes: Prefixes, max_work: float,
                    batch_chunk: int, t_out_chunk: int, t_in_chunk: int) -> Plan:
    """On the given chunk grid, blocks of as many t_out chunks as fit ``budget_bytes`` and ``max_work``."""
    n_rows = len(spec.t_out)

    def chunks_within(limit: float, size: Callable[[int], float]) -> int:
        """How many t_out chunks a block may hold while ``size(chunks)`` (linear) stays within ``limit``."""
        one_chunk, per_extra_chunk = size(1), size(2) - size(1)
        if per_extra_chunk <= 0:
            return n_rows  # more rows cost nothing: one block over them all
        return max(1, 1 + int((limit - one_chunk) / per_extra_chunk))

    def chunks_per_block(watch: int) -> int:
        by_memory = chunks_within(budget_bytes, lambda k: cost.peak_bytes(spec, batch_chunk, k * t_out_chunk, watch))
        if max_work == math.inf:
            return by_memory
        by_trust = chunks_within(max_work, lambda k: block_work(spec, batch_chunk, k * t_out_chunk, watch, memory=True))
        return min(by_memory, by_trust)

    return make_plan(
        spec,
        batch_chunk=batch_chunk,
        t_out_chunk=t_out_chunk,
        t_in_chunk=t_in_chunk,
        chunks_per_block=chunks_per_block,
        prefixes=prefixes,
    )


def predicted_peak(spec: JacobianSpec, plan: Plan, cost: CostModel) -> float:
    """The largest predicted block peak, plus what the plan's other traced shapes retain."""
    retained = cost.retained_bytes_per_trace * (cost.traces(plan) - 1)
    return max(cost.block_peak_bytes(spec, b) for b in plan.blocks) + retained


def predicted_store_bytes(spec: JacobianSpec, plan: Plan) -> int:
    """Bytes written to disk: the written extent of every block (uncompressed)."""
    itemsize = {"float64": 8, "float32": 4, "float16": 2}[spec.store_dtype]
    per_entry = len(spec.f_out) * len(spec.f_in) * itemsize
    return sum(b.n_batch * b.n_rows * b.in_stop * per_entry for b in plan.blocks)
