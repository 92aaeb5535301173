"""The layers of a recurrent chain as stages of one time step, in numpy, with their tangents.

A stage maps the step's current vector ``u`` (N, d_in), and for a recurrent layer its state at
the previous step (N, d_state), to its output and new state. :meth:`Stage.push` also carries
P tangent directions through it in "row" layout: a tangent array (N, P, d) holds, for each of
the N (sample, step) pairs, the derivative of the d-vector along each of the P directions. A
chain of pushes gives a whole step's local Jacobian at once, by dense matmuls with the layer's
weights and elementwise products, for every pair of a window together (no recurrence).

A tangent with no pair axis (P, d) is the same for every pair: the x_s seed of the first layer,
and ``dstate``, always the selector of a layer's own previous state among the directions (see
:mod:`jacengine.tf.recurrent.chain`). Linear maps of those cost one small matmul, and a state
scaled elementwise touches only its own directions (:func:`_plus_selected`).

Closed forms cover Keras' LSTM, GRU (``reset_after`` true and false) and SimpleRNN cells, Dense,
Activation, LayerNormalization over features and the inference no-ops; any other per-step layer
or cell is differentiated by TensorFlow (:class:`AutodiffStage`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf

from jacengine.tf.recurrent.activations import Activation

Pushed = tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray | None]  # output, new state, their tangents


def _linear(tangent: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``tangent`` (..., d) times ``weights`` (d, k), as one matrix product over all leading axes."""
    flat = tangent.reshape(-1, tangent.shape[-1]) @ weights
    return flat.reshape(*tangent.shape[:-1], weights.shape[1])


def _scaled(derivative: np.ndarray, tangent: np.ndarray) -> np.ndarray:
    """An elementwise derivative (N, d) applied to a tangent (N, P, d) or (P, d)."""
    return derivative[:, None, :] * tangent


def _plus_selected(tangent: np.ndarray, scale: np.ndarray, selector: np.ndarray) -> np.ndarray:
    """``tangent`` (N, P, d) + ``scale`` (N, d) x ``selector`` (P, d), in place: the selector is
    an identity on d of the P directions, so only those N x d entries change."""
    directions, entries = np.nonzero(selector)
    tangent[:, directions, entries] += scale[:, entries]
    return tangent


