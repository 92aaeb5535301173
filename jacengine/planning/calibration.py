"""Calibrate one method: which probe blocks to measure, and the plan their readings give.

Framework-free planning: a backend's :class:`Prober` runs a block and reads its time and
memory; this module decides which blocks to run, fits the cost model to the readings
(:mod:`jacengine.planning.fitting`) and refines the plan within the budget. Every probe is a
block of a plan, and its result is kept: when the final plan contains the same block
(:meth:`CalibratedMethod.stored_results`), it is written rather than computed again.

A generic method is measured in two stages: :func:`first_probe` (a sliver, which pays the
trace and gives the rates) and :func:`refine` (the plan's own blocks, growing by at most
:data:`TRUST_FACTOR` at a time). A method whose memory its computer knows
(:attr:`Prober.known_memory`, the recurrent chain's numpy arrays) needs only its fixed part
measured: :func:`plan_known_memory`.
"""

from __future__ import annotations

import dataclasses
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from jacengine.planning.blocks import EXACT, Block, Plan, make_plan
from jacengine.planning.costmodel import CostModel, choose_plan
from jacengine.planning.fitting import HEADROOM, Reading, Timings, Traits, fit_first, fit_next
from jacengine.planning.methods import METHODS, Method
from jacengine.planning.spec import JacobianSpec
from jacengine.timing import phase

LOOP_FIRST = next(name for name, method in METHODS.items() if not method.vectorised and not method.structured)
FIRST_PROBE_SAMPLES = 2  # a method's first probe pays its trace and gives its rates: keep it cheap
LOOP_PROBE_SAMPLES = 32  # but the loop vectorises over samples only: fewer would measure its overhead
SLIVER_ROWS = 8
TRUST_FACTOR = 16.0  # plans extrapolate the measured cost model at most this far beyond the largest probe
MAX_REPROBES = 4  # probes grow up to TRUST_FACTOR ** MAX_REPROBES times the first
# Memory per work is not constant over large ranges (pfor's buffers grow faster than linearly
# on some models): a final plan whose blocks were not measured stays within this factor of the
# largest block that was.
FINAL_TRUST_FACTOR = 2.0


@dataclass(frozen=True)
class KnownMemory:
    """Memory a block computer knows it allocates: exactly ``bytes_per_work`` per unit of memory
    work, and at least ``fixed_bytes`` besides (buffers of a fixed size)."""

    bytes_per_work: float
    fixed_bytes: float


class BlockComputer(Protocol):
    """Computes J for one block from the inputs the block needs."""

    def compute(self, block: Block, x: np.ndarray) -> np.ndarray:
        """``x``: (block samples, forward steps, F_in) -> J of the block, in the store's layout and
        ``spec.block_dtype``; raises :class:`~jacengine.errors.BlockOutOfMemory` when out of memory."""
        ...


class Prober(Traits, Protocol):
    """A method's block computer, instrumented by the backend: runs probe blocks on the actual
    model and reads what they cost."""

    @property
    def computer(self) -> BlockComputer:
        """The block computer (the run goes on with it)."""
        ...

    @property
    def known_memory(self) -> KnownMemory | None:
        """What the computer knows of its own memory (None: a black box, measured)."""
        ...

    @property
    def summary(self) -> str:
        """Why the method applies, for the method line ("" for a generic method)."""
        ...

    def run(self, block: Block) -> tuple[Reading, np.ndarray]:
        """Compute ``block`` once, from the baseline's point of view: its reading and result."""
        ...

    def time(self, block: Block) -> float:
        """Seconds of one more call of ``block``."""
        ...

    def release(self) -> None:
        """Free the compiled function of the last block shape (it will not be used again)."""
        ...

    def settle(self) -> None:
        """Calibration is over: a fallback on some other block shape from here on only warns."""
        ...


@dataclass
class CalibratedMethod:
    """A method with its prober, measured cost model and plan, and its probes' results."""

    spec: JacobianSpec
    prober: Prober
    cost: CostModel
    plan: Plan
    probe: Block
    results: dict[Block, np.ndarray] = field(default_factory=dict)  # by block with index 0
    largest: Reading | None = None  # of the largest probe measured

    def stored_results(self) -> dict[Block, np.ndarray]:
        """The probes' results for blocks of the final plan (same region and compute shape)."""
        found = {}
        for block in self.plan.blocks:
            result = self.results.get(replace(block, index=0))
            if result is not None:
                found[block] = result
        return found


def calibrate_method(prober: Prober, spec: JacobianSpec, prior: CostModel, budget_bytes: int) -> CalibratedMethod:
    """Measure probe blocks of ``spec.method`` and plan with the result: :func:`first_probe`,
    then :func:`refine`, or :func:`plan_known_memory` where the computer knows its memory."""
    first = first_probe(prober, spec, prior, budget_bytes)
    if prober.known_memory is not None:
        return plan_known_memory(first, budget_bytes)
    return refine(first, budget_bytes)


def calibrating(spec: JacobianSpec) -> AbstractContextManager[None]:
    """The profile's phase for calibrating ``spec.method``."""
    return phase(f"calibrate {spec.method}")


