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

# (sample, step) pairs whose local Jacobians a sweep holds at once, pushed through the step
# together: the window's memory is the same for any number of samples (16 steps of 32 samples,
# 256 of 2)
WINDOW_PAIRS = 512
PUSH_BYTES = 512 * 2**10  # the size of one tangent array of a push (see Chain.pairs_per_push)


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

    def local_jacobians(self, previous: np.ndarray, x: np.ndarray, step: np.ndarray, output: np.ndarray) -> None:
        """For N pairs of z_{s-1} (N, D) and x_s (N, F_in), write the transpose of [A_s | B_s],
        d z_s / d (z_{s-1}, x_s), into ``step`` (N, D + F_in, D) and C_s into ``output``
        (N, F_out, D)."""
        u, du = x, self._input_seed  # (P, F_in): the same for every pair
        for index, (offset, stage, seed) in enumerate(zip(self._offsets, self.stages, self._state_seeds, strict=True)):
            state = previous[:, offset: offset + stage.state_size] if stage.recurrent else None
            u, _, du, dstate = stage.push(u, state, du, seed if stage.recurrent else None)
            if dstate is not None:
                step[:, :, offset: offset + stage.state_size] = dstate
            if index == self._last_recurrent:
                self._output_jacobian(index, u, output)

    def _output_jacobian(self, last: int, h: np.ndarray, output: np.ndarray) -> None:
        """C_s = d y_s / d z_s (N, F_out, D), into ``output``, from the last recurrent layer's
        output ``h``: y reads z_s only through it, by the per-step layers after it."""
        units = h.shape[1]
        u, du = h, np.eye(units, dtype=self.dtype)
        for stage in self.stages[last + 1:]:
            u, _, du, _ = stage.push(u, None, du, None)
        output[...] = 0
        output[:, :, self._last_offset: self._last_offset + units] = np.swapaxes(du, -1, -2)

    def pairs_per_push(self) -> int:
        """Pairs pushed through the step at once: few enough that its temporaries stay below
        :data:`PUSH_BYTES` (larger ones are fresh mmaps, page-faulted at every push; see
        :func:`jacengine.memory.return_large_frees_to_the_os`)."""
        tangent_bytes = (self.state_size + self.input_size) * self.state_size * self.dtype.itemsize
        return max(1, PUSH_BYTES // tangent_bytes)


class Window:
    """The local Jacobians of up to ``steps`` consecutive steps of ``samples`` samples, in
    buffers allocated once per sweep and refilled as it moves back."""

    def __init__(self, chain: Chain, samples: int, steps: int) -> None:
        self.chain, self.samples, self.capacity = chain, samples, steps
        pairs = samples * steps
        self._step = np.empty((pairs, chain.state_size + chain.input_size, chain.state_size), dtype=chain.dtype)
        self._output = np.empty((pairs, chain.output_size, chain.state_size), dtype=chain.dtype)

    def fill(self, states: np.ndarray, x: np.ndarray, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """The local Jacobians of steps [start, stop): the transposed [A_s | B_s]
        (n, W, D + F_in, D) and C_s (n, W, F_out, D)."""
        chain, steps = self.chain, stop - start
        pairs = self.samples * steps
        previous = states[:, start:stop].reshape(pairs, chain.state_size)
        inputs = x[:, start:stop].reshape(pairs, chain.input_size)
        chunk = chain.pairs_per_push()
        for first in range(0, pairs, chunk):
            part = slice(first, min(pairs, first + chunk))
            chain.local_jacobians(previous[part], inputs[part], self._step[part], self._output[part])
        return (self._step[:pairs].reshape(self.samples, steps, *self._step.shape[1:]),
                self._output[:pairs].reshape(self.samples, steps, *self._output.shape[1:]))


def sweep(chain: Chain, x: np.ndarray, row_steps: np.ndarray, f_out: np.ndarray, f_in: np.ndarray,
          out: np.ndarray, start: int = 0, max_lag: int | None = None) -> None:
    """Write J for the samples of ``x`` (n, >= last row + 1, F_in) into ``out``
    (n, R, |f_out|, W, |f_in|): out[:, r, :, s - start] = d y[row_steps[r], f_out] / d x[s, f_in]
    for input steps s in [start, start + W) up to each row's step (zero above it, as given).

    ``row_steps`` is ascending. With ``max_lag`` a row leaves the sweep once its lag exceeds
    it (the lag layout needs nothing further back).

    The adjoint lives in two buffers of (n, R x |f_out|, D + |f_in|) that take turns: one step's
    matmul reads lambda from one and writes the next lambda and J's column into the other, so
    the sweep allocates nothing per step.
    """
    n, rows = len(x), len(row_steps)
    d, n_out, n_in = chain.state_size, len(f_out), len(f_in)
    top = int(row_steps[-1]) + 1
    states, _ = chain.forward(x[:, :top])
    every_input = np.array_equal(f_in, np.arange(chain.input_size))
    directions = None if every_input else np.concatenate([np.arange(d), d + np.asarray(f_in)])
    adjoints = [np.zeros((n, rows * n_out, d + n_in), dtype=chain.dtype) for _ in range(2)]
    current = 0
    low = high = rows  # rows [low, high) are in the sweep
    window = Window(chain, n, max(1, WINDOW_PAIRS // n))
    for stop in range(top, start, -window.capacity):
        first = max(start, stop - window.capacity)
        step_jacobians, output_jacobians = window.fill(states, x, first, stop)
        if directions is not None:
            step_jacobians = step_jacobians[:, :, directions]
        output_jacobians = output_jacobians[:, :, f_out]
        for s in range(stop - 1, first - 1, -1):
            while low > 0 and row_steps[low - 1] == s:  # rows join at their own step
                low -= 1
                adjoints[current][:, low * n_out: (low + 1) * n_out, :d] = output_jacobians[:, s - first]
            while max_lag is not None and high > low and row_steps[high - 1] - s >= max_lag:
                high -= 1
            if low == high:
                continue
            active = slice(low * n_out, high * n_out)
            following = adjoints[1 - current][:, active]
            np.matmul(adjoints[current][:, active, :d], step_jacobians[:, s - first].transpose(0, 2, 1), out=following)
            out[:, low:high, :, s - start] = following[:, :, d:].reshape(n, high - low, n_out, n_in)
            current = 1 - current
