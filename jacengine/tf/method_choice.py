"""Calibrate a method's cost model on the actual model, and let ``method="auto"`` choose one.

``auto`` decides in this order, tracing as little as it can (a pfor trace costs seconds):

0. ``recurrent`` is taken, with nothing traced, when the model reads as a recurrent chain
   (:func:`~jacengine.tf.recurrent.structure.read_chain`) and its reading agrees with the model
   and fits the budget: it does the causal floor's work in dense matmuls, so no generic method
   can beat it. Otherwise the reason (the first layer that keeps the model from being a chain)
   joins the method line and the generic methods are tried:
1. ``forward`` is left out without a trace where it cannot work: Keras' recurrent layers raise
   under ``tf.autodiff.ForwardAccumulator`` inside ``tf.function``.
2. ``reverse-loop`` (VJPs in a while loop) is measured first where it may win (a small problem
   or a small budget, :func:`_loop_may_win`): its trace is the cheapest. If its
   whole predicted run takes less than :data:`PFOR_TRACE_FACTOR` times its own trace, no pfor
   method can win (their trace builds the same gradient graph and then vectorises it), so it is
   chosen without tracing them: the small-problem fast path. Nor are they traced when the budget
   is below :data:`PFOR_TRACE_MEMORY_FACTOR` times the loop's first probe's peak: a pfor trace
   alone would take most of it.
3. Otherwise ``reverse`` (pfor VJPs) and ``forward`` (pfor JVPs) are measured too. A method that
   raises, or for which pfor falls back to a while loop, is dropped with one log line naming
   why; of the pfor methods that work and fit the budget the one with the shortest predicted run
   wins, the loop (measured now if it was not) only when none does; the winner alone goes on to
   measure larger blocks (:func:`refine`).

Every probe is a block of a plan, and its result is kept: when the final plan contains the
same block (:meth:`CalibratedMethod.stored_results`), it is written rather than computed again.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from jacengine.errors import BudgetError, MethodUnsupported
from jacengine.planning.blocks import Block, Plan, make_plan
from jacengine.planning.costmodel import PLANNED_FRACTION, CostModel, block_work, choose_plan
from jacengine.planning.methods import METHODS
from jacengine.planning.spec import JacobianSpec
from jacengine.storage.inputs import Inputs
from jacengine.tf.adapters import TFModel
from jacengine.tf.computers import Computer, block_computer
from jacengine.tf.probes import HEADROOM, Measurement, MemoryReader, measure_probe, prior_cost
from jacengine.tf.recurrent.computer import RecurrentBlockComputer
from jacengine.tf.recurrent.structure import METHOD as RECURRENT
from jacengine.tf.recurrent.structure import describe, why_not_chain
from jacengine.timing import phase

log = logging.getLogger("jacengine")

LOOP_FIRST = next(name for name, method in METHODS.items() if not method.vectorised and not method.structured)
PFOR_METHODS = tuple(name for name, method in METHODS.items() if method.vectorised)  # measured after the loop
# A pfor trace builds the loop's gradient graph and then vectorises it, so it costs several times
# the loop's trace (the speed benchmark's profile shows both); a loop run shorter than this many
# of its own traces cannot be beaten by a method that must trace first.
PFOR_TRACE_FACTOR = 3.0
# Likewise a pfor trace's peak is several times the loop's first probe's: below this many of
# those peaks no pfor method is traced, so a small budget is not spent on a trace alone.
PFOR_TRACE_MEMORY_FACTOR = 3.0
# The loop is measured only where it may win: small problems (at most this much time work; the
# seed problem is well below) or small budgets.
LOOP_FAST_PATH_MAX_WORK = 1_000_000
LOOP_BUDGET_BELOW = 512 * 2**20
FIRST_PROBE_SAMPLES = 2  # a method's first probe pays its trace and gives its rates: keep it cheap
LOOP_PROBE_SAMPLES = 32  # but the loop vectorises over samples only: fewer would measure its overhead
SLIVER_ROWS = 8
TRUST_FACTOR = 16.0  # plans extrapolate the measured cost model at most this far beyond the largest probe
MAX_REPROBES = 4  # probes grow up to TRUST_FACTOR ** MAX_REPROBES times the first
# Memory per work is not constant over large ranges (pfor's buffers grow faster than linearly
# on some models): a final plan whose blocks were not measured stays within this factor of the
# largest block that was.
FINAL_TRUST_FACTOR = 2.0
# A recurrent sweep's speed is per sample, not per block: larger blocks gain nothing, and a
# single huge block loses the overlap of the store's writes with the next block's sweep, so
# larger budgets are planned as this one.
RECURRENT_PLAN_BYTES = 2**30
_RECURRENT = {"RNN", "Bidirectional"}  # base classes, Keras 3 and tf_keras alike (LSTM, GRU, SimpleRNN are RNNs)


@dataclass
class CalibratedMethod:
    """A method with its block computer, measured cost model and plan, and its probes' results."""

    spec: JacobianSpec
    computer: Computer
    cost: CostModel
    plan: Plan
    probe: Block
    results: dict[Block, np.ndarray] = field(default_factory=dict)  # by block with index 0
    largest: Measurement | None = None  # of the largest probe measured

    def stored_results(self) -> dict[Block, np.ndarray]:
        """The probes' results for blocks of the final plan (same region and compute shape)."""
        found = {}
        for block in self.plan.blocks:
            result = self.results.get(replace(block, index=0))
            if result is not None:
                found[block] = result
        return found