def first_probe(prober: Prober, spec: JacobianSpec, prior: CostModel, budget_bytes: int) -> CalibratedMethod:
    """Measure a first, cheap probe block (see :func:`slivers`); plan within the trust region
    around it. ``prior``: a pessimistic cost model from the model's size, which sizes the probe
    and stands for the per-work memory a sliver cannot measure."""
    with calibrating(spec):
        probe, larger = slivers(spec, choose_plan(spec, prior, budget_bytes, fallback_to_smallest=True))
        reading, result = prober.run(probe)
        timings = Timings(prober.time(probe), None if larger is None else (CostModel.work(spec, larger), prober.time(larger)))
        cost = fit_first(reading, timings, prober, prior.bytes_per_work if larger is not None else None)
        plan = choose_plan(spec, cost, budget_bytes, max_work=TRUST_FACTOR * reading.memory_work)
        return CalibratedMethod(spec, prober, cost, plan, probe, {replace(probe, index=0): result}, reading)


def slivers(spec: JacobianSpec, prior: Plan) -> tuple[Block, Block | None]:
    """The first probe and the block that times it against a larger one: the first
    :data:`SLIVER_ROWS` output steps, and twice as many, of the first :data:`FIRST_PROBE_SAMPLES`
    samples (pfor methods) or :data:`LOOP_PROBE_SAMPLES` (the loop) on the t_in grid of the
    prior's plan, with exact prefixes. They pay the trace and give the rates at little cost of
    their own; the trust region then grows the probes to the plan's blocks. The lag layout's
    static-shape functions trace once per shape: there the prior plan's first block alone is
    the probe."""
    if spec.layout != "full":
        return prior.blocks[0], None
    samples = min(spec.batch, LOOP_PROBE_SAMPLES if spec.method == LOOP_FIRST else FIRST_PROBE_SAMPLES)
    made = [make_plan(spec, batch_chunk=samples, t_out_chunk=SLIVER_ROWS * chunks, t_in_chunk=prior.t_in_chunk,
                      chunks_per_block=lambda watch: 1, prefixes=EXACT).blocks[0] for chunks in (1, 2)]
    return made[0], made[1] if made[1] != made[0] else None


def plan_known_memory(start: CalibratedMethod, budget_bytes: int) -> CalibratedMethod:
    """Plan a method whose computer knows its memory per unit of work (with the headroom of
    measured terms): a probe measures only the fixed part (the runtime, buffers of a fixed size,
    the threads' heaps), as its peak less its work, and never less than the computer's own
    :attr:`KnownMemory.fixed_bytes`; nothing is pooled by an allocator. The first probe (a
    sliver) sizes a plan; that plan's first block is then measured too (a sliver's threads and
    heaps are smaller than a block's, and its time is mostly overhead) and the plan made again
    with the larger fixed part and its time per work. The block's result is kept for the plan,
    which usually still begins with it. Budgets above the method's
    :attr:`~jacengine.planning.methods.Method.plan_bytes` are planned as that much."""
    prober, spec, results = start.prober, start.spec, dict(start.results)
    known = prober.known_memory
    assert known is not None and start.largest is not None

    def fitted(cost: CostModel, measured: Reading) -> CostModel:
        # at least what the computer is known to hold: a probe may read less where resident
        # memory fell below the baseline since it was taken (heap returned to the OS)
        fixed = max(cost.fixed_bytes, (measured.peak_bytes - known.bytes_per_work * measured.memory_work) * HEADROOM,
                    known.fixed_bytes * HEADROOM)
        return replace(cost, fixed_bytes=fixed, bytes_per_work=known.bytes_per_work * HEADROOM, pool_factor=1.0,
                       pooled_bytes_per_work=None, retained_bytes_per_trace=0.0, trace_seconds=0.0)

    budget = _planned_budget(METHODS[spec.method], budget_bytes)
    cost = fitted(replace(start.cost, fixed_bytes=0.0), start.largest)
    first = choose_plan(spec, cost, budget).blocks[0]
    with calibrating(spec):
        reading, result = prober.run(first)
    results[replace(first, index=0)] = result
    cost = fitted(replace(cost, seconds_per_work=fit_next(reading, prober, cost).seconds_per_work), reading)
    prober.settle()
    return dataclasses.replace(start, cost=cost, plan=choose_plan(spec, cost, budget), probe=first,
                               results=results, largest=reading)


def _planned_budget(method: Method, budget_bytes: int) -> int:
    return budget_bytes if method.plan_bytes is None else min(budget_bytes, method.plan_bytes)


