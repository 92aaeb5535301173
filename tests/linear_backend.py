"""A complete second backend in plain numpy, for tests: a linear recurrence with an analytic J.

    h_t = A h_(t-1) + B x_t,  h_(-1) = 0,    y_t = C h_t

so dy_t/dx_s = C A^(t-s) B for s <= t and 0 otherwise, the same for every sample. It exercises
the engine (planning, store, executors, resume, verify, directional sums) without TensorFlow,
and shows what a backend implements: :class:`jacengine.backends.base.Backend`.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jacengine.backends.base import Description
from jacengine.errors import ModelError
from jacengine.memory import ProcessMemory
from jacengine.options import RunOptions
from jacengine.planning.blocks import Block
from jacengine.planning.costmodel import CostModel, block_result_bytes
from jacengine.planning.fitting import Reading
from jacengine.planning.methods import GENERIC_METHODS
from jacengine.planning.selection import normalise_selection
from jacengine.planning.spec import JacobianSpec
from jacengine.storage.inputs import Inputs

SUFFIX = ".linear.npz"


@dataclass(frozen=True)
class LinearRecurrence:
    a: np.ndarray  # (H, H)
    b: np.ndarray  # (H, F_in)
    c: np.ndarray  # (F_out, H)

    @classmethod
    def random(cls, hidden: int = 3, f_in: int = 2, f_out: int = 2, seed: int = 0) -> LinearRecurrence:
        rng = np.random.default_rng(seed)
        a = rng.normal(size=(hidden, hidden))
        a *= 0.9 / max(abs(np.linalg.eigvals(a)))  # stable: influence decays with the lag
        return cls(a, rng.normal(size=(hidden, f_in)), rng.normal(size=(f_out, hidden)))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """(B, T, F_in) -> (B, T, F_out), step by step: the forward pass itself."""
        h = np.zeros((x.shape[0], self.a.shape[0]))
        ys = []
        for t in range(x.shape[1]):
            h = h @ self.a.T + x[:, t] @ self.b.T
            ys.append(h @ self.c.T)
        return np.stack(ys, axis=1)

    def lag_matrix(self, lag: int) -> np.ndarray:
        """dy_t / dx_(t-lag): (F_out, F_in)."""
        return self.c @ np.linalg.matrix_power(self.a, lag) @ self.b


class LinearBlocks:
    """J of a block from the closed form (the "method" of this backend)."""

    def __init__(self, model: LinearRecurrence, spec: JacobianSpec) -> None:
        self.model, self.spec = model, spec

    def compute(self, block: Block, x: np.ndarray) -> np.ndarray:
        time.sleep(float(os.environ.get("LINEAR_BLOCK_SECONDS", "0")))  # tests of concurrent runs: blocks that take time
        spec = self.spec
        f_out, f_in = list(spec.f_out), list(spec.f_in)
        values = np.zeros((block.n_batch, block.n_rows, len(f_out), block.in_stop, len(f_in)), spec.block_dtype)
        for row in range(block.row_start, block.row_stop):
            t = spec.t_out[row]
            for position in range(block.in_stop):
                lag = position if spec.layout == "lag" else t - position
                if 0 <= lag <= t:
                    values[:, row - block.row_start, :, position, :] = self.model.lag_matrix(lag)[np.ix_(f_out, f_in)]
        return values


class LinearProducts:
    forward_mode_works = True

    def __init__(self, model: LinearRecurrence) -> None:
        self.model = model

    def _jacobian(self, steps: int) -> np.ndarray:
        """(T_out, F_out, T_in, F_in) for one sample."""
        f_out, f_in = self.model.c.shape[0], self.model.b.shape[1]
        j = np.zeros((steps, f_out, steps, f_in))
        for t in range(steps):
            for s in range(t + 1):
                j[t, :, s, :] = self.model.lag_matrix(t - s)
        return j

    def jvp(self, x: np.ndarray, weights: np.ndarray) -> np.ndarray:
        summed = np.einsum("tosi,si->to", self._jacobian(x.shape[1]), weights)
        return np.broadcast_to(summed, (x.shape[0], *summed.shape)).astype(x.dtype)

    def vjp(self, x: np.ndarray, weights: np.ndarray) -> np.ndarray:
        summed = np.einsum("tosi,to->si", self._jacobian(x.shape[1]), weights)
        return np.broadcast_to(summed, (x.shape[0], *summed.shape)).astype(x.dtype)


# What the linear backend's blocks are charged: deliberately pessimistic (2 KiB per unit of
# work), so that budgets of a few MiB split a test's Jacobian into many blocks. Its probes read
# these figures, not a clock or resident memory, so that its plans are the same on every run.
CHARGED = CostModel(fixed_bytes=2**19, bytes_per_work=2048.0, trace_seconds=0.0, seconds_per_work=1e-7, one_trace=True)


class LinearProber:
    """Runs probe blocks of the closed form, reading the :data:`CHARGED` costs: calibration's
    algorithm (probe choice, fits, trust region) runs on it as on any backend's readings."""

    fixed_floor, pool_factor, one_trace, known_memory, summary = 0.0, 1.0, True, None, ""

    def __init__(self, computer: LinearBlocks, inputs: Inputs) -> None:
        self.computer, self.inputs = computer, inputs

    def run(self, block: Block) -> tuple[Reading, np.ndarray]:
        spec = self.computer.spec
        result = self.computer.compute(block, self.inputs.read(block.batch_start, block.batch_stop, block.forward_steps))
        work, memory_work = CostModel.work(spec, block), CostModel.work(spec, block, memory=True)
        peak = int(CHARGED.block_peak_bytes(spec, block) - block_result_bytes(spec, block))
        reading = Reading(work=work, memory_work=memory_work, seconds=self.time(block), trace_seconds=None,
                          peak_bytes=peak, tensor_bytes=0, retained_bytes=0, result_bytes=result.nbytes)
        return reading, result

    def time(self, block: Block) -> float:
        return CHARGED.block_seconds(self.computer.spec, block)

    def release(self) -> None:
        """Nothing is compiled."""

    def settle(self) -> None:
        """Nothing is strict."""


