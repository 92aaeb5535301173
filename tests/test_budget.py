"""Budget parsing, the memory readers, and calibration with injected readers (the GPU path)."""

from __future__ import annotations

import numpy as np
import psutil
import pytest

from jacengine.errors import BudgetError
from jacengine.memory import ProcessMemory
from jacengine.planning.budget import parse_budget


@pytest.mark.parametrize(("text", "expected"), [("512MiB", 512 * 2**20), ("2GiB", 2 * 2**30), ("1.5GB", 1.5e9), (1024, 1024)])
def test_parse_budget(text, expected) -> None:
    assert parse_budget(text) == expected


@pytest.mark.parametrize("bad", ["lots", "-1GiB", 0, True, 1.5])
def test_bad_budgets_are_refused(bad) -> None:
    with pytest.raises(BudgetError):
        parse_budget(bad)


def test_process_memory_sees_a_freed_allocation_in_its_peak() -> None:
    """The peak above the baseline covers 64 MiB touched and freed again (psutil's resident
    size as an independent reference for the baseline; 16 MiB slack for the interpreter)."""
    memory = ProcessMemory()
    memory.set_baseline()
    assert abs(memory.baseline - psutil.Process().memory_info().rss) < 16 * 2**20
    block = np.ones(64 * 2**20 // 8)
    del block
    assert memory.peak_above_baseline() >= 60 * 2**20
    assert memory.current_above_baseline() < 16 * 2**20


class FakeDeviceMemory:
    """Stands in for a GPU's tensor statistics: a fixed peak per block."""

    def __init__(self, peak: int) -> None:
        self.value, self.resets = peak, 0

    def reset(self) -> None:
        self.resets += 1

    def peak(self) -> int:
        return self.value


def test_gpu_path_calibrates_on_the_device_peak_and_plans_within_budget() -> None:
    pytest.importorskip("keras")
    from jacengine.options import RunOptions
    from jacengine.planning.costmodel import choose_plan, predicted_peak
    from jacengine.planning.fitting import Timings, fit_first
    from jacengine.preparation import prepare
    from jacengine.storage.inputs import Inputs
    from jacengine.tf.probes import TFProber
    from jacengine.tf.zoo import seed_model

    x = np.random.default_rng(0).normal(size=(8, 40, 1)).astype("float32")
    prepared = prepare(seed_model(units=4), x, RunOptions(), calibrate=False)
    probe = prepared.plan.blocks[0]
    device = FakeDeviceMemory(peak=50 * 2**20)
    prober = TFProber(prepared.computation.computer, Inputs(x), device, process=None)
    reading, result = prober.run(probe)
    assert reading.peak_bytes == 50 * 2**20
    assert device.resets == 1
    cost = fit_first(reading, Timings(prober.time(probe)), prober, assumed_bytes_per_work=None)
    assert cost.fixed_bytes == 0  # on a GPU the budgeted peak is the device's: no RSS term
    assert cost.bytes_per_work == pytest.approx(50 * 2**20 * 1.15 / cost.work(prepared.spec, probe))
    assert result.shape[0] == probe.n_batch
    budget = 80 * 2**20
    plan = choose_plan(prepared.spec, cost, budget)
    assert predicted_peak(prepared.spec, plan, cost) <= budget


def test_configure_gpus_is_a_no_op_without_gpus() -> None:
    tf = pytest.importorskip("tensorflow")
    from jacengine.tf.memory import compute_device, configure_gpus

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has a GPU")
    assert configure_gpus(256 * 2**20) == [] and compute_device() == "CPU:0"


@pytest.mark.slow
def test_loop_calibration_at_a_small_budget_never_probes_beyond_it(monkeypatch) -> None:
    """An LSTM with eight output features, reverse-loop, 128 MiB: every probe block's measured
    peak stays within the budget, and so does the plan. When the loop's memory counted only the
    rows in flight, calibration probed one sample with hundreds of rows (thousands of VJPs) and
    measured peaks of GiBs before refusing the budget."""
    pytest.importorskip("keras")
    import jacengine
    from jacengine.tf.probes import TFProber
    from jacengine.tf.zoo import zoo_model

    peaks: list[int] = []
    run = TFProber.run

    def recording(self, block):
        reading, result = run(self, block)
        peaks.append(reading.peak_bytes)
        return reading, result

    monkeypatch.setattr(TFProber, "run", recording)
    x = np.random.default_rng(0).normal(size=(4, 400, 8)).astype("float32")
    budget = 128 * 2**20
    summary = jacengine.plan(zoo_model("lstm", 32, 8, 8), x, budget=budget, method="reverse-loop", progress=False)
    assert peaks and max(peaks) <= budget, [f"{p / 2**20:.0f} MiB" for p in peaks]
    assert summary["predicted_peak_bytes"] <= budget
