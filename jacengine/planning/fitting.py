"""Fit a :class:`~jacengine.planning.costmodel.CostModel` to what probe blocks showed.

Pure arithmetic on :class:`Reading` (one call of one block, as a backend's prober reads it):
no framework, no clock, no memory reader. Two fits, one per kind of probe:

- :func:`fit_first`: a method's first probe, a cheap sliver called twice (the second call gives
  its steady time, the first call's excess the trace: TensorFlow also optimises a graph on its
  first run), and a sliver of twice its size once (the time per call apart from the time per
  work). Its peak is nearly all trace and runtime, so with an assumed per-work term (the
  pessimistic prior) the whole peak is the fixed term until larger probes measure the slope.
- :func:`fit_next`: a later, larger probe, called once. Its time is all work once a trace is
  taken off. Its memory is the line through its peak and an ``earlier`` one of at most half its
  work: a line through the origin would charge the fixed memory (runtime, graph, allocator
  slack) to the work and size large blocks too small.

Both anchor the fixed term to the observed peak (fixed = peak - per-work bytes x work), so it
contains what the run already holds, and both cap the per-work term by the line through the
origin and the probe, which bounds the slope from above. Peaks closer than the noise of
resident memory give no line, but bound its slope by the noise over the difference in work:
often far below the prior, which would size small-budget blocks too small to run efficiently;
calibration's trust region then lets the next probe grow, where the bound tightens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from jacengine.planning.costmodel import CostModel

HEADROOM = 1.15  # margin on measured terms: allocation patterns vary a little between shapes
MEASURABLE_BYTES = 16 * 2**20  # peaks closer than this give no line (resident memory moves by MiBs between calls)
NOISE_BYTES = 4 * 2**20  # how far one resident peak may be off: bounds a slope that gives no line


@dataclass(frozen=True)
class Reading:
    """What one call of one probe block showed."""

    work: int  # its time work (the method's formula)
    memory_work: int  # the work its memory grows with
    seconds: float  # the call's wall time, any trace included
    trace_seconds: float | None  # the trace the call needed; None when it ran on an existing trace
    peak_bytes: int  # the budgeted peak above the baseline, less the result copies plans add on their own
    tensor_bytes: int  # the peak of live tensors, where the backend measures them (else 0)
    retained_bytes: int  # resident memory the call left behind (its graph, what a trace keeps)
    result_bytes: int  # the size of the block's result


@dataclass(frozen=True)
class Timings:
    """The first probe's extra calls: a second call of the sliver, and a larger sliver's
    (work, seconds) where there is one."""

    steady_seconds: float
    larger: tuple[int, float] | None = None


class Traits(Protocol):
    """What a prober knows of itself besides its readings: the least fixed memory a block can
    have (the runtime on CPU; 0 where the budget is a device's peak), the allocator's pool
    factor, and whether one compiled function serves every block shape (as of its last call)."""

    @property
    def fixed_floor(self) -> float: ...

    @property
    def pool_factor(self) -> float: ...

    @property
    def one_trace(self) -> bool: ...


def fit_first(reading: Reading, timings: Timings, known: Traits, assumed_bytes_per_work: float | None) -> CostModel:
    """The cost model of a method's first probe (see the module docstring)."""
    steady = timings.steady_seconds
    seconds_per_work, seconds_per_block = steady / reading.work, 0.0
    if timings.larger is not None:
        larger_work, larger_seconds = timings.larger
        if larger_work > reading.work and larger_seconds > steady:
            seconds_per_work = (larger_seconds - steady) / (larger_work - reading.work)
            seconds_per_block = max(0.0, steady - seconds_per_work * reading.work)
    if assumed_bytes_per_work is not None:
        bytes_per_work = min(assumed_bytes_per_work, _through_origin(reading))
        fixed_bytes = max(known.fixed_floor, reading.peak_bytes * HEADROOM)
    else:
        bytes_per_work, fixed_bytes = _charged_to_the_work(reading, known)
    return _cost(reading, known, fixed_bytes, bytes_per_work, trace_seconds=max(0.0, reading.seconds - steady),
                 seconds_per_work=seconds_per_work, seconds_per_block=seconds_per_block)


def fit_next(reading: Reading, known: Traits, timed: CostModel, earlier: Reading | None = None) -> CostModel:
    """The cost model of a later probe, given the model ``timed`` fitted before it and the
    largest probe measured before it since the trace (``earlier``; see the module docstring).
    A probe of less than twice ``earlier``'s work keeps ``timed``'s memory terms, its fixed
    term raised to cover this peak."""
    trace = reading.trace_seconds
    computing = reading.seconds - (trace or 0.0) - timed.seconds_per_block
    seconds_per_work = computing / reading.work if computing > 0 else timed.seconds_per_work
    work = reading.memory_work
    if earlier is not None and work >= 2 * earlier.memory_work:
        rise = reading.peak_bytes - earlier.peak_bytes
        if rise >= MEASURABLE_BYTES:  # a line through both peaks
            slope = rise / (work - earlier.memory_work)
        else:  # within the noise of each other: not measurable, but bounded by the noise
            slope = min(timed.bytes_per_work, (max(0, rise) + NOISE_BYTES) / (work - earlier.memory_work))
        slope = max(slope, 2 * reading.result_bytes / work)
        bytes_per_work, fixed_bytes = slope * HEADROOM, max(known.fixed_floor, reading.peak_bytes - slope * work)
    else:
        bytes_per_work = min(timed.bytes_per_work, _through_origin(reading))
        fixed_bytes = max(timed.fixed_bytes, reading.peak_bytes * HEADROOM - bytes_per_work * work)
    return _cost(reading, known, fixed_bytes, bytes_per_work, trace_seconds=timed.trace_seconds if trace is None else trace,
                 seconds_per_work=seconds_per_work, seconds_per_block=timed.seconds_per_block)


def _through_origin(reading: Reading) -> float:
    """The slope of the line through the origin and the probe: an upper bound on the per-work term."""
    return max(reading.peak_bytes * HEADROOM, 2 * reading.result_bytes) / reading.memory_work


def _charged_to_the_work(reading: Reading, known: Traits) -> tuple[float, float]:
    """Per-work and fixed terms with the whole measured peak charged to the work (conservative):
    the tensors' peak where measured, else the observed one; the result is a floor in any case."""
    measured = reading.tensor_bytes if reading.tensor_bytes > 0 else reading.peak_bytes
    bytes_per_work = max(measured, 2 * reading.result_bytes) / reading.memory_work * HEADROOM
    return bytes_per_work, max(known.fixed_floor, reading.peak_bytes * HEADROOM - bytes_per_work * reading.memory_work)


def _cost(reading: Reading, known: Traits, fixed_bytes: float, bytes_per_work: float, *, trace_seconds: float,
          seconds_per_work: float, seconds_per_block: float) -> CostModel:
    return CostModel(
        fixed_bytes=fixed_bytes,
        bytes_per_work=bytes_per_work,
        trace_seconds=trace_seconds,
        seconds_per_work=seconds_per_work,
        retained_bytes_per_trace=reading.retained_bytes * HEADROOM,
        one_trace=known.one_trace,
        seconds_per_block=seconds_per_block,
        pool_factor=known.pool_factor,
        # what the allocator pools is tensors: their peak per work, through the origin (conservative)
        pooled_bytes_per_work=reading.tensor_bytes / reading.memory_work * HEADROOM if reading.tensor_bytes > 0 else None,
    )
