"""The recurrent method's block computer: a block of J by one backward sweep of the chain.

It has the generic :class:`~jacengine.tf.block_computer.BlockComputer`'s interface (the engine,
calibration and verification treat both alike) and nothing to trace. Before its first block it
checks its reading of the model (:func:`~jacengine.tf.recurrent.structure.read_chain`) against
the model's own outputs, and refuses with :class:`~jacengine.errors.MethodUnsupported` where
they differ, so ``method="auto"`` falls back to the generic methods instead of storing a wrong J.

The sweep's matmuls are small (a few dozen rows of D), where numpy's BLAS on one thread beats
TensorFlow's per-op dispatch; a block's samples are split over threads, one BLAS thread each
(BLAS's own threads fight on small matrices).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from threadpoolctl import threadpool_limits

from jacengine.errors import MethodUnsupported
from jacengine.memory import release_free_heap
from jacengine.planning.blocks import Block, window_start
from jacengine.planning.spec import JacobianSpec
from jacengine.tf.adapters import TFModel
from jacengine.tf.block_computer import check_finite, fit_t_in, lags_from_window
from jacengine.tf.introspect import PROBE_SAMPLES, PROBE_STEPS
from jacengine.tf.recurrent.chain import PUSH_BYTES, WINDOW_PAIRS, sweep
from jacengine.tf.recurrent.structure import METHOD, read_chain
from jacengine.timing import phase


def sweep_threads() -> int:
    """Threads for a block's samples: the cores this process may use, or ``OMP_NUM_THREADS``
    where set (jacengine's worker processes get one)."""
    setting = os.environ.get("OMP_NUM_THREADS", "")
    return int(setting) if setting.isdigit() and int(setting) > 0 else len(os.sched_getaffinity(0))


class RecurrentBlockComputer:
    """Turns a :class:`Block` and its input rows into the block's slice of J (numpy)."""

    polymorphic = True  # nothing is traced: every block shape costs the same set-up (none)
    trace_count = 0
    last_trace_seconds = 0.0

    def __init__(self, model: TFModel, spec: JacobianSpec, strict: bool = False) -> None:
        self.model, self.spec, self.strict = model, spec, strict
        self.chain = read_chain(model)
        self.dtype = np.dtype(spec.compute_dtype)
        self._checked = False
        self._f_out, self._f_in = np.asarray(spec.f_out), np.asarray(spec.f_in)
        self._pool: ThreadPoolExecutor | None = None  # the sweep's threads, kept from block to block

    def release(self) -> None:
        """Nothing compiled is held between blocks; the sweep threads stay (their heaps are reused)."""

    def compute(self, block: Block, x: np.ndarray) -> np.ndarray:
        """J for ``block`` given x = inputs[batch_start:batch_stop, :forward_steps], shaped
        (n_batch, n_rows, |f_out|, in_stop, |f_in|) in the store dtype (in_stop: the lag axis
        in the lag layout)."""
        release_free_heap()  # what the last block freed goes back to the OS before this one allocates
        x = np.asarray(x, dtype=self.dtype)
        if not self._checked:
            self._check_reading(x)
        steps = np.asarray(self.spec.t_out[block.row_start: block.row_stop])
        lag = self.spec.layout == "lag"
        start = window_start(self.spec, block) if lag else 0
        width = block.watch_steps if lag else max(block.in_stop, int(steps[-1]) + 1)
        values = np.zeros((len(x), len(steps), len(self._f_out), width, len(self._f_in)), dtype=self.dtype)
        with phase("block compute"):
            self._sweep(x, steps, values, start, self.spec.in_axis_length if lag else None)
        check_finite(self.spec, block, values)
        values = lags_from_window(values, steps, start, self.spec.in_axis_length) if lag else fit_t_in(values, block.in_stop)
        return values.astype(self.spec.block_dtype, copy=False)

    def bytes_per_work(self) -> int:
        """Bytes per unit of the method's memory work (a recorded state, or one adjoint row of a
        buffer: at most D + |f_in| entries each; see :mod:`jacengine.planning.methods`)."""
        return (self.chain.state_size + len(self._f_in)) * self.dtype.itemsize

    def fixed_bytes(self) -> int:
        """Bytes a block holds whatever its size: each thread's window of local Jacobians and
        the temporaries of a push (about a dozen arrays of at most ``PUSH_BYTES``)."""
        chain = self.chain
        window = WINDOW_PAIRS * (chain.state_size + chain.input_size + chain.output_size) * chain.state_size
        return sweep_threads() * (window * self.dtype.itemsize + 12 * PUSH_BYTES)

    def _sweep(self, x: np.ndarray, steps: np.ndarray, values: np.ndarray, start: int, max_lag: int | None) -> None:
        """The block's sweep on :func:`sweep_threads` threads: each takes a share of the samples,
        or where there are fewer samples than threads, a share of the rows of equal work (each
        thread then computes the local Jacobians of its own rows' prefix)."""
        threads = sweep_threads()
        if len(x) >= threads:
            bounds = np.linspace(0, len(x), threads + 1).round().astype(int)
            parts = [(slice(a, b), slice(None)) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
        else:
            work = np.cumsum(steps + 1 - start)
            cuts = np.searchsorted(work, work[-1] * np.arange(1, threads) / threads)
            bounds = np.unique(np.concatenate([[0], cuts, [len(steps)]]))
            parts = [(slice(None), slice(a, b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]

        def run(part: tuple[slice, slice]) -> None:
            samples, rows = part
            sweep(self.chain, x[samples], steps[rows], self._f_out, self._f_in, values[samples, rows], start, max_lag)

        with threadpool_limits(limits=1, user_api="blas"):
            if len(parts) == 1:
                run(parts[0])
                return
            if self._pool is None or self._pool._max_workers < len(parts):
                self._pool = ThreadPoolExecutor(len(parts), thread_name_prefix="jacengine-sweep")
            list(self._pool.map(run, parts))

    def _check_reading(self, x: np.ndarray) -> None:
        """Refuse when the chain's forward pass differs from the model's on a sliver of ``x``."""
        sliver = x[:PROBE_SAMPLES, :PROBE_STEPS] if self.spec.truncatable else x[:PROBE_SAMPLES]
        with phase("eager check"):
            expected = np.asarray(self.model(sliver, training=False))
            _, read = self.chain.forward(sliver)
        scale = max(float(np.max(np.abs(expected))) if expected.size else 0.0, 1.0)
        tolerance = (1e-10 if self.dtype == np.float64 else 1e-5) * scale
        if read.shape != expected.shape or not np.allclose(read, expected, rtol=0, atol=tolerance):
            difference = float(np.max(np.abs(read - expected))) if read.shape == expected.shape else float("inf")
            raise MethodUnsupported(METHOD, f"reading the model layer by layer gives outputs {difference:.3g} away from "
                                            "the model's own; some layer computes differently than its class suggests")
        self._checked = True