@dataclass
class Meters:
    """What a calibration needs besides the model: the inputs, the budget and the memory readers."""

    inputs: Inputs
    budget_bytes: int
    tensors: MemoryReader
    process: Any  # jacengine.budget.ProcessMemory, or None on a GPU


def calibrate_method(model: TFModel, spec: JacobianSpec, meters: Meters, strict: bool = False) -> CalibratedMethod:
    """Measure probe blocks of ``spec.method`` and plan with the result: :func:`first_probe`,
    then :func:`refine` (the recurrent method: :func:`plan_recurrent`)."""
    first = first_probe(model, spec, meters, strict)
    return plan_recurrent(first, meters) if spec.method == RECURRENT else refine(first, meters)


def plan_recurrent(start: CalibratedMethod, meters: Meters) -> CalibratedMethod:
    """Plan the recurrent method from two probes: its memory is numpy arrays whose sizes it
    knows (per unit of work: :meth:`RecurrentBlockComputer.bytes_per_work`, with the headroom of
    measured terms), so a probe measures only the fixed part (the runtime, the windows of local
    Jacobians, the threads' heaps), as its peak less its work, and never less than the sweep's
    own (:meth:`RecurrentBlockComputer.fixed_bytes`); nothing is pooled by TensorFlow's
    allocator. The first probe (a sliver) sizes a plan; that plan's first block is then measured
    too (a sliver's threads and heaps are smaller than a block's, and its time is mostly
    overhead) and the plan made again with the larger fixed part and its time per work. The
    block's result is kept for the plan, which usually still begins with it. Budgets above
    :data:`RECURRENT_PLAN_BYTES` are planned as that much."""
    computer = start.computer
    assert isinstance(computer, RecurrentBlockComputer)
    spec, results = start.spec, dict(start.results)
    per_work = computer.bytes_per_work()

    def fitted(cost: CostModel, measured: Measurement) -> CostModel:
        # at least what the sweep is known to hold: a probe may read less where resident memory
        # fell below the baseline since it was taken (heap returned to the OS)
        fixed = max(cost.fixed_bytes, (measured.peak_bytes - per_work * measured.work) * HEADROOM,
                    computer.fixed_bytes() * HEADROOM)
        return replace(cost, fixed_bytes=fixed, bytes_per_work=per_work * HEADROOM, pool_factor=1.0,
                       pooled_bytes_per_work=None, retained_bytes_per_trace=0.0, trace_seconds=0.0)

    assert start.largest is not None
    budget = min(meters.budget_bytes, RECURRENT_PLAN_BYTES)
    cost = fitted(replace(start.cost, fixed_bytes=0.0), start.largest)
    first = choose_plan(spec, cost, budget).blocks[0]
    with _calibrating(spec):
        timed, result, measured = measure_probe(computer, meters.inputs, first, meters.tensors, meters.process, timed=cost)
    results[replace(first, index=0)] = result
    cost = fitted(replace(cost, seconds_per_work=timed.seconds_per_work), measured)
    computer.strict = False
    return dataclasses.replace(start, cost=cost, plan=choose_plan(spec, cost, budget), probe=first,
                               results=results, largest=measured)


def _calibrating(spec: JacobianSpec) -> Any:
    return phase(f"calibrate {spec.method}")