@dataclass
class ResidentMeter:
    """The budgeted peak: this process's resident memory above the baseline."""

    memory: ProcessMemory

    def peak(self) -> int | None:
        return self.memory.peak_above_baseline()


@dataclass
class LinearProbing:
    model: LinearRecurrence
    inputs: Inputs

    def cannot_use(self, method: str) -> str | None:
        return None if method in GENERIC_METHODS else "the linear backend has the generic methods only"

    def prober(self, spec: JacobianSpec, strict: bool) -> LinearProber:
        return LinearProber(LinearBlocks(self.model, spec), self.inputs)

    def prior(self, spec: JacobianSpec) -> CostModel:
        return CHARGED

    def resident_bytes(self) -> int:
        return 0


class LinearReferences:
    """Verification's references from the model's own step-by-step forward pass (float64 already)."""

    finite_differences_unavailable = None

    def __init__(self, model: LinearRecurrence) -> None:
        self.model = model

    def gradient_row(self, sample: np.ndarray, step: int | None, feature: int) -> np.ndarray:
        assert step is not None
        model = self.model
        row = np.zeros((sample.shape[1], model.b.shape[1]))
        for s in range(step + 1):
            row[s] = model.lag_matrix(step - s)[feature]
        return row

    def central_difference(self, sample: np.ndarray, step: int | None, f_out: int, t_in: int, f_in: int) -> float:
        model = self.model
        h = 1e-3  # exact up to rounding for a linear model
        plus, minus = sample.astype("float64"), sample.astype("float64")
        plus[0, t_in, f_in] += h
        minus[0, t_in, f_in] -= h
        return float((model(plus)[0, step, f_out] - model(minus)[0, step, f_out]) / (2 * h))


class LinearBackend:
    name = "linear"

    def recognises(self, model: Any) -> bool:
        return isinstance(model, LinearRecurrence) or str(model).endswith(SUFFIX)

    def worker_environment(self) -> dict[str, str]:
        return {"OMP_NUM_THREADS": "1"}

    def configure(self, options: RunOptions) -> None:
        if options.gpu_memory_limit is not None:
            raise ModelError("the linear backend runs on the CPU; drop gpu_memory_limit.")

    def load(self, model: Any, options: RunOptions) -> LinearRecurrence:
        if not isinstance(model, LinearRecurrence):
            with np.load(model) as arrays:
                model = LinearRecurrence(arrays["a"], arrays["b"], arrays["c"])
        return model

    def model_hash(self, model: LinearRecurrence, input_features: int) -> str:
        return hashlib.sha256(b"".join(np.ascontiguousarray(m).tobytes() for m in (model.a, model.b, model.c))).hexdigest()

    def save(self, model: LinearRecurrence, folder: Path) -> str:
        path = folder / f"model{SUFFIX}"
        np.savez(path, a=model.a, b=model.b, c=model.c)
        return str(path)

    def start_budget(self) -> ResidentMeter:
        memory = ProcessMemory()
        memory.set_baseline()
        return ResidentMeter(memory)

    def describe(self, model: LinearRecurrence, inputs: Inputs, options: RunOptions) -> Description:
        batch, steps, features = inputs.shape
        if features != model.b.shape[1]:
            raise ModelError(f"the model takes {model.b.shape[1]} input features, the inputs have {features}.")
        causal = options.causal is not False
        spec = JacobianSpec(
            batch=batch, input_steps=steps, input_features=features, output_steps=steps,
            output_features=model.c.shape[0], t_out=normalise_selection(options.t_out, steps, "t_out"),
            f_out=normalise_selection(options.f_out, model.c.shape[0], "f_out"),
            f_in=normalise_selection(options.f_in, features, "f_in"), causal=causal, truncatable=True,
            layout=options.layout, max_lag=options.max_lag, method="reverse" if options.method == "auto" else options.method,
            compute_dtype="float64", store_dtype=options.store_dtype)
        return Description(spec, "causal: a linear recurrence" if causal else "not causal (as requested)", model)

    def probing(self, description: Description, inputs: Inputs, meter: ResidentMeter) -> LinearProbing:
        return LinearProbing(description.block_model, inputs)

    def references(self, model: LinearRecurrence) -> LinearReferences:
        return LinearReferences(model)

    def directional_products(self, model: LinearRecurrence) -> LinearProducts:
        return LinearProducts(model)


BACKEND = LinearBackend()
