"""A recurrent chain's Jacobian as products of per-step Jacobians, swept backward in numpy.

A model built from recurrent layers and per-step layers is one first-order recurrence over the
joint state z_s (the states of all its recurrent layers at step s):

    z_s = F(z_{s-1}, x_s),    y_s = G(z_s)

so J[t_out, t_in] = C_{t_out} A_{t_out} ... A_{t_in + 1} B_{t_in}, with A_s = dz_s/dz_{s-1},
B_s = dz_s/dx_s and C_s = dy_s/dz_s, per sample. The local Jacobians depend on (z_{s-1}, x_s)
only, so once a forward pass has recorded every z_s they are computed for many (sample, step)
pairs at once (:meth:`Chain.local_jacobians`). A block of output rows is then one backward
sweep (:func:`sweep`): an adjoint lambda (samples, rows x f_out, D) starts from the C rows as
the sweep reaches each row's step, and at each step one batched matmul lambda @ [A_s | B_s]
gives both J's column s and the next lambda. The work is the causal floor (2 D (D + F_in) flops
per sample, row and input step), in dense matmuls, with no tracing.

The local Jacobians are computed for a window of steps at a time as the sweep moves back, so
a block holds its result, the recorded states, the adjoint and one window, never every A_s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from jacengine.tf.recurrent.stages import Stage

# (sample, step) pairs whose local Jacobians a sweep holds at once: the window's memory is the
# same for any number of samples (16 steps of 32 samples, 256 of 2)
WINDOW_PAIRS = 512
LOCAL_PAIRS = 256  # (sample, step) pairs whose tangents are pushed through the step at once


@dataclass
class Chain:
    """The step of a recurrent chain: ``stages`` in order, from x_s (``input_size`` features)
    to y_s; the recurrent stages' states, concatenated in order, are the joint state."""

    stages: Sequence[Stage]
    input_size: int
    dtype: np.dtype

    def __post_init__(self) -> None:
        self.state_size = sum(stage.state_size for stage in self.stages)
        self.output_size = self.stages[-1].output_size
        self._last_recurrent = max(i for i, stage in enumerate(self.stages) if stage.recurrent)
        self._offsets = np.cumsum([0, *(stage.state_size for stage in self.stages)])[:-1]
        self._last_offset = int(self._offsets[self._last_recurrent])
        # the tangent seeds of one step: directions [z_{s-1} (D) | x_s (F_in)]
        directions = self.state_size + self.input_size
        seeds = np.eye(directions, dtype=self.dtype)
        self._state_seeds = [seeds[:, offset: offset + stage.state_size]
                             for offset, stage in zip(self._offsets, self.stages, strict=True)]
        self._input_seed = seeds[:, self.state_size:]

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run the chain over x (n, S, F_in) from zero states: the states z_{s-1} before each
        step (n, S + 1, D; entry 0 is the initial state) and the outputs y (n, S, F_out)."""
        n, steps, _ = x.shape
        states = np.zeros((n, steps + 1, self.state_size), dtype=self.dtype)
        outputs = np.empty((n, steps, self.output_size), dtype=self.dtype)
        for s in range(steps):
            u, previous = x[:, s], states[:, s]
            for offset, stage in zip(self._offsets, self.stages, strict=True):
                state = previous[:, offset: offset + stage.state_size] if stage.recurrent else None
                u, new_state = stage.step(u, state)
                if new_state is not None:
                    states[:, s + 1, offset: offset + stage.state_size] = new_state
            outputs[:, s] = u
        return states, outputs

    def local_jacobians(self, previous: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For N pairs of z_{s-1} (N, D) and x_s (N, F_in): [A_s | B_s] (N, D, D + F_in) and
        C_s (N, F_out, D)."""
        u, du = x, self._input_seed  # (P, F_in): the same for every pair
        state_tangents = []
        for index, (offset, stage, seed) in enumerate(zip(self._offsets, self.stages, self._state_seeds, strict=True)):
            state = previous[:, offset: offset + stage.state_size] if stage.recurrent else None
            u, _, du, dstate = stage.push(u, state, du, seed if stage.recurrent else None)
            if dstate is not None:
                state_tangents.append(np.broadcast_to(dstate, (len(x), *dstate.shape[-2:])))
            if index == self._last_recurrent:
                y_tangent = self._output_jacobian(index, u)
        step = np.concatenate(state_tangents, axis=-1)  # (N, P, D): the transpose of d z_s / d (z_{s-1}, x_s)
        return np.ascontiguousarray(step.transpose(0, 2, 1)), y_tangent

    def _output_jacobian(self, last: int, h: np.ndarray) -> np.ndarray:
        """C_s = d y_s / d z_s (N, F_out, D) from the last recurrent layer's output ``h``: y
        reads z_s only through it, by the per-step layers after it."""
        units = h.shape[1]
        u, du = h, np.eye(units, dtype=self.dtype)
        for stage in self.stages[last + 1:]:
            u, _, du, _ = stage.push(u, None, du, None)
        du = np.broadcast_to(du, (len(h), units, self.output_size))
        c = np.zeros((len(h), self.output_size, self.state_size), dtype=self.dtype)
        c[:, :, self._last_offset: self._last_offset + units] = du.transpose(0, 2, 1)
        return c

    def window_jacobians(self, states: np.ndarray, x: np.ndarray, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """[A_s | B_s] (n, W, D, D + F_in) and C_s (n, W, F_out, D) for steps [start, stop),
        pushed :data:`LOCAL_PAIRS` pairs at a time."""
        n, steps = x.shape[0], stop - start
        previous = states[:, start:stop].reshape(n * steps, self.state_size)
        inputs = x[:, start:stop].reshape(n * steps, self.input_size)
        step = np.empty((n * steps, self.state_size, self.state_size + self.input_size), dtype=self.dtype)
        output = np.empty((n * steps, self.output_size, self.state_size), dtype=self.dtype)
        for first in range(0, n * steps, LOCAL_PAIRS):
            pairs = slice(first, first + LOCAL_PAIRS)
            step[pairs], output[pairs] = self.local_jacobians(previous[pairs], inputs[pairs])
        return (step.reshape(n, steps, *step.shape[1:]), output.reshape(n, steps, *output.shape[1:]))


def sweep(chain: Chain, x: np.ndarray, row_steps: np.ndarray, f_out: np.ndarray, f_in: np.ndarray,
          out: np.ndarray, start: int = 0, max_lag: int | None = None) -> None:
    """Write J for the samples of ``x`` (n, >= last row + 1, F_in) into ``out``
    (n, R, |f_out|, W, |f_in|): out[:, r, :, s - start] = d y[row_steps[r], f_out] / d x[s, f_in]
    for input steps s in [start, start + W) up to each row's step (zero above it, as given).

    ``row_steps`` is ascending. With ``max_lag`` a row leaves the sweep once its lag exceeds
    it (the lag layout needs nothing further back).
    """
    n, rows = len(x), len(row_steps)
    d, n_out = chain.state_size, len(f_out)
    top = int(row_steps[-1]) + 1
    states, _ = chain.forward(x[:, :top])
    columns = np.concatenate([np.arange(d), d + np.asarray(f_in)])
    adjoint = np.zeros((n, rows * n_out, d), dtype=chain.dtype)  # lambda: d y[row, f_out] / d z_s
    low = high = rows  # rows [low, high) are in the sweep
    window = max(1, WINDOW_PAIRS // n)
    for stop in range(top, start, -window):
        first = max(start, stop - window)
        step_jacobians, output_jacobians = chain.window_jacobians(states, x, first, stop)
        step_jacobians = step_jacobians[..., columns]
        output_jacobians = output_jacobians[:, :, f_out]
        for s in range(stop - 1, first - 1, -1):
            while low > 0 and row_steps[low - 1] == s:  # rows join at their own step
                low -= 1
                adjoint[:, low * n_out: (low + 1) * n_out] = output_jacobians[:, s - first]
            while max_lag is not None and high > low and row_steps[high - 1] - s >= max_lag:
                high -= 1
            if low == high:
                continue
            active = slice(low * n_out, high * n_out)
            product = np.matmul(adjoint[:, active], step_jacobians[:, s - first])
            out[:, low:high, :, s - start] = product[:, :, d:].reshape(n, high - low, n_out, len(f_in))
            adjoint[:, active] = product[:, :, :d]