def first_probe(model: TFModel, spec: JacobianSpec, meters: Meters, strict: bool = False) -> CalibratedMethod:
    """Trace the method and measure a first, cheap probe block; plan within the trust region
    around it."""
    with _calibrating(spec):
        return _first_probe(model, spec, meters, strict)


def _first_probe(model: TFModel, spec: JacobianSpec, meters: Meters, strict: bool) -> CalibratedMethod:
    computer = block_computer(model, spec, strict=strict)
    prior = prior_cost(model, spec)
    probe, rate_probe = _slivers(spec, choose_plan(spec, prior, meters.budget_bytes, fallback_to_smallest=True))
    cost, result, measurement = measure_probe(
        computer, meters.inputs, probe, meters.tensors, meters.process, rate_probe=rate_probe,
        assumed_bytes_per_work=prior.bytes_per_work if rate_probe is not None else None)
    plan = choose_plan(spec, cost, meters.budget_bytes, max_work=TRUST_FACTOR * CostModel.work(spec, probe, memory=True))
    return CalibratedMethod(spec, computer, cost, plan, probe, {replace(probe, index=0): result}, measurement)


def _slivers(spec: JacobianSpec, prior: Plan) -> tuple[Block, Block | None]:
    """The first probe and the block that times it against a larger one: the first
    :data:`SLIVER_ROWS` output steps, and twice as many, of the first :data:`FIRST_PROBE_SAMPLES`
    samples (pfor methods) or :data:`LOOP_PROBE_SAMPLES` (the loop) on the t_in grid of the
    prior's plan, with exact prefixes. They pay the trace and give the rates at little cost of
    their own; the trust region then grows the probes to the plan's blocks. The lag layout's static-shape
    functions trace once per shape: there the prior plan's first block alone is the probe."""
    if spec.layout != "full":
        return prior.blocks[0], None
    samples = min(spec.batch, LOOP_PROBE_SAMPLES if spec.method == LOOP_FIRST else FIRST_PROBE_SAMPLES)
    slivers = [make_plan(spec, batch_chunk=samples, t_out_chunk=SLIVER_ROWS * chunks, t_in_chunk=prior.t_in_chunk,
                         chunks_per_block=lambda watch: 1, exact_prefixes=True).blocks[0] for chunks in (1, 2)]
    return slivers[0], slivers[1] if slivers[1] != slivers[0] else None


def refine(start: CalibratedMethod, meters: Meters) -> CalibratedMethod:
    """Measure the plan's blocks of :func:`_blocks_to_measure` while one is not a block
    measured already; each measurement refits the memory line (see
    :func:`~jacengine.tf.probes.measure_probe`) through it and the largest block measured before
    it since the trace: the first of these blocks is preceded by one of a quarter of its work.

    Memory is not quite linear in the work over large ranges (allocator pools, oneDNN scratch
    buffers), so a plan never trusts the cost model more than :data:`TRUST_FACTOR` times beyond
    the largest block measured: a large budget is reached by measuring blocks that grow by that
    factor, never by one long extrapolation (which overran large budgets), and a final plan
    whose blocks were not measured stays within :data:`FINAL_TRUST_FACTOR` of the largest that
    was; when the probes run out before the blocks of :func:`_blocks_to_measure` were measured,
    one more probe measures what is left of them. Each measured block is a block of the plan at
    the time, and its result is kept for the final plan.
    """
    with _calibrating(start.spec):
        return _refine(start, meters)


