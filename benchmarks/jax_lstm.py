"""The seed model (LSTM then a per-step Dense) rebuilt in JAX with the Keras weights copied across.

Used only by the ``jax`` baseline; JAX is an optional benchmark dependency, never a runtime one.
The caller checks the JAX outputs against the Keras model's before timing anything.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def lstm_function(model: Any) -> Callable[[Any], Any]:
    """f(x) for one sample x of shape (T, F_in) -> (T, F_out), equal to ``model`` (seed_model)."""
    import jax
    import jax.numpy as jnp

    lstm = next(layer for layer in model.layers if type(layer).__name__ == "LSTM")
    kernel, recurrent, bias = (jnp.asarray(w) for w in lstm.get_weights())
    dense_kernel, dense_bias = (jnp.asarray(w) for w in model.layers[-1].get_weights())
    units = recurrent.shape[0]

    def step(carry: tuple[Any, Any], x_t: Any) -> tuple[tuple[Any, Any], Any]:
        h, c = carry
        z = x_t @ kernel + h @ recurrent + bias
        i, f, g, o = (z[k * units:(k + 1) * units] for k in range(4))  # Keras gate order: i, f, c, o
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), h

    def f(x: Any) -> Any:
        zeros = jnp.zeros(units, x.dtype)
        _, hidden = jax.lax.scan(step, (zeros, zeros), x)
        return hidden @ dense_kernel + dense_bias

    return f


def jacobian_function(model: Any) -> Callable[[np.ndarray], np.ndarray]:
    """jit(vmap(jacrev(f))): x (B, T, F_in) -> J (B, T, F_out, T, F_in), the batch_jacobian layout."""
    import jax

    compiled = jax.jit(jax.vmap(jax.jacrev(lstm_function(model))))
    return lambda x: np.asarray(jax.block_until_ready(compiled(x)))


def forward_function(model: Any) -> Callable[[np.ndarray], np.ndarray]:
    """The JAX forward pass over a batch, for checking it against Keras."""
    import jax

    compiled = jax.jit(jax.vmap(lstm_function(model)))
    return lambda x: np.asarray(compiled(x))
