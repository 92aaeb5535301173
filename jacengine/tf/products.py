"""Linear functionals of J without J: one Jacobian-vector or vector-Jacobian product per batch.

``J·v`` (forward mode) sums J over input steps/features weighted by ``v`` for every output, e.g.
the seed question "the sum over the first 10 input steps" is ``v = 1`` on those steps. ``u·J``
(reverse mode) sums J over output steps/features weighted by ``u`` for every input. Each costs
about one backward pass, where the Jacobian costs one per output.

Forward mode uses ``tf.autodiff.ForwardAccumulator`` in a compiled function. That breaks inside
``tf.function`` for some layers (Keras' LSTM raises a TypeError there), so the failure is caught
once and the JVP is taken as the derivative of a VJP instead (``J·v = d/du <u·J, v>``, reverse
over reverse, which works wherever gradients of gradients do) with one log line naming the error.
"""

from __future__ import annotations

import logging

import numpy as np
import tensorflow as tf

from jacengine.tf.adapters import TFModel

log = logging.getLogger("jacengine")


class LinearFunctionals:
    """Compiled J·v and u·J for one model; sequence-to-one outputs get a time axis of 1."""

    def __init__(self, model: TFModel) -> None:
        self.model = model
        self.forward_mode_works: bool | None = None  # unknown until the first J·v
        self._jvp_forward = tf.function(self._jvp_by_forward_accumulator, autograph=False)
        self._jvp_double = tf.function(self._jvp_by_double_vjp, autograph=False)
        self._vjp = tf.function(self._vjp_by_tape, autograph=False)

    def _outputs(self, x: tf.Tensor) -> tf.Tensor:
        y = self.model(x, training=False)
        return y[:, None, :] if len(y.shape) == 2 else y

    def _jvp_by_forward_accumulator(self, x: tf.Tensor, v: tf.Tensor) -> tf.Tensor:
        with tf.autodiff.ForwardAccumulator(x, tf.broadcast_to(v, tf.shape(x))) as accumulator:
            y = self._outputs(x)
        return accumulator.jvp(y)

    def _jvp_by_double_vjp(self, x: tf.Tensor, v: tf.Tensor) -> tf.Tensor:
        u = tf.zeros_like(self._outputs(x))
        with tf.GradientTape() as outer:
            outer.watch(u)
            with tf.GradientTape() as inner:
                inner.watch(x)
                y = self._outputs(x)
            vjp = inner.gradient(y, x, output_gradients=u)
            projection = tf.reduce_sum(vjp * v)
        return outer.gradient(projection, u)

    def _vjp_by_tape(self, x: tf.Tensor, u: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = self._outputs(x)
        return tape.gradient(y, x, output_gradients=tf.broadcast_to(u, tf.shape(y)))

    def jvp(self, x: np.ndarray, v: np.ndarray) -> np.ndarray:
        """J·v for inputs x (B, T, Fi) and input weights v (T, Fi): (B, To, Fo)."""
        xt, vt = tf.constant(x), tf.constant(v[None], dtype=x.dtype)
        if self.forward_mode_works is not False:
            try:
                result = self._jvp_forward(xt, vt).numpy()
                self.forward_mode_works = True
                return result
            except (TypeError, ValueError, NotImplementedError, tf.errors.OpError) as exc:
                if self.forward_mode_works:
                    raise
                self.forward_mode_works = False
                log.warning("forward mode failed inside tf.function (%s: %s); using reverse-over-reverse instead",
                            type(exc).__name__, str(exc).strip().splitlines()[0][:120])
        return self._jvp_double(xt, vt).numpy()

    def vjp(self, x: np.ndarray, u: np.ndarray) -> np.ndarray:
        """u·J for inputs x (B, T, Fi) and output weights u (To, Fo): (B, T, Fi)."""
        return self._vjp(tf.constant(x), tf.constant(u[None], dtype=x.dtype)).numpy()
