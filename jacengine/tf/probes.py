"""Measure probe blocks on the actual model and fit the cost model to them.

The probe is normally the plan's first block, so its trace is reused by the run and its result
is stored rather than thrown away. Two readers measure it:

- TensorFlow's tensor statistics (:class:`TensorMemory`) give the exact peak of live tensors,
  which grows linearly with the work (samples x rows x watched steps): the per-work term is that
  peak divided by the probe's work (the fixed tensors are charged to the work too: conservative).
- On CPU, the process's peak RSS above its baseline (:class:`ProcessMemory`) during the first call
  also contains tracing, graph construction and allocator slack: the difference is the fixed term.
  Where tensor statistics exist they also give the share of the work memory that a pooling
  allocator keeps (``pooled_bytes_per_work``): only that share is planned at the pool factor.
  On a GPU the budget is the device peak itself, so there is no RSS term.

A first probe (a cheap sliver) runs twice: the second call gives its steady time, and the first
call's excess the trace time (TensorFlow also optimises a graph on its first run); a sliver of
twice its size (``rate_probe``) then separates the time per work from the time per call. Later,
larger probes run once: the block computer times a trace apart from the call, and a probe served
by an existing trace is all work. The resident memory that
stays after the probe (its graph, and what TensorFlow keeps per traced function) is the
retained-per-trace term; the probe's is the first trace of the process and includes one-time
runtime set-up, so a later probe (see ``jacengine.tf.method_choice.refine``) replaces it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from jacengine.memory import ProcessMemory, release_free_heap
from jacengine.planning.blocks import Block
from jacengine.planning.costmodel import CostModel, block_result_bytes
from jacengine.planning.spec import JacobianSpec
from jacengine.storage.inputs import Inputs
from jacengine.tf.adapters import TFModel
from jacengine.tf.computers import Computer
from jacengine.tf.memory import allocator_pool_factor

_MIN_FIXED_BYTES = 48 * 2**20  # TensorFlow's tracing and runtime never cost less than this on CPU
_MEASURABLE_BYTES = 16 * 2**20  # peaks closer than this give no line (RSS moves by MiBs between calls)
_NOISE_BYTES = 4 * 2**20  # how far one resident peak may be off: bounds a slope that gives no line
HEADROOM = 1.15  # margin on the measured terms: allocation patterns vary a little between shapes
_RECURRENT_GATES = {"LSTM": 4, "GRU": 3, "SimpleRNN": 1}


class MemoryReader(Protocol):
    def reset(self) -> None: ...
    def peak(self) -> int: ...


def prior_cost(model: TFModel, spec: JacobianSpec) -> CostModel:
    """A pessimistic cost model from the model's layer widths, used only to size the probe."""
    itemsize = 8 if spec.compute_dtype == "float64" else 4
    width = 0
    for layer in model.layers():
        units = getattr(layer, "units", None) or getattr(layer, "filters", None)
        if isinstance(units, int):
            width += units * (1 + _RECURRENT_GATES.get(type(layer).__name__, 0))
    return CostModel(
        fixed_bytes=128 * 2**20,
        bytes_per_work=2.0 * itemsize * max(width, spec.input_features),
        trace_seconds=3.0,
        seconds_per_work=2e-8 * max(width, 1),
        pool_factor=allocator_pool_factor(),
    )


@dataclass(frozen=True)
class Measurement:
    """A probe's memory work and the peak the budget bounds (RSS above baseline on CPU, device
    peak on a GPU)."""

    work: int
    peak_bytes: int


