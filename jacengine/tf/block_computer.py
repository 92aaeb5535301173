"""Compute one block of the Jacobian in a compiled function, by one of :mod:`jacengine.tf.methods`.

One shape-polymorphic ``tf.function`` serves every block: its input signature leaves the batch,
the input length and the rows open, so it is traced once per run whatever the blocks' prefixes
(and lag windows), and causal blocks differentiate exactly the prefix they need. Tracing a pfor
Jacobian costs seconds, so this is what makes many block shapes cheap.

Keras' ``TimeDistributed`` computes wrong results inside ``tf.function`` when the time axis is
dynamic (see docs/design.md, "Known traps"), so the first call of a function is checked against an
eager forward pass of the same inputs, and every call's outputs against their expected shape.
A model that fails the check in the polymorphic function falls back to one static-shape
function per block shape (``polymorphic`` turns False; the planner then keeps the number of
shapes small), checked the same way.
"""

from __future__ import annotations

import functools
import gc
import logging
import time
from typing import Any

import numpy as np
import tensorflow as tf

from jacengine.errors import BlockError, BlockOutOfMemory, MethodUnsupported, ModelError
from jacengine.memory import release_free_heap
from jacengine.planning.blocks import Block, window_start
from jacengine.planning.spec import JacobianSpec
from jacengine.tf import methods
from jacengine.tf.adapters import TFModel
from jacengine.timing import phase

log = logging.getLogger("jacengine")


