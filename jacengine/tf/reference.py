"""Independent references for verification: single-row gradients and central finite differences
on a float64 copy of the model (``jacengine.tf.model.float64_copy``). Deliberately simple and
eager: no pfor, no tf.function, no blocks. :class:`TFReferences` is the backend's
:class:`~jacengine.backends.base.References`."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from jacengine.tf.adapters import TFModel


def _output(model: TFModel, x: tf.Tensor, step: int | None, feature: int) -> tf.Tensor:
    y = model(x, training=False)
    return y[0, feature] if step is None else y[0, step, feature]


def gradient_row(model: TFModel, sample: np.ndarray, step: int | None, feature: int) -> np.ndarray:
    """d y[0, step, feature] / d x[0] for one sample (1, T, F) -> (T, F); step None = seq-to-one."""
    x = tf.constant(sample, dtype=model.dtype)
    with tf.GradientTape() as tape:
        tape.watch(x)
        target = _output(model, x, step, feature)
    return tape.gradient(target, x).numpy()[0]


def central_difference(
    model64: TFModel, sample: np.ndarray, step: int | None, feature: int, t_in: int, f_in: int, h: float = 1e-5
) -> float:
    """(y(x + h e) - y(x - h e)) / 2h in float64 for the input entry (t_in, f_in)."""
    x = np.asarray(sample, dtype="float64")
    plus, minus = x.copy(), x.copy()
    plus[0, t_in, f_in] += h
    minus[0, t_in, f_in] -= h
    up = float(_output(model64, tf.constant(plus), step, feature))
    down = float(_output(model64, tf.constant(minus), step, feature))
    return (up - down) / (2 * h)


class TFReferences:
    """Gradient rows of ``model`` and finite differences of its float64 copy (made once, here)."""

    def __init__(self, model: TFModel) -> None:
        self.model = model
        self.finite_differences_unavailable: str | None = None
        self._model64: TFModel | None = None
        try:
            self._model64 = model.float64()
        except Exception as exc:  # e.g. custom layers without a config round trip
            self.finite_differences_unavailable = f"no float64 copy of the model ({exc})"

    def gradient_row(self, sample: np.ndarray, step: int | None, feature: int) -> np.ndarray:
        return gradient_row(self.model, sample, step, feature)

    def central_difference(self, sample: np.ndarray, step: int | None, f_out: int, t_in: int, f_in: int) -> float:
        assert self._model64 is not None, self.finite_differences_unavailable
        return central_difference(self._model64, sample, step, f_out, t_in, f_in)