def _refine(start: CalibratedMethod, meters: Meters) -> CalibratedMethod:
    spec, computer, cost, probe = start.spec, start.computer, start.cost, start.probe
    results = dict(start.results)
    largest: Measurement | None = None  # the first probe's peak holds its trace: not a point of the line
    measured_work = CostModel.work(spec, probe, memory=True)

    def measure(target: Block) -> None:
        nonlocal cost, probe, largest, measured_work
        if not computer.polymorphic and target.shape_key != probe.shape_key:
            computer.release()  # the probe's compiled graph will not be used again: free it
        probe = target
        quarter = _quarter(probe)
        if largest is None and quarter != probe:  # a second point for the line, a quarter of the work
            # the trace's transient peak is behind us: the fixed term is measured afresh from here
            cost, _, largest = measure_probe(computer, meters.inputs, quarter, meters.tensors, meters.process,
                                             timed=replace(cost, fixed_bytes=0.0))
        measured, result, measurement = measure_probe(computer, meters.inputs, probe, meters.tensors, meters.process,
                                                      timed=cost, earlier=largest)
        results[replace(probe, index=0)] = result
        cost = measured  # a line through this probe and the largest before it (see measure_probe)
        if largest is None or measurement.work >= largest.work:
            largest = measurement
        measured_work = max(measured_work, CostModel.work(spec, probe, memory=True))

    def unmeasured(plan: Plan) -> Block | None:
        return next((block for block in _blocks_to_measure(spec, plan) if replace(block, index=0) not in results), None)

    plan = choose_plan(spec, cost, meters.budget_bytes, max_work=TRUST_FACTOR * measured_work)
    for _ in range(MAX_REPROBES):
        target = unmeasured(plan)
        if target is None:
            break
        measure(target)
        plan = choose_plan(spec, cost, meters.budget_bytes, max_work=TRUST_FACTOR * measured_work)
    final_trust = FINAL_TRUST_FACTOR * measured_work
    if CostModel.work(spec, _largest_block(spec, plan), memory=True) > final_trust or unmeasured(plan) is not None:
        # out of probes before the plan's blocks were measured: measure what is left of them
        # once more, and stay close to what was measured
        target = unmeasured(choose_plan(spec, cost, meters.budget_bytes, max_work=final_trust))
        if target is not None:
            measure(target)
        plan = choose_plan(spec, cost, meters.budget_bytes, max_work=FINAL_TRUST_FACTOR * measured_work)
    computer.strict = False  # from here on a fallback on some other block shape only warns
    return CalibratedMethod(spec, computer, cost, plan, probe, results, largest or start.largest)


def _largest_block(spec: JacobianSpec, plan: Plan) -> Block:
    """The block of ``plan`` with the most memory work (the first of those)."""
    return max(plan.blocks, key=lambda block: (CostModel.work(spec, block, memory=True), -block.index))


def _blocks_to_measure(spec: JacobianSpec, plan: Plan) -> list[Block]:
    """The plan's blocks that calibration measures, in order.

    First the plan's first block (plans pack their blocks to about the same predicted peak, so
    it is representative, and the one a replanned grid is most likely to keep), or its largest
    when the first has under half the largest's memory work. Then the block with the longest
    prefix (the largest of those), unless it has under half the largest's work: memory per work
    is not the same at every prefix, in either direction. A pfor block of many rows over a short
    prefix holds more per work than one over the whole sequence (a plan measured only at its
    longest prefix overran 256 MiB by 3% at (8, 1000, 8)); a reverse-loop block of one step over
    1000 input steps holds three times as much per work as one of many steps over 63. Where the
    two peaks give no line, the second raises the fixed term to cover both.
    """
    first, largest = plan.blocks[0], _largest_block(spec, plan)
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


def forward_mode_cannot_work(model: TFModel) -> str | None:
    """Why forward mode is bound to fail for ``model`` (without tracing it), or None."""
    recurrent = sorted({type(layer).__name__ for layer in model.layers()
                        if any(cls.__name__ in _RECURRENT for cls in type(layer).__mro__)})
    if recurrent:
        return f"Keras' {', '.join(recurrent)} raise under ForwardAccumulator in tf.function"
    return None


def choose_method(model: TFModel, spec: JacobianSpec, meters: Meters) -> tuple[CalibratedMethod, str]:
    """The fastest method that works for ``model``, calibrated; and a one-line reason."""
    why_not = why_not_chain(model)
    if why_not is None:
        try:
            recurrent = calibrate_method(model, replace(spec, method=RECURRENT), meters, strict=True)
        except (MethodUnsupported, BudgetError) as refusal:
            why_not = refusal.reason if isinstance(refusal, MethodUnsupported) else "does not fit the budget"
        else:
            chain = describe(recurrent.computer.chain)  # type: ignore[union-attr]
            return recurrent, f"method {RECURRENT} (auto: the model is a recurrent chain, {chain}; nothing traced)"
    log.info("method auto: %s does not apply (%s); trying the generic methods", RECURRENT, why_not)
    return _choose_generic_method(model, spec, meters, dropped=[f"{RECURRENT}: {why_not}"])