class _DropRetracingWarnings(logging.Filter):
    """Retracing once per block shape is by design; TensorFlow's warning about it is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


tf.get_logger().addFilter(_DropRetracingWarnings())


class BlockComputer:
    """Turns a :class:`Block` and its input rows into the block's slice of J (numpy).

    When pfor converts an op to a slow while loop, a ``strict`` computer raises
    :class:`~jacengine.errors.MethodUnsupported` (``method="auto"`` then tries the next
    method); otherwise it warns once per op.
    """

    def __init__(self, model: TFModel, spec: JacobianSpec, strict: bool = False) -> None:
        self.model = model
        self.spec = spec
        self.strict = strict
        self.polymorphic = True  # one trace for every block shape (see the module docstring)
        self._warned_fallbacks: set[str] = set()
        self.dtype = tf.as_dtype(spec.compute_dtype)
        self.trace_count = 0
        self.last_trace_seconds = 0.0  # how long the latest trace took
        self._checked_keys: set[tuple[int, ...]] = set()
        self._f_out = tf.constant(spec.f_out, dtype=tf.int32)
        self._f_in = tf.constant(spec.f_in, dtype=tf.int32)
        self._key: tuple[int, ...] | None = None
        self._compiled: Any = None

    def _function_key(self, block: Block) -> tuple[int, ...]:
        """Blocks with the same key share a compiled function: all of them when polymorphic."""
        return () if self.polymorphic else block.shape_key

    def _function_for(self, block: Block) -> Any:
        """The compiled function for ``block``. A traced graph holds tens of MB that TensorFlow
        never frees while its function lives, so a static-shape function is dropped (and the heap
        trimmed) when the shape changes: executors run blocks grouped by shape, so each shape is
        traced once and at most one graph is alive."""
        key = self._function_key(block)
        if self._compiled is None or key != self._key:
            self.release()
            if self.polymorphic:
                signature = [tf.TensorSpec((None, None, self.spec.input_features), self.dtype),
                             tf.TensorSpec((), tf.int32), tf.TensorSpec((), tf.int32), tf.TensorSpec((None,), tf.int32)]
                self._compiled = tf.function(self._jacobian, input_signature=signature, autograph=False)
            else:
                jacobian = functools.partial(self._jacobian, watch=block.watch_steps)
                self._compiled = tf.function(jacobian, reduce_retracing=False, autograph=False)
            self._key = key
        return self._compiled

    def release(self) -> None:
        """Drop the compiled function (and its graph's memory); the next block retraces."""
        self._compiled, self._key = None, None
        gc.collect()
        release_free_heap()

    def _outputs(self, x: tf.Tensor) -> tf.Tensor:
        """Model outputs as (B, T_out, F_out); sequence-to-one outputs get a time axis of 1."""
        y = self.model(x, training=False)
        return y[:, None, :] if self.spec.sequence_to_one else y

    def _jacobian(self, x: tf.Tensor, start: tf.Tensor, stop: tf.Tensor, rows: tf.Tensor,
                  *, watch: int | None = None) -> tuple[tf.Tensor, tf.Tensor]:
        """(outputs at ``rows``, J with respect to the input steps [start, stop)).

        ``watch`` is the static window length of a static-shape function, None in the
        polymorphic one. The full layout watches a prefix (start is 0), split off at ``stop``
        (polymorphic) or ``watch`` (static). The lag layout's window moves from block to block,
        so it is sliced at ``start`` (a tensor) and fed back as
        ``x + pad(window - stop_gradient(window))``, which adds exact zeros, keeps the model's
        input shape, and routes the derivative to the window only.
        """
        self.trace_count += 1  # runs at trace time only
        if self.spec.layout == "lag":
            steps = tf.shape(x)[1]
            length = stop - start if watch is None else watch
            x_watch = tf.slice(x, tf.stack([0, start, 0]), tf.stack([-1, length, -1]))
            if watch is not None:
                x_watch.set_shape((x.shape[0], watch, x.shape[2]))

            def model_inputs(window: tf.Tensor) -> tf.Tensor:
                padding = tf.stack([[0, 0], tf.stack([start, steps - length - start]), [0, 0]])
                embedded = tf.pad(window - tf.stop_gradient(window), padding)
                embedded.set_shape(x.shape)
                return x + embedded
        else:
            split = stop if watch is None else watch
            x_watch, x_rest = x[:, :split], x[:, split:]

            def model_inputs(window: tf.Tensor) -> tf.Tensor:
                return tf.concat([window, x_rest], axis=1)

        def outputs(window: tf.Tensor) -> tf.Tensor:
            y = self._outputs(model_inputs(window))
            return tf.gather(tf.gather(y, rows, axis=1), self._f_out, axis=2)

        return methods.DIFFERENTIATE[self.spec.method](outputs, x_watch, self._f_in)

    def _run(self, block: Block, x: tf.Tensor, start: int, stop: int, rows: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Call the block's compiled function; the first call of a function traces it, and is
        where a method that does not work for this model shows (an error, or a pfor fallback)."""
        function = self._function_for(block)
        arguments = (x, tf.constant(start, dtype=tf.int32), tf.constant(stop, dtype=tf.int32), rows)
        if self._function_key(block) in self._checked_keys:
            with phase("block compute"):
                return function(*arguments)
        try:
            with methods.pfor_fallbacks() as fallbacks:
                started = time.perf_counter()
                with phase("trace"):
                    self._trace(function, arguments)
                self.last_trace_seconds = time.perf_counter() - started
                with phase("block compute"):
                    result = function(*arguments)
        except (TypeError, ValueError, NotImplementedError, LookupError,
                tf.errors.UnimplementedError, tf.errors.InvalidArgumentError) as exc:
            if self.polymorphic:  # perhaps a layer that needs a static time axis: try static shapes
                self._give_up_polymorphism(exc)  # releases the function
                return self._run(block, x, start, stop, rows)
            self.release()
            first_line = (str(exc).strip().splitlines() or [""])[0][:160]
            raise MethodUnsupported(self.spec.method, f"{type(exc).__name__}: {first_line}") from exc
        new = [op for op in fallbacks if op not in self._warned_fallbacks]
        if new and self.strict:
            self.release()
            raise MethodUnsupported(self.spec.method, f"pfor cannot vectorise {', '.join(new)} and falls back to a while loop")
        if new:
            self._warned_fallbacks.update(new)
            log.warning("pfor cannot vectorise %s and runs it in a while loop; method %r may be slow for this model",
                        ", ".join(new), self.spec.method)
        return result

    def _give_up_polymorphism(self, why: object) -> None:
        """From now on compile one static-shape function per block shape."""
        log.info("the model fails with an open input shape (%s); compiling one function per block shape",
                 str(why).strip().splitlines()[0][:160] if str(why).strip() else type(why).__name__)
        self.polymorphic = False
        self.release()

    def _trace(self, function: Any, arguments: tuple[tf.Tensor, ...]) -> None:
        """Trace ``function`` for ``arguments`` without computing the block. TensorFlow optimises
        a graph on its first run, so a polymorphic function also runs once on a sliver of the
        block (two samples, one row); a static-shape one cannot, and its first call includes that."""
        function.get_concrete_function(*arguments)
        if self.polymorphic:
            x, start, stop, rows = arguments
            function(x[:2], start, stop, rows[:1])

    def compute(self, block: Block, x: np.ndarray) -> np.ndarray:
        """J for ``block`` given x = inputs[batch_start:batch_stop, :forward_steps].

        Returns an array of shape (n_batch, n_rows, |f_out|, in_stop, |f_in|) in the store dtype
        (in_stop is the lag window in the lag layout).
        """
        # What the last block freed goes back to the OS before this one allocates: glibc keeps
        # freed small allocations in per-thread arenas, and TensorFlow's thread pool leaves them
        # fragmented, so without a trim resident memory creeps above what the blocks hold, block
        # after block, until the peak passes the budget.
        release_free_heap()
        # Pad to the block's compute shape by repeating the last sample / row (the copies are
        # dropped below). At least two samples: TensorFlow 2.21's oneDNN kernels corrupt the
        # heap on pfor Jacobians of attention with a batch of one.
        samples = x.shape[0]
        padded = tf.constant(_pad_axis0(np.asarray(x), max(block.compute_batch, 2)), dtype=self.dtype)
        steps = np.asarray(self.spec.t_out[block.row_start : block.row_stop])
        start = window_start(self.spec, block) if self.spec.layout == "lag" else 0
        rows = tf.constant(_pad_axis0(np.zeros_like(steps) if self.spec.sequence_to_one else steps, block.compute_rows),
                           dtype=tf.int32)
        try:
            y_rows, jacobian = self._run(block, padded, start, start + block.watch_steps, rows)
            with phase("device-to-numpy copy"):
                values = jacobian.numpy()[:samples, : block.n_rows]
        except (tf.errors.ResourceExhaustedError, MemoryError) as exc:
            raise BlockOutOfMemory(f"block {block.index} ran out of memory: {str(exc)[:200]}") from exc
        key = self._function_key(block)
        expected_shape = (padded.shape[0], block.compute_rows, len(self.spec.f_out))
        if key not in self._checked_keys or tuple(y_rows.shape) != expected_shape:
            with phase("eager check"):
                agrees = self._agrees_with_eager(padded, rows, y_rows)
            if not agrees:
                if self.polymorphic:
                    self._give_up_polymorphism("the compiled forward pass disagrees with an eager call")
                    return self.compute(block, x)
                raise ModelError(
                    "the compiled forward pass disagrees with an eager call of the same model on the "
                    "same inputs; some layer computes differently inside tf.function (e.g. "
                    "TimeDistributed with a dynamic time axis), so its compiled Jacobian cannot be trusted. "
                    "Compare model(x) with tf.function(model)(x) to find the layer, and replace it (e.g. "
                    "TimeDistributed(Dense(n)) by Dense(n), which is the same map on (B, T, F) inputs)."
                )
            self._checked_keys.add(key)
        check_finite(self.spec, block, values)
        if self.spec.layout == "lag":
            values = lags_from_window(values, steps, start, self.spec.in_axis_length)
        else:
            values = fit_t_in(values, block.in_stop)
        return values.astype(self.spec.block_dtype, copy=False)

    def _agrees_with_eager(self, x: tf.Tensor, rows: tf.Tensor, compiled: tf.Tensor) -> bool:
        """Whether the compiled outputs at ``rows`` match an eager call on the first two samples
        (all a wrong layer needs to show; an eager pass over the whole block is slow)."""
        if compiled.shape[0] != x.shape[0]:  # a layer mapped the wrong axis: no eager pass needed
            return False
        samples = min(2, x.shape[0])
        eager = tf.gather(tf.gather(self._outputs(x[:samples]), rows, axis=1), self._f_out, axis=2).numpy()
        compiled = compiled.numpy()[:samples]
        finite = eager[np.isfinite(eager)]
        scale = max(float(np.max(np.abs(finite))) if finite.size else 0.0, 1.0)
        tolerance = (1e-10 if self.dtype == tf.float64 else 1e-5) * scale
        return compiled.shape == eager.shape and np.allclose(compiled, eager, rtol=0, atol=tolerance, equal_nan=True)


def _pad_axis0(values: np.ndarray, size: int) -> np.ndarray:
    """``values`` extended to ``size`` entries along axis 0 by repeating its last entry."""
    missing = size - values.shape[0]
    return values if missing <= 0 else np.concatenate([values, np.repeat(values[-1:], missing, axis=0)])


def lags_from_window(values: np.ndarray, steps: np.ndarray, start: int, max_lag: int) -> np.ndarray:
    """Window Jacobians (n, R, Fo, W, Fi) with the window starting at input step ``start`` as lags
    (n, R, Fo, max_lag, Fi): lag l of the row at output step s is input step s - l, zero before step 0."""
    inputs = steps[:, None] - np.arange(max_lag)[None, :]  # (R, L) input step of each lag
    position = np.clip(inputs - start, 0, values.shape[3] - 1)[None, :, None, :, None]
    lagged = np.take_along_axis(values, position, axis=3)
    return np.where((inputs >= 0)[None, :, None, :, None], lagged, 0).astype(values.dtype, copy=False)


def fit_t_in(values: np.ndarray, in_stop: int) -> np.ndarray:
    """Cut or zero-pad the t_in axis to the block's write extent (zeros are exact: causality)."""
    watched = values.shape[3]
    if watched >= in_stop:
        return values[:, :, :, :in_stop]
    padding = [(0, 0)] * values.ndim
    padding[3] = (0, in_stop - watched)
    return np.pad(values, padding)


def check_finite(spec: JacobianSpec, block: Block, values: np.ndarray) -> None:
    """Refuse a block whose J has a NaN or infinity (before anything is stored). A finite sum
    (accumulated in float64) clears the block without a mask as large as a quarter of it."""
    if np.isfinite(values.sum(dtype=np.float64)):
        return
    bad = ~np.isfinite(values)
    if bad.any():
        b, row = np.argwhere(bad)[0][:2]
        step = spec.t_out[block.row_start + row]
        raise BlockError(
            f"block {block.index} produced a non-finite derivative for sample "
            f"{block.batch_start + b}, output step {step}; the block was not stored. "
            "The model overflows at these inputs: check their scale, or compute in float64."
        )
