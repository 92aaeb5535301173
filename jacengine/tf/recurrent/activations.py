"""Keras activations in numpy, each with its derivative, for the closed-form local Jacobians.

Only activations whose definition is the same in Keras 3 and tf_keras are listed (``hard_sigmoid``
differs between them, for example); a layer with any other activation is differentiated by
TensorFlow instead (:class:`~jacengine.tf.recurrent.stages.AutodiffStage`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

# value, and the derivative given the input and the value (many derivatives are cheapest from the value)
Activation = tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray, np.ndarray], np.ndarray]]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow for large |x|, unlike 1 / (1 + exp(-x))


def _elu(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0)))


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0, x).astype(x.dtype, copy=False)


ACTIVATIONS: dict[str, Activation] = {
    "linear": (lambda x: x, lambda x, y: np.ones_like(x)),
    "tanh": (np.tanh, lambda x, y: 1 - y * y),
    "sigmoid": (_sigmoid, lambda x, y: y * (1 - y)),
    "relu": (lambda x: np.maximum(x, 0), lambda x, y: (x > 0).astype(x.dtype)),
    "elu": (_elu, lambda x, y: np.where(x > 0, 1, y + 1).astype(x.dtype, copy=False)),
    "softplus": (_softplus, lambda x, y: _sigmoid(x)),
    "softsign": (lambda x: x / (1 + np.abs(x)), lambda x, y: 1 / np.square(1 + np.abs(x))),
    "exponential": (np.exp, lambda x, y: y),
    "silu": (lambda x: x * _sigmoid(x), lambda x, y: _sigmoid(x) * (1 + x * (1 - _sigmoid(x)))),
}
ACTIVATIONS["swish"] = ACTIVATIONS["silu"]


def activation_name(function: Any) -> str | None:
    """The Keras name of an activation function (``tanh``, ``linear``, ...), or None for one
    that is not a plain Keras activation (a lambda, a layer, a function with bound arguments)."""
    name = getattr(function, "__name__", None)
    module = getattr(function, "__module__", "") or ""
    if function is None:
        return "linear"
    if not isinstance(name, str) or not ("keras" in module or "tensorflow" in module):
        return None
    return name


def closed_form(function: Any) -> Activation | None:
    """The numpy pair for a Keras activation, or None when it has none here."""
    name = activation_name(function)
    return ACTIVATIONS.get(name) if name is not None else None
