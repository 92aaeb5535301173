"""The ways a block's Jacobian can be differentiated, and how to tell when one does not work.

All three take the watched inputs ``x_watch`` (B, W, F) and ``outputs(x_watch)``, the model's
outputs at the block's rows (B, R, Fo) as a function of them (the unwatched inputs are fixed),
and return those outputs and J (B, R, Fo, W, |f_in|). They run inside one ``tf.function`` per
block shape.

- ``reverse``: one VJP per output row, vectorised over rows and samples by pfor. The fastest
  where pfor converts every op; pfor holds every row's backward intermediates at once.
- ``reverse-loop``: the same VJPs in a ``tf.while_loop``, :data:`LOOP_PARALLEL_ROWS` in
  parallel. Slower, but works wherever gradients do.
- ``forward``: one JVP per watched input (step, feature) with ``tf.autodiff.ForwardAccumulator``,
  vectorised over the directions by pfor. Cheaper than reverse mode when the block has fewer
  input directions than output rows (few input features, many output features). Keras' RNN
  layers raise a TypeError under ForwardAccumulator inside ``tf.function``: the block computer
  reports that as :class:`~jacengine.errors.MethodUnsupported`.

pfor does not fail loudly when it cannot vectorise an op: it converts the op to a while loop and
logs "Using a while_loop for converting <op>" at debug level. :func:`pfor_fallbacks` captures
those lines so ``method="auto"`` can move on and say which op was to blame.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Iterator

import tensorflow as tf

from jacengine.planning.methods import GENERIC_METHODS, LOOP_PARALLEL_ROWS

Outputs = Callable[[tf.Tensor], tf.Tensor]
_FALLBACK = re.compile(r"Using a while_loop for converting (\S+)")


def reverse(outputs: Outputs, x_watch: tf.Tensor, f_in: tf.Tensor, *, loop: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
    """Reverse mode: batch_jacobian with pfor, or with a while loop when ``loop``."""
    with tf.GradientTape() as tape:
        tape.watch(x_watch)
        y_rows = outputs(x_watch)
    if loop:
        jacobian = tape.batch_jacobian(y_rows, x_watch, experimental_use_pfor=False, parallel_iterations=LOOP_PARALLEL_ROWS)
    else:
        jacobian = tape.batch_jacobian(y_rows, x_watch, experimental_use_pfor=True)
    return y_rows, tf.gather(jacobian, f_in, axis=4)


def forward(outputs: Outputs, x_watch: tf.Tensor, f_in: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Forward mode: one JVP per (watched step, selected input feature), vectorised by pfor."""
    shape = tf.shape(x_watch)  # (B, W, F), dynamic in a shape-polymorphic block function
    watch, features = shape[1], shape[2]
    n_f_in = f_in.shape[0]

    def column(direction: tf.Tensor) -> tf.Tensor:
        step, feature = direction // n_f_in, tf.gather(f_in, direction % n_f_in)
        unit = tf.one_hot(step * features + feature, watch * features, dtype=x_watch.dtype)
        tangent = tf.broadcast_to(tf.reshape(unit, tf.stack([1, watch, features])), shape)
        with tf.autodiff.ForwardAccumulator(x_watch, tangent) as accumulator:
            y_rows = outputs(x_watch)
        return accumulator.jvp(y_rows)

    columns = tf.vectorized_map(column, tf.range(watch * n_f_in), warn=False)  # (W * |f_in|, B, R, Fo)
    columns = tf.reshape(columns, tf.concat([tf.stack([watch, n_f_in]), tf.shape(columns)[1:]], axis=0))
    return outputs(x_watch), tf.transpose(columns, (2, 3, 4, 0, 1))


def reverse_loop(outputs: Outputs, x_watch: tf.Tensor, f_in: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Reverse mode in a while loop over rows (no pfor)."""
    return reverse(outputs, x_watch, f_in, loop=True)


Differentiate = Callable[[Outputs, tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]
# by the names of the generic methods of jacengine.planning.methods.METHODS, where each
# method's work formula lives (the structured ones have block computers of their own)
DIFFERENTIATE: dict[str, Differentiate] = {"reverse": reverse, "reverse-loop": reverse_loop, "forward": forward}
if set(DIFFERENTIATE) != set(GENERIC_METHODS):
    raise ImportError(f"jacengine.tf.methods differentiates {sorted(DIFFERENTIATE)}, the registry's generic methods are "
                      f"{sorted(GENERIC_METHODS)}")


@contextlib.contextmanager
def pfor_fallbacks() -> Iterator[list[str]]:
    """Collect the op types pfor converts to while loops while the block is open (at trace time)."""
    logger = tf.get_logger()
    previous_level, shown_level = logger.level, logger.getEffectiveLevel()
    ops: list[str] = []

    def collect(record: logging.LogRecord) -> bool:
        match = _FALLBACK.match(record.getMessage())
        if match and match.group(1) not in ops:
            ops.append(match.group(1))
        return record.levelno >= shown_level  # hide the debug lines unlocked here

    logger.addFilter(collect)
    logger.setLevel(logging.DEBUG)
    try:
        yield ops
    finally:
        logger.setLevel(previous_level)
        logger.removeFilter(collect)