@dataclass
class Stage:
    """One layer of the step. ``state_size`` is 0 for a per-step layer; a recurrent stage's
    output is the first ``output_size`` entries of its state (Keras' h)."""

    name: str
    output_size: int
    state_size: int = field(default=0, kw_only=True)

    @property
    def recurrent(self) -> bool:
        return self.state_size > 0

    def step(self, u: np.ndarray, state: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """(output, new state) for one step of N pairs."""
        output, new_state, _, _ = self.push(u, state, None, None)
        return output, new_state

    def push(self, u: np.ndarray, state: np.ndarray | None, du: np.ndarray | None,
             dstate: np.ndarray | None) -> Pushed:
        """The step and, where ``du`` is given, the tangents of its output and new state."""
        raise NotImplementedError


@dataclass
class Identity(Stage):
    """Dropout and the other layers that do nothing at inference."""

    def push(self, u: np.ndarray, state: np.ndarray | None, du: np.ndarray | None, dstate: np.ndarray | None) -> Pushed:
        return u, None, du, None  # type: ignore[return-value]


@dataclass
class Elementwise(Stage):
    """An Activation layer."""

    activation: Activation = field(kw_only=True)

    def push(self, u: np.ndarray, state: np.ndarray | None, du: np.ndarray | None, dstate: np.ndarray | None) -> Pushed:
        value, derivative = self.activation
        y = value(u)
        return y, None, None if du is None else _scaled(derivative(u, y), du), None  # type: ignore[return-value]


@dataclass
class Dense(Stage):
    """act(u W + b) on the feature axis (Dense, or TimeDistributed(Dense))."""

    kernel: np.ndarray = field(kw_only=True)
    bias: np.ndarray | None = field(kw_only=True)
    activation: Activation = field(kw_only=True)

    def push(self, u: np.ndarray, state: np.ndarray | None, du: np.ndarray | None, dstate: np.ndarray | None) -> Pushed:
        value, derivative = self.activation
        pre = u @ self.kernel
        if self.bias is not None:
            pre += self.bias
        y = value(pre)
        return y, None, None if du is None else _scaled(derivative(pre, y), _linear(du, self.kernel)), None  # type: ignore[return-value]


@dataclass
class LayerNorm(Stage):
    """LayerNormalization over the feature axis: gamma (u - mean) / sqrt(var + eps) + beta."""

    epsilon: float = field(kw_only=True)
    gamma: np.ndarray | None = field(kw_only=True)
    beta: np.ndarray | None = field(kw_only=True)

    def push(self, u: np.ndarray, state: np.ndarray | None, du: np.ndarray | None, dstate: np.ndarray | None) -> Pushed:
        centred = u - u.mean(axis=-1, keepdims=True)
        inverse_std = 1.0 / np.sqrt(np.mean(centred * centred, axis=-1, keepdims=True) + self.epsilon)
        normal = centred * inverse_std
        y = normal if self.gamma is None else normal * self.gamma
        if self.beta is not None:
            y = y + self.beta
        if du is None:
            return y, None, None, None  # type: ignore[return-value]
        # d normal = (du - mean(du) - normal * mean(normal * du)) / std, per pair and direction
        du = np.broadcast_to(du, (u.shape[0], *du.shape[-2:])) if du.ndim == 2 else du
        dcentred = du - du.mean(axis=-1, keepdims=True)
        dnormal = (dcentred - normal[:, None, :] * np.mean(normal[:, None, :] * du, axis=-1, keepdims=True)) \
            * inverse_std[:, None, :]
        return y, None, dnormal if self.gamma is None else dnormal * self.gamma, None  # type: ignore[return-value]


@dataclass
class Cell(Stage):
    """What Keras' recurrent cells share: ``u @ kernel`` and ``h_prev @ recurrent_kernel``
    (gates side by side in the columns), and the activation of the candidate state."""

    kernel: np.ndarray = field(kw_only=True)
    recurrent_kernel: np.ndarray = field(kw_only=True)
    activation: Activation = field(kw_only=True)


@dataclass
class SimpleRNN(Cell):
    """h = act(u W + b + h_prev U)."""

    bias: np.ndarray | None = field(kw_only=True)

    def push(self, u: np.ndarray, state: np.ndarray | None, du: np.ndarray | None, dstate: np.ndarray | None) -> Pushed:
        assert state is not None, "a recurrent stage needs its previous state"
        value, derivative = self.activation
        pre = u @ self.kernel + state @ self.recurrent_kernel
        if self.bias is not None:
            pre += self.bias
        h = value(pre)
        if du is None:
            return h, h, None, None  # type: ignore[return-value]
        assert dstate is not None, "tangents of a recurrent stage need its state's selector"
        dh = _scaled(derivative(pre, h), _linear(du, self.kernel) + _linear(dstate, self.recurrent_kernel))
        return h, h, dh, dh


@dataclass
class LSTM(Cell):
    """Keras' LSTM cell, gates in the order i, f, c, o; its state is [h, c]."""

    bias: np.ndarray | None = field(kw_only=True)
    recurrent_activation: Activation = field(kw_only=True)

    def push(self, u: np.ndarray, state: np.ndarray | None, du: np.ndarray | None, dstate: np.ndarray | None) -> Pushed:
        assert state is not None, "a recurrent stage needs its previous state"
        units = self.output_size
        h_prev, c_prev = state[:, :units], state[:, units:]
        pre = u @ self.kernel + h_prev @ self.recurrent_kernel
        if self.bias is not None:
            pre += self.bias
        gate, gate_derivative = self.recurrent_activation
        act, act_derivative = self.activation
        pre_i, pre_f, pre_c, pre_o = np.split(pre, 4, axis=-1)
        i, f, g, o = gate(pre_i), gate(pre_f), act(pre_c), gate(pre_o)
        c = f * c_prev + i * g
        tanh_c = act(c)
        h = o * tanh_c
        new_state = np.concatenate([h, c], axis=-1)
        if du is None:
            return h, new_state, None, None  # type: ignore[return-value]
        assert dstate is not None, "tangents of a recurrent stage need its state's selector"
        dpre = _linear(du, self.kernel) + _linear(dstate[:, :units], self.recurrent_kernel)
        # The gates see only the directions of u and h_prev; c_prev reaches c and h through the
        # forget gate alone, one entry per direction. Where dpre is the same for every pair, the
        # dense products skip the directions it is zero in (c_prev's: half of them for one layer).
        dense = np.flatnonzero(np.any(dpre != 0, axis=1)) if dpre.ndim == 2 else slice(None)
        dpre_i, dpre_f, dpre_c, dpre_o = np.split(dpre[dense], 4, axis=-1)
        # dc = di g + i dg + df c_prev (+ f dc_prev below), each gate's tangent its derivative times dpre
        dc = dpre_i * (gate_derivative(pre_i, i) * g)[:, None, :]
        dc += dpre_c * (i * act_derivative(pre_c, g))[:, None, :]
        dc += dpre_f * (gate_derivative(pre_f, f) * c_prev)[:, None, :]
        # dh = do tanh(c) + o tanh'(c) dc
        through_c = o * act_derivative(c, tanh_c)
        dh = dc * through_c[:, None, :]
        dh += dpre_o * (gate_derivative(pre_o, o) * tanh_c)[:, None, :]
        dnew = np.zeros((len(u), dpre.shape[-2], 2 * units), dtype=h.dtype)
        dnew[:, dense, :units], dnew[:, dense, units:] = dh, dc
        _plus_selected(dnew[..., units:], f, dstate[:, units:])
        _plus_selected(dnew[..., :units], through_c * f, dstate[:, units:])
        return h, new_state, dnew[..., :units], dnew


@dataclass
class GRU(Cell):
    """Keras' GRU cell, gates in the order z, r, h. With ``reset_after`` the reset gate scales
    the recurrent matmul's result (biases of shape (2, 3H): input and recurrent); without, it
    scales h_prev before the matmul (one bias of shape (3H,))."""

    input_bias: np.ndarray | None = field(kw_only=True)
    recurrent_bias: np.ndarray | None = field(kw_only=True)
    reset_after: bool = field(kw_only=True)
    recurrent_activation: Activation = field(kw_only=True)

    def push(self, u: np.ndarray, state: np.ndarray | None, du: np.ndarray | None, dstate: np.ndarray | None) -> Pushed:
        assert state is not None, "a recurrent stage needs its previous state"
        units = self.output_size
        gate, gate_derivative = self.recurrent_activation
        act, act_derivative = self.activation
        kernel_zr, kernel_h = self.kernel[:, : 2 * units], self.kernel[:, 2 * units :]
        recurrent_zr, recurrent_h = self.recurrent_kernel[:, : 2 * units], self.recurrent_kernel[:, 2 * units :]
        x_part = u @ self.kernel
        if self.input_bias is not None:
            x_part += self.input_bias
        x_zr, x_h = x_part[:, : 2 * units], x_part[:, 2 * units :]
        if self.reset_after:
            inner = state @ self.recurrent_kernel
            if self.recurrent_bias is not None:
                inner += self.recurrent_bias
            inner_zr, inner_h = inner[:, : 2 * units], inner[:, 2 * units :]
        else:
            inner_zr = state @ recurrent_zr
        pre_zr = x_zr + inner_zr
        zr = gate(pre_zr)
        z, r = zr[:, :units], zr[:, units:]
        if self.reset_after:
            pre_h = x_h + r * inner_h
        else:
            pre_h = x_h + (r * state) @ recurrent_h
        candidate = act(pre_h)
        h = z * state + (1 - z) * candidate
        if du is None:
            return h, h, None, None  # type: ignore[return-value]
        assert dstate is not None, "tangents of a recurrent stage need its state's selector"
        dzr = _scaled(gate_derivative(pre_zr, zr), _linear(du, kernel_zr) + _linear(dstate, recurrent_zr))
        dz, dr = dzr[..., :units], dzr[..., units:]
        if self.reset_after:
            dpre_h = _linear(du, kernel_h) + dr * inner_h[:, None, :] + _scaled(r, _linear(dstate, recurrent_h))
        else:
            dreset = _plus_selected(dr * state[:, None, :], r, dstate)
            dpre_h = _linear(du, kernel_h) + _linear(dreset, recurrent_h)
        dcandidate = _scaled(act_derivative(pre_h, candidate), dpre_h)
        dh = dz * (state - candidate)[:, None, :] + _scaled(1 - z, dcandidate)
        _plus_selected(dh, z, dstate)
        return h, h, dh, dh


@dataclass
class AutodiffStage(Stage):
    """A per-step layer or recurrent cell with no closed form here, differentiated by TensorFlow.

    ``function(u, state)`` (TensorFlow tensors, state None for a per-step layer) returns the
    output and the new state (flattened; the output its first entries). Its local Jacobian is
    one ``batch_jacobian`` over all pairs at once, compiled once per stage.
    """

    function: Any = field(kw_only=True)
    dtype: Any = field(kw_only=True)
    _compiled: Any = field(default=None, init=False, repr=False)

    def _call(self, u: np.ndarray, state: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        output, new_state = self.function(tf.constant(u, dtype=self.dtype),
                                          None if state is None else tf.constant(state, dtype=self.dtype))
        return np.asarray(output), None if new_state is None else np.asarray(new_state)

    def _jacobian(self, u: np.ndarray, state: np.ndarray | None) -> np.ndarray:
        """d (new state, or output) / d (u, state): (N, d_out, d_in + d_state)."""
        if self._compiled is None:
            def jacobian(joint: tf.Tensor) -> tf.Tensor:
                with tf.GradientTape() as tape:
                    tape.watch(joint)
                    inputs, previous = joint[:, : u.shape[1]], joint[:, u.shape[1]:] if self.recurrent else None
                    output, new_state = self.function(inputs, previous)
                    result = new_state if self.recurrent else output
                return tape.batch_jacobian(result, joint, experimental_use_pfor=True)

            self._compiled = tf.function(jacobian, reduce_retracing=True, autograph=False)
        joint = u if state is None else np.concatenate([u, state], axis=-1)
        return np.asarray(self._compiled(tf.constant(joint.astype(self.dtype))))

    def push(self, u: np.ndarray, state: np.ndarray | None, du: np.ndarray | None, dstate: np.ndarray | None) -> Pushed:
        output, new_state = self._call(u, state)
        if du is None:
            return output, new_state, None, None  # type: ignore[return-value]
        jacobian = self._jacobian(u, state)  # (N, d_result, d_in [+ d_state])
        d_in = u.shape[1]
        tangent = np.matmul(np.broadcast_to(du, (u.shape[0], *du.shape[-2:])), jacobian[:, :, :d_in].transpose(0, 2, 1))
        if not self.recurrent:
            return output, None, tangent, None  # type: ignore[return-value]
        assert dstate is not None, "tangents of a recurrent stage need its state's selector"
        tangent = tangent + np.matmul(dstate, jacobian[:, :, d_in:].transpose(0, 2, 1))
        return output, new_state, tangent[..., : self.output_size], tangent
