"""Calibrate the cost model by measuring a probe block on the actual model.

The probe is the plan's first block, so its trace is reused by the run and its result can be
stored rather than thrown away. It runs twice: the first call includes tracing (the fixed cost),
the second is the steady state (the per-work cost).
"""

from __future__ import annotations

import time

import keras
import numpy as np

from jacengine.budget import ProcessMemory
from jacengine.costmodel import CostModel
from jacengine.inputs import Inputs
from jacengine.plan import Block
from jacengine.spec import JacobianSpec
from jacengine.tf.blocks import BlockComputer
from jacengine.tf.model import iter_layers

_MIN_FIXED_BYTES = 64 * 2**20  # TensorFlow's runtime and tracing never cost less than this
_RECURRENT_GATES = {"LSTM": 4, "GRU": 3, "SimpleRNN": 1}


def prior_cost(model: keras.Model, spec: JacobianSpec) -> CostModel:
    """A deliberately pessimistic cost model from the model's layer widths, before measuring."""
    itemsize = 8 if spec.compute_dtype == "float64" else 4
    width = 0
    for layer in iter_layers(model):
        units = getattr(layer, "units", None) or getattr(layer, "filters", None)
        if isinstance(units, int):
            width += units * (1 + _RECURRENT_GATES.get(type(layer).__name__, 0))
    return CostModel(
        fixed_bytes=4 * _MIN_FIXED_BYTES,
        bytes_per_work=4.0 * itemsize * max(width, spec.input_features),
        trace_seconds=3.0,
        seconds_per_work=2e-8 * max(width, 1),
    )


def calibrate(
    computer: BlockComputer, inputs: Inputs, probe: Block, memory: ProcessMemory | None = None
) -> tuple[CostModel, np.ndarray]:
    """Measure ``probe`` twice; return the fitted cost model and the probe's result."""
    memory = memory or ProcessMemory()
    spec = computer.spec
    x = inputs.read(probe.batch_start, probe.batch_stop, probe.forward_steps)
    work = probe.n_batch * probe.n_rows * len(spec.f_out) * probe.watch_steps

    memory.reset()
    started = time.perf_counter()
    result = computer.compute(probe, x)
    first_seconds = time.perf_counter() - started
    first_peak = memory.peak_above_baseline()

    memory.reset()
    started = time.perf_counter()
    computer.compute(probe, x)
    steady_seconds = time.perf_counter() - started
    steady_peak = memory.peak_above_baseline()

    bytes_per_work = max(steady_peak, result.nbytes) / work
    fixed = max(_MIN_FIXED_BYTES, first_peak - steady_peak)
    cost = CostModel(
        fixed_bytes=float(fixed),
        bytes_per_work=float(bytes_per_work),
        trace_seconds=max(0.0, first_seconds - steady_seconds),
        seconds_per_work=steady_seconds / work,
    )
    return cost, result