def refine(start: CalibratedMethod, budget_bytes: int) -> CalibratedMethod:
    """Measure the plan's blocks of :func:`blocks_to_measure` while one is not a block measured
    already; each measurement refits the memory line (:func:`~jacengine.planning.fitting.fit_next`)
    through it and the largest block measured before it since the trace: the first of these
    blocks is preceded by one of a quarter of its work.

    Memory is not quite linear in the work over large ranges (allocator pools, oneDNN scratch
    buffers), so a plan never trusts the cost model more than :data:`TRUST_FACTOR` times beyond
    the largest block measured: a large budget is reached by measuring blocks that grow by that
    factor, never by one long extrapolation, and a final plan whose blocks were not measured
    stays within :data:`FINAL_TRUST_FACTOR` of the largest that was; when the probes run out
    before the blocks of :func:`blocks_to_measure` were measured, one more probe measures what
    is left of them. Each measured block is a block of the plan at the time, and its result is
    kept for the final plan.
    """
    with calibrating(start.spec):
        refining = _Refinement(start)
        plan = refining.plan(budget_bytes, TRUST_FACTOR)
        for _ in range(MAX_REPROBES):
            target = refining.unmeasured(plan)
            if target is None:
                break
            refining.measure(target)
            plan = refining.plan(budget_bytes, TRUST_FACTOR)
        if refining.work(largest_block(start.spec, plan)) > FINAL_TRUST_FACTOR * refining.measured_work \
                or refining.unmeasured(plan) is not None:
            # out of probes before the plan's blocks were measured: measure what is left of them
            # once more, and stay close to what was measured
            target = refining.unmeasured(refining.plan(budget_bytes, FINAL_TRUST_FACTOR))
            if target is not None:
                refining.measure(target)
            plan = refining.plan(budget_bytes, FINAL_TRUST_FACTOR)
        start.prober.settle()
        return CalibratedMethod(start.spec, start.prober, refining.cost, plan, refining.probe, refining.results,
                                refining.largest or start.largest)


class _Refinement:
    """The state :func:`refine` carries from probe to probe."""

    def __init__(self, start: CalibratedMethod) -> None:
        self.spec, self.prober, self.cost, self.probe = start.spec, start.prober, start.cost, start.probe
        self.results = dict(start.results)
        self.largest: Reading | None = None  # the first probe's peak holds its trace: not a point of the line
        self.measured_work = self.work(start.probe)

    def work(self, block: Block) -> int:
        return CostModel.work(self.spec, block, memory=True)

    def plan(self, budget_bytes: int, trust: float) -> Plan:
        return choose_plan(self.spec, self.cost, budget_bytes, max_work=trust * self.measured_work)

    def unmeasured(self, plan: Plan) -> Block | None:
        return next((block for block in blocks_to_measure(self.spec, plan)
                     if replace(block, index=0) not in self.results), None)

    def measure(self, target: Block) -> None:
        if not self.prober.one_trace and target.shape_key != self.probe.shape_key:
            self.prober.release()  # the probe's compiled function will not be used again: free it
        self.probe = target
        quarter = _quarter(target)
        if self.largest is None and quarter != target:  # a second point for the line, a quarter of the work
            # the trace's transient peak is behind us: the fixed term is measured afresh from here
            reading, _ = self.prober.run(quarter)
            self.cost, self.largest = fit_next(reading, self.prober, replace(self.cost, fixed_bytes=0.0)), reading
        reading, result = self.prober.run(target)
        self.results[replace(target, index=0)] = result
        self.cost = fit_next(reading, self.prober, self.cost, earlier=self.largest)
        if self.largest is None or reading.memory_work >= self.largest.memory_work:
            self.largest = reading
        self.measured_work = max(self.measured_work, reading.memory_work)


def largest_block(spec: JacobianSpec, plan: Plan) -> Block:
    """The block of ``plan`` with the most memory work (the first of those)."""
    return max(plan.blocks, key=lambda block: (CostModel.work(spec, block, memory=True), -block.index))


def blocks_to_measure(spec: JacobianSpec, plan: Plan) -> list[Block]:
    """The plan's blocks that calibration measures, in order.

    First the plan's first block (plans pack their blocks to about the same predicted peak, so
    it is representative, and the one a replanned grid is most likely to keep), or its largest
    when the first has under half the largest's memory work. Then the block with the longest
    prefix (the largest of those), unless it has under half the largest's work: memory per work
    is not the same at every prefix, in either direction. A pfor block of many rows over a short
    prefix holds more per work than one over the whole sequence; a reverse-loop block of one
    step over a long prefix holds more per work than one of many steps over a short one. Where
    the two peaks give no line, the second raises the fixed term to cover both.
    """
    first, largest = plan.blocks[0], largest_block(spec, plan)
    largest_work = CostModel.work(spec, largest, memory=True)
    blocks = [largest if 2 * CostModel.work(spec, first, memory=True) < largest_work else first]
    longest = max(plan.blocks, key=lambda block: (block.watch_steps, CostModel.work(spec, block, memory=True), -block.index))
    if 2 * CostModel.work(spec, longest, memory=True) >= largest_work and longest not in blocks:
        blocks.append(longest)
    return blocks


def _quarter(block: Block) -> Block:
    """``block`` with half its samples and half its rows (the same prefix): about a quarter of its work."""
    samples, rows = max(1, block.n_batch // 2), max(1, block.n_rows // 2)
    return replace(block, batch_stop=block.batch_start + samples, compute_batch=samples,
                   row_stop=block.row_start + rows, compute_rows=rows)