def measure_probe(
    computer: Computer,
    inputs: Inputs,
    probe: Block,
    tensors: MemoryReader,
    process: ProcessMemory | None,
    timed: CostModel | None = None,
    earlier: Measurement | None = None,
    rate_probe: Block | None = None,
    assumed_bytes_per_work: float | None = None,
) -> tuple[CostModel, np.ndarray, Measurement]:
    """Measure ``probe``; return the fitted cost model, the probe's result and its measurement
    (its peak less the copies of its result the method holds beside its work: plans add those
    on their own, see :func:`~jacengine.planning.costmodel.result_bytes`).

    The fixed term is anchored to the observed peak: fixed = peak above baseline - per-work
    bytes x work, so it contains what the run already holds, the trace and allocator slack.
    ``process`` is None on a GPU, where the budgeted peak is the device's (read by ``tensors``).
    With ``timed`` (the cost model of an earlier probe) the probe runs once, and one that needed
    no trace keeps the earlier trace time (a larger block measures the per-work time with less
    overhead).
    With ``earlier`` (a probe of at most half this one's work) the memory terms are the line
    through both peaks instead, anchored at this probe, with the headroom on its slope: a line
    through the origin charges the fixed memory (runtime, graph, allocator slack) to the work
    and sizes large blocks too small. Peaks within the noise of each other give no line, but
    bound its slope by the noise over the difference in work: often far below the pessimistic
    prior, which would size small-budget blocks too small to run efficiently; the trust region
    then lets the next probe grow, where the bound tightens. A probe of less than twice
    ``earlier``'s work keeps the ``timed`` memory terms, its fixed term raised to cover this peak. With
    ``assumed_bytes_per_work`` (a sliver, whose peak is nearly all trace and runtime) the whole
    peak is the fixed term and the per-work term is that assumption (the pessimistic prior) until
    larger probes measure it. Either per-work term is capped by the line through the origin and
    this probe, which bounds the slope from above.
    """
    spec = computer.spec
    x = inputs.read(probe.batch_start, probe.batch_stop, probe.forward_steps)
    work, memory_work = CostModel.work(spec, probe), CostModel.work(spec, probe, memory=True)

    tensors.reset()
    if process is not None:
        process.reset_peak()
        resident_before = process.current_above_baseline()
    traces_before = computer.trace_count
    started = time.perf_counter()
    result = computer.compute(probe, x)
    first_seconds = time.perf_counter() - started
    traced = computer.trace_count > traces_before
    tensor_peak = tensors.peak()
    observed_peak = process.peak_above_baseline() if process is not None else tensor_peak
    # the copies of the result a method holds beside its work are planned on their own (see
    # jacengine.planning.costmodel): the line is fit to the rest
    observed_peak = max(0, observed_peak - int(block_result_bytes(spec, probe)))

    seconds_per_block = timed.seconds_per_block if timed is not None else 0.0
    if timed is None:  # a first probe is a sliver: more calls cost little and give the steady times
        steady_seconds = _timed_call(computer, probe, x)
        trace_seconds, seconds_per_work = max(0.0, first_seconds - steady_seconds), steady_seconds / work
        if rate_probe is not None:  # a second point: the time per call apart from the time per work
            larger_work = CostModel.work(spec, rate_probe)
            larger_x = inputs.read(rate_probe.batch_start, rate_probe.batch_stop, rate_probe.forward_steps)
            larger_seconds = _timed_call(computer, rate_probe, larger_x)
            if larger_work > work and larger_seconds > steady_seconds:
                seconds_per_work = (larger_seconds - steady_seconds) / (larger_work - work)
                seconds_per_block = max(0.0, steady_seconds - seconds_per_work * work)
    else:
        trace_seconds = computer.last_trace_seconds if traced else timed.trace_seconds
        computing = first_seconds - (computer.last_trace_seconds if traced else 0.0) - seconds_per_block
        seconds_per_work = computing / work if computing > 0 else timed.seconds_per_work
    retained = 0
    if process is not None:
        # heap the block freed is reusable by the next block, not retained: return it to the OS first
        release_free_heap()
        retained = max(0, process.current_above_baseline() - resident_before)

    # without tensor statistics (or below their resolution) charge the whole observed peak to
    # the work, which is conservative; the result itself is a floor in any case
    measured = tensor_peak if tensor_peak > 0 else observed_peak
    bytes_per_work = max(measured, 2 * result.nbytes) / memory_work * HEADROOM
    floor = _MIN_FIXED_BYTES if process is not None else 0
    fixed_bytes = max(floor, observed_peak * HEADROOM - bytes_per_work * memory_work)
    # the line through the origin bounds the slope from above (a fixed term is never negative)
    through_origin = max(observed_peak * HEADROOM, 2 * result.nbytes) / memory_work
    if assumed_bytes_per_work is not None:
        bytes_per_work = min(assumed_bytes_per_work, through_origin)
        fixed_bytes = max(floor, observed_peak * HEADROOM)
    elif earlier is not None and memory_work >= 2 * earlier.work:
        rise = observed_peak - earlier.peak_bytes
        if rise >= _MEASURABLE_BYTES:  # a line through both peaks
            slope = rise / (memory_work - earlier.work)
        else:  # within the noise of each other: not measurable, but bounded by the noise
            bound = (max(0, rise) + _NOISE_BYTES) / (memory_work - earlier.work)
            slope = min(timed.bytes_per_work, bound) if timed is not None else bound
        slope = max(slope, 2 * result.nbytes / memory_work)
        bytes_per_work, fixed_bytes = slope * HEADROOM, max(floor, observed_peak - slope * memory_work)
    elif timed is not None:  # too close to the earlier probe for a line: keep its terms, raised to cover this peak
        bytes_per_work = min(timed.bytes_per_work, through_origin)
        fixed_bytes = max(timed.fixed_bytes, observed_peak * HEADROOM - bytes_per_work * memory_work)
    cost = CostModel(
        fixed_bytes=fixed_bytes,
        bytes_per_work=bytes_per_work,
        trace_seconds=trace_seconds,
        seconds_per_work=seconds_per_work,
        retained_bytes_per_trace=retained * HEADROOM,
        one_trace=computer.polymorphic,
        seconds_per_block=seconds_per_block,
        pool_factor=allocator_pool_factor(),
        # what the allocator pools is tensors: their peak per work, through the origin (conservative)
        pooled_bytes_per_work=tensor_peak / memory_work * HEADROOM if tensor_peak > 0 else None,
    )
    return cost, result, Measurement(memory_work, observed_peak)


def _timed_call(computer: Computer, block: Block, x: np.ndarray) -> float:
    started = time.perf_counter()
    computer.compute(block, x)
    return time.perf_counter() - started
