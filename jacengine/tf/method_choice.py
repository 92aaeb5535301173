"""Calibrate a method's cost model on the actual model, and let ``method="auto"`` choose one.

``auto`` walks a ladder: ``reverse`` (pfor VJPs), ``forward`` (pfor JVPs) and ``reverse-loop``
(VJPs in a while loop) each measure a first probe block; a method that raises, or for which pfor
falls back to a while loop, is dropped with one log line naming why; of those that work (and fit
the budget) the one with the shortest predicted run time wins and alone goes on to measure
larger blocks (:func:`refine`). None is assumed faster: the loop took 0.4-0.9 times the pfor
method's time on the seed LSTM at (32, 500, 1) and a causal Conv1D, but 4.2 times on the LSTM
at (8, 1000, 8) (see the methods benchmark). A first probe is small, so the comparison can
miss: pfor's time per unit of work grows with the block.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, replace
from typing import Any

import keras
import numpy as np

from jacengine.costmodel import CostModel, choose_plan
from jacengine.errors import BudgetError, MethodUnsupported
from jacengine.inputs import Inputs
from jacengine.plan import Block, Plan
from jacengine.spec import JacobianSpec
from jacengine.tf.blocks import BlockComputer
from jacengine.tf.calibrate import MemoryReader, calibrate, prior_cost

log = logging.getLogger("jacengine")

CANDIDATES = ("reverse", "forward", "reverse-loop")  # what auto measures, in this order
TRUST_FACTOR = 16.0  # plans extrapolate the measured cost model at most this far beyond the largest probe
MAX_REPROBES = 2  # probes grow up to TRUST_FACTOR ** MAX_REPROBES times the first


@dataclass
class Calibrated:
    """A method with its block computer, measured cost model and plan."""

    spec: JacobianSpec
    computer: BlockComputer
    cost: CostModel
    plan: Plan
    probe: Block
    probe_result: np.ndarray

    @property
    def first_block_result(self) -> np.ndarray | None:
        """The probe's result when the probe is the plan's first block (it is stored, not redone)."""
        return self.probe_result if self.plan.blocks[0] == self.probe else None


@dataclass
class Meters:
    """What a calibration needs besides the model: the inputs, the budget and the memory readers."""

    inputs: Inputs
    budget_bytes: int
    tensors: MemoryReader
    process: Any  # jacengine.budget.ProcessMemory, or None on a GPU


def calibrated(model: keras.Model, spec: JacobianSpec, meters: Meters, strict: bool = False) -> Calibrated:
    """Measure probe blocks of ``spec.method`` and plan with the result: :func:`first_probe`,
    then :func:`refine`."""
    return refine(first_probe(model, spec, meters, strict), meters)


def first_probe(model: keras.Model, spec: JacobianSpec, meters: Meters, strict: bool = False) -> Calibrated:
    """Measure the first block of a plan sized by a pessimistic prior (twice: the second call
    gives the time per work without the trace), and plan within the trust region around it."""
    computer = BlockComputer(model, spec, strict=strict)
    probe = choose_plan(spec, prior_cost(model, spec), meters.budget_bytes, fallback_to_smallest=True).blocks[0]
    cost, result = calibrate(computer, meters.inputs, probe, meters.tensors, meters.process)
    plan = choose_plan(spec, cost, meters.budget_bytes, max_work=TRUST_FACTOR * CostModel.work(spec, probe))
    return Calibrated(spec, computer, cost, plan, probe, result)


def refine(start: Calibrated, meters: Meters) -> Calibrated:
    """Measure the plan's first block while its shape differs from the last probe's (a trace's
    memory depends on the shape, and the plan's first block is the one whose peak matters),
    keeping the most pessimistic fixed term seen.

    Memory is not quite linear in the work over large ranges (allocator pools, oneDNN scratch
    buffers), so a plan never trusts the cost model more than :data:`TRUST_FACTOR` times beyond
    the largest block measured: a large budget is reached by measuring blocks that grow by that
    factor (at most a third more compute than the last block alone), never by one long
    extrapolation. Measured here: a block 60 times the probe's work overran an 8 GiB budget by 10%.
    """
    spec, computer, cost, probe, result = start.spec, start.computer, start.cost, start.probe, start.probe_result
    measured_work = CostModel.work(spec, probe)
    plan = choose_plan(spec, cost, meters.budget_bytes, max_work=TRUST_FACTOR * measured_work)
    for _ in range(MAX_REPROBES):
        if plan.blocks[0].shape_key == probe.shape_key:
            break
        computer.release()  # the probe's compiled graph will not be used again: free it
        probe = plan.blocks[0]
        measured, result = calibrate(computer, meters.inputs, probe, meters.tensors, meters.process, timed=cost)
        # the second trace's retention excludes the first trace's one-time runtime set-up
        cost = replace(measured, fixed_bytes=max(cost.fixed_bytes, measured.fixed_bytes))
        measured_work = max(measured_work, CostModel.work(spec, probe))
        plan = choose_plan(spec, cost, meters.budget_bytes, max_work=TRUST_FACTOR * measured_work)
    computer.strict = False  # from here on a fallback on some other block shape only warns
    return Calibrated(spec, computer, cost, plan, probe, result)


def choose_method(model: keras.Model, spec: JacobianSpec, meters: Meters) -> tuple[Calibrated, str]:
    """The fastest method that works for ``model``, calibrated; and a one-line reason."""
    working: list[tuple[Calibrated, int]] = []  # with the resident memory when it finished
    dropped: list[str] = []
    budget_refusals: list[BudgetError] = []
    for method in CANDIDATES:
        try:
            candidate = first_probe(model, replace(spec, method=method), meters, strict=True)
        except MethodUnsupported as why:
            dropped.append(f"{method}: {why.reason}")
            log.warning("method auto: %s does not work for this model (%s); trying the next method", method, why.reason)
            continue
        except BudgetError as refusal:
            budget_refusals.append(refusal)
            dropped.append(f"{method}: does not fit the budget")
            continue
        working.append((candidate, _resident(meters)))
    if not working:
        if budget_refusals:
            raise budget_refusals[0]  # it names the minimum budget
        raise MethodUnsupported("auto", "no method works for this model: " + "; ".join(dropped))

    def predicted_seconds(entry: tuple[Calibrated, int]) -> float:
        return entry[0].cost.plan_seconds(entry[0].spec, entry[0].plan)

    chosen, resident_then = min(working, key=predicted_seconds)
    for other, _ in working:
        if other is not chosen:
            other.computer.release()
    times = ", ".join(f"{c.spec.method} {predicted_seconds((c, 0)):.1f} s" for c, _ in working)
    chosen = refine(_charge_leftovers(chosen, resident_then, meters), meters)
    return chosen, f"method {chosen.spec.method} (auto: predicted {'; '.join([times, *dropped])})"


def _resident(meters: Meters) -> int:
    return meters.process.current_above_baseline() if meters.process is not None else 0


def _charge_leftovers(chosen: Calibrated, resident_then: int, meters: Meters) -> Calibrated:
    """Probing a later candidate left traces resident that the chosen method's measurement did
    not see: add them to its fixed term (:func:`refine` plans with it)."""
    leftover = _resident(meters) - resident_then
    if leftover <= 0:
        return chosen
    return dataclasses.replace(chosen, cost=replace(chosen.cost, fixed_bytes=chosen.cost.fixed_bytes + leftover))