def _choose_generic_method(model: TFModel, spec: JacobianSpec, meters: Meters,
                           dropped: list[str]) -> tuple[CalibratedMethod, str]:
    """The fastest generic method that works for ``model``, calibrated; and a one-line reason
    that includes ``dropped`` (why methods already ruled out were)."""
    working: list[tuple[CalibratedMethod, int]] = []  # with the resident memory when it finished
    budget_refusals: list[BudgetError] = []

    def measure(method: str) -> CalibratedMethod | None:
        try:
            candidate = first_probe(model, replace(spec, method=method), meters, strict=True)
        except MethodUnsupported as why:
            dropped.append(f"{method}: {why.reason}")
            log.info("method auto: %s does not work for this model (%s); trying the next method", method, why.reason)
            return None
        except BudgetError as refusal:
            budget_refusals.append(refusal)
            dropped.append(f"{method}: does not fit the budget")
            return None
        working.append((candidate, _resident(meters)))
        return candidate

    def predicted_seconds(candidate: CalibratedMethod) -> float:
        return candidate.cost.plan_seconds(candidate.spec, candidate.plan)

    loop = measure(LOOP_FIRST) if _loop_may_win(spec, meters.budget_bytes) else None
    fast_path = loop is not None and predicted_seconds(loop) <= PFOR_TRACE_FACTOR * loop.cost.trace_seconds
    too_tight = (loop is not None and loop.largest is not None
                 and PFOR_TRACE_MEMORY_FACTOR * loop.largest.peak_bytes > PLANNED_FRACTION * meters.budget_bytes)
    if fast_path:
        dropped.append(f"pfor methods not traced: the loop's whole run is predicted within {PFOR_TRACE_FACTOR:g}x its trace")
    elif too_tight:
        dropped.append(f"pfor methods not traced: their trace is predicted to need {PFOR_TRACE_MEMORY_FACTOR:g}x the loop's "
                       "first probe, more than the budget")
    else:
        for method in PFOR_METHODS:
            why_not = forward_mode_cannot_work(model) if method == "forward" else None
            if why_not:
                dropped.append(f"forward: {why_not}")
            else:
                measure(method)
    if not working and loop is None:  # the last rung: works wherever gradients do
        measure(LOOP_FIRST)
    if not working:
        if budget_refusals:
            raise budget_refusals[0]  # it names the minimum budget
        raise MethodUnsupported("auto", "no method works for this model: " + "; ".join(dropped))

    # Beyond the fast path a pfor method that works and fits wins: the loop's rate on a sliver
    # is not comparable with pfor's (the loop vectorises over samples only, pfor over rows too,
    # so pfor's rate improves with block size where the loop's does not).
    pfor = [entry for entry in working if entry[0].spec.method in PFOR_METHODS]
    chosen, resident_then = min(pfor or working, key=lambda entry: predicted_seconds(entry[0]))
    for other, _ in working:
        if other is not chosen:
            other.computer.release()
    compared = ", ".join(f"{c.spec.method} {predicted_seconds(c):.1f} s" for c, _ in working)
    reasons = [f"predicted from first probes {compared}"] if len(working) > 1 else []
    chosen = refine(_charge_leftovers(chosen, resident_then, meters), meters)
    return chosen, f"method {chosen.spec.method} (auto: {'; '.join([*reasons, *dropped]) or 'the only candidate'})"


def _loop_may_win(spec: JacobianSpec, budget_bytes: int) -> bool:
    """Whether measuring the loop first can pay: on a small problem (its fast path) or a small
    budget (where a pfor trace may not fit). Otherwise it would cost a trace and probes only to
    lose to pfor, which is faster per unit of work on large blocks."""
    loop = replace(spec, method=LOOP_FIRST)
    rows = [block_work(loop, 1, 1, prefix) for prefix in (t + 1 if spec.causal else spec.input_steps for t in spec.t_out)]
    return sum(rows) <= LOOP_FAST_PATH_MAX_WORK or budget_bytes < LOOP_BUDGET_BELOW


def _resident(meters: Meters) -> int:
    return meters.process.current_above_baseline() if meters.process is not None else 0


def _charge_leftovers(chosen: CalibratedMethod, resident_then: int, meters: Meters) -> CalibratedMethod:
    """Probing a later candidate left traces resident that the chosen method's measurement did
    not see: add them to its fixed term (:func:`refine` plans with it)."""
    leftover = _resident(meters) - resident_then
    if leftover <= 0:
        return chosen
    return dataclasses.replace(chosen, cost=replace(chosen.cost, fixed_bytes=chosen.cost.fixed_bytes + leftover))
