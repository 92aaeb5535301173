"""Calibration as planning, without a framework: synthetic probers whose readings follow known
cost curves, and the pure fits. The numpy backend's calibrated runs are in test_backends."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jacengine.errors import BudgetError
from jacengine.planning.blocks import Block
from jacengine.planning.calibration import calibrate_method
from jacengine.planning.costmodel import CostModel, block_result_bytes
from jacengine.planning.fitting import HEADROOM, NOISE_BYTES, Reading, fit_next
from jacengine.planning.spec import JacobianSpec

MiB = 2**20


def spec_of(batch: int, steps: int, method: str = "reverse") -> JacobianSpec:
    return JacobianSpec(batch=batch, input_steps=steps, input_features=1, output_steps=steps, output_features=1,
                        t_out=tuple(range(steps)), f_out=(0,), f_in=(0,), causal=True, truncatable=True,
                        layout="full", max_lag=None, method=method, compute_dtype="float32", store_dtype="float32")


@dataclass
class Curve:
    """A method whose every block's peak is ``fixed + slope x memory work`` (plus the result
    copies of its method), read with a relative error of at most ``noise`` that depends on
    the block (as resident memory varies between shapes), and whose time is linear in the work."""

    spec: JacobianSpec
    fixed: float
    slope: float
    noise: float
    seed: int
    fixed_floor: float = 0.0
    pool_factor: float = 1.0
    one_trace: bool = True
    known_memory: None = None
    summary: str = ""

    @property
    def computer(self) -> Curve:
        return self

    def true_peak(self, block: Block) -> float:
        return self.fixed + self.slope * CostModel.work(self.spec, block, memory=True)

    def run(self, block: Block) -> tuple[Reading, np.ndarray]:
        error = np.random.default_rng([self.seed, *block.shape_key]).uniform(-self.noise, self.noise)
        result = np.zeros(1)
        reading = Reading(work=CostModel.work(self.spec, block), memory_work=CostModel.work(self.spec, block, memory=True),
                          seconds=self.time(block) + 2.0, trace_seconds=2.0,
                          peak_bytes=int(self.true_peak(block) * (1 + error)), tensor_bytes=0, retained_bytes=0,
                          result_bytes=int(block_result_bytes(self.spec, block)))
        return reading, result

    def time(self, block: Block) -> float:
        return 1e-3 + 1e-7 * CostModel.work(self.spec, block)

    def compute(self, block: Block, x: np.ndarray) -> np.ndarray:
        raise AssertionError("calibration runs probes through run(), never the computer directly")

    def release(self) -> None: ...

    def settle(self) -> None: ...


PRIOR = CostModel(fixed_bytes=128 * MiB, bytes_per_work=4096.0, trace_seconds=3.0, seconds_per_work=1e-6)


@settings(max_examples=25, deadline=None)
@given(fixed=st.floats(8 * MiB, 256 * MiB), slope=st.floats(16.0, 4096.0), noise=st.floats(0.0, 0.1),
       budget_mib=st.integers(64, 4096), seed=st.integers(0, 2**16), steps=st.sampled_from([60, 200]))
def test_a_linear_curve_is_planned_within_the_budget_whatever_the_noise_under_the_guard(
        fixed, slope, noise, budget_mib, seed, steps) -> None:
    """Readings within 10% of a linear curve (the headroom on measured terms is 15%): every
    block of the calibrated plan truly peaks within the budget, or calibration refuses it."""
    spec = spec_of(32, steps)
    curve = Curve(spec, fixed, slope, noise, seed)
    budget = budget_mib * MiB
    try:
        chosen = calibrate_method(curve, spec, PRIOR, budget)
    except BudgetError:
        assert curve.true_peak(Block(0, 0, 1, 0, 1, steps, steps, steps, 1, 1)) > 0.9 * budget / (1 + noise) / HEADROOM
        return
    worst = max(curve.true_peak(block) for block in chosen.plan.blocks)
    assert worst <= budget, f"{worst / MiB:.1f} MiB planned in {budget_mib} MiB"


def test_peaks_within_the_noise_bound_the_slope_instead_of_keeping_the_prior() -> None:
    """Two probes whose peaks differ by less than a line needs: the per-work bytes become the
    noise over the difference in work (times the headroom), not the pessimistic prior; a
    measurable rise gives the line through both peaks."""
    def reading(work: int, peak: int) -> Reading:
        return Reading(work=work, memory_work=work, seconds=1.0, trace_seconds=None, peak_bytes=peak,
                       tensor_bytes=0, retained_bytes=0, result_bytes=0)

    traits = Curve(spec_of(2, 10), 0, 0, 0, 0)
    prior = CostModel(fixed_bytes=0.0, bytes_per_work=1e6, trace_seconds=0.0, seconds_per_work=1e-6)
    earlier = reading(10_000, 40 * MiB)
    for rise, expected in ((2 * MiB, (2 * MiB + NOISE_BYTES) / 30_000), (30 * MiB, 30 * MiB / 30_000)):
        cost = fit_next(reading(40_000, 40 * MiB + rise), traits, prior, earlier=earlier)
        assert cost.bytes_per_work == pytest.approx(expected * HEADROOM)
        assert cost.fixed_bytes == pytest.approx(40 * MiB + rise - expected * 40_000)


def test_a_close_later_probe_keeps_the_slope_and_raises_the_fixed_term_to_cover_its_peak() -> None:
    traits = Curve(spec_of(2, 10), 0, 0, 0, 0)
    timed = CostModel(fixed_bytes=10 * MiB, bytes_per_work=100.0, trace_seconds=1.0, seconds_per_work=1e-6)
    later = Reading(work=1000, memory_work=1000, seconds=0.5, trace_seconds=None, peak_bytes=50 * MiB,
                    tensor_bytes=0, retained_bytes=0, result_bytes=0)
    cost = fit_next(later, traits, timed)
    assert cost.bytes_per_work == 100.0
    assert cost.fixed_bytes == pytest.approx(50 * MiB * HEADROOM - 100.0 * 1000)
    assert cost.trace_seconds == 1.0 and cost.seconds_per_work == pytest.approx(0.5 / 1000)
