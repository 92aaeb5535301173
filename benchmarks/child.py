"""The measuring side: runs one :class:`Case` inside a fresh process and prints one JSON line.

Each method builds the same model (fixed seed) and inputs, takes the memory baseline with the
model and inputs open, then times the first call (tracing or compilation included) and, when
the first call is short enough, the median of further calls. A fixed random sample of Jacobian
entries goes back to the parent, which checks methods of the same problem against each other.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks.cases import Case

SAMPLE_SIZE = 256
STEADY_STATE_LIMIT_S = 20.0  # no repeats after a first call longer than this


def sample_indices(shape: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    """The same entries for every method of a problem: half anywhere, half on or below the diagonal."""
    rng = np.random.default_rng(0)
    indices = [rng.integers(0, n, SAMPLE_SIZE) for n in shape]
    indices[3] = np.minimum(indices[3], indices[1]) if shape[1] == shape[3] else indices[3]
    return tuple(indices)


def _tf_runner(case: Case, model: Any, x: np.ndarray) -> Callable[[], np.ndarray]:
    import tensorflow as tf

    tensor = tf.constant(x)

    def batch_jacobian(use_pfor: bool) -> Any:
        with tf.GradientTape() as tape:
            tape.watch(tensor)
            y = model(tensor, training=False)
        return tape.batch_jacobian(y, tensor, experimental_use_pfor=use_pfor)

    if case.method == "tf-eager":
        return lambda: batch_jacobian(True).numpy()
    if case.method in ("tf-pfor", "tf-while"):
        compiled = tf.function(lambda: batch_jacobian(case.method == "tf-pfor"), autograph=False)
        return lambda: compiled().numpy()
    if case.method == "tf-causal-blocks":
        return _causal_blocks(model, x)
    if case.method == "tf-gradient-loop":
        def gradient_loop() -> np.ndarray:
            """One tape.gradient per output step and feature (the textbook loop)."""
            with tf.GradientTape(persistent=True) as tape:
                tape.watch(tensor)
                y = model(tensor, training=False)
                outputs = [y[:, t, f] for t in range(y.shape[1]) for f in range(y.shape[2])]
            rows = [tape.gradient(output, tensor).numpy() for output in outputs]
            return np.stack(rows, axis=1).reshape(y.shape[0], y.shape[1], y.shape[2], *x.shape[1:])
        return gradient_loop
    raise ValueError(case.method)


CAUSAL_BLOCK_ROWS = 50  # output steps per block of the hand-written loop
CAUSAL_BLOCK_PREFIXES = 4  # prefixes are padded up to a multiple of T/4: four traced shapes


def _causal_blocks(model: Any, x: np.ndarray) -> Callable[[], np.ndarray]:
    """What a capable user writes in an afternoon (no jacengine): blocks of output steps, each a
    pfor ``batch_jacobian`` of the input prefix the block needs, padded up to one of four lengths,
    in one ``tf.function`` per fixed block shape; a per-step Dense head instead of
    TimeDistributed(Dense) (docs/design.md, "Known traps"). Causal models only."""
    import math

    import keras
    import tensorflow as tf

    layers = [layer.layer if isinstance(layer, keras.layers.TimeDistributed) else layer for layer in model.layers]
    dense_head = keras.Sequential([keras.Input((None, x.shape[2])), *layers])
    batch, steps, _ = x.shape
    bucket = math.ceil(steps / CAUSAL_BLOCK_PREFIXES)

    @tf.function(autograph=False)
    def block(prefix: Any, rows: Any) -> Any:
        with tf.GradientTape() as tape:
            tape.watch(prefix)
            y = tf.gather(dense_head(prefix), rows, axis=1)
        return tape.batch_jacobian(y, prefix)

    def run() -> np.ndarray:
        features_out = int(dense_head.output_shape[-1])
        result = np.zeros((batch, steps, features_out, steps, x.shape[2]), dtype=np.float32)
        for start in range(0, steps, CAUSAL_BLOCK_ROWS):
            stop = min(steps, start + CAUSAL_BLOCK_ROWS)
            prefix = min(steps, math.ceil(stop / bucket) * bucket)
            rows = np.minimum(np.arange(start, start + CAUSAL_BLOCK_ROWS), steps - 1)  # fixed shape: pad by repeating
            values = block(tf.constant(x[:, :prefix]), tf.constant(rows, dtype=tf.int32)).numpy()
            result[:, start:stop, :, :prefix] = values[:, : stop - start]
        return result
    return run


def _jax_runner(case: Case, model: Any, x: np.ndarray) -> Callable[[], np.ndarray]:
    try:
        import jax
    except ImportError:
        raise NotApplicable("JAX is not installed (pip install jax)") from None
    if case.model != "lstm":
        raise NotApplicable("the JAX baseline exists for the LSTM model only")
    jax.config.update("jax_enable_x64", False)
    from benchmarks.jax_lstm import forward_function, jacobian_function

    difference = np.abs(forward_function(model)(x) - np.asarray(model(x))).max()
    if difference > 1e-4:
        raise RuntimeError(f"the JAX model disagrees with Keras by {difference:.2e}; not timing it")
    jacobian = jacobian_function(model)  # one jit per process: later calls reuse its compilation
    return lambda: jacobian(x)


def _jacengine_runner(case: Case, model: Any, x: np.ndarray, directory: str) -> Callable[[], np.ndarray]:
    import jacengine

    runs = iter(range(10**6))
    model = as_model_kind(case.model_kind, model, directory)
    settings: dict[str, Any] = {"layout": "lag", "max_lag": case.max_lag} if case.max_lag else {}
    if case.vouch_causal:
        settings["causal"] = True
    if "savedmodel" in case.model_kind:
        settings["trust_model"] = True  # the benchmark exported it just now

    def compute() -> Any:
        path = os.path.join(directory, f"run{next(runs)}.zarr")
        return jacengine.compute(model, x, path, budget=case.budget, method=case.engine_method, progress=False, **settings)
    return compute


def as_model_kind(kind: str, model: Any, directory: str) -> Any:
    """The Keras 3 ``model`` as another kind of TensorFlow model (cases.MODEL_KINDS), same weights:
    a tf_keras copy (object, .h5 file, SavedModel directory), a SavedModel exported from Keras 3,
    or a tf.Module or tf.function calling it (opaque to jacengine)."""
    import tensorflow as tf

    if kind == "keras":
        return model
    if kind.startswith("tf_keras"):
        import tf_keras

        copy = _tf_keras_copy(tf_keras, model)
        if kind == "tf_keras":
            return copy
        path = os.path.join(directory, "model.h5" if kind == "tf_keras-h5" else "tf_keras_savedmodel")
        copy.save(path)
        return path
    if kind == "savedmodel":
        # Keras 3 exports TimeDistributed traced with an open time axis, which computes wrong
        # outputs (docs/design.md, "Known traps"): export the same maths with a per-step Dense head
        from jacengine.tf.rewrite import without_time_distributed_dense

        path = os.path.join(directory, "savedmodel")
        without_time_distributed_dense(model, x_probe(model)).export(path, verbose=False)
        return path
    signature = [tf.TensorSpec((None, None, model.inputs[0].shape[-1]), tf.float32)]
    if kind.startswith("tf-function"):
        if kind.endswith("-dense-head"):
            from jacengine.tf.rewrite import without_time_distributed_dense

            model = without_time_distributed_dense(model, x_probe(model))
        return tf.function(lambda x: model(x, training=False), input_signature=signature)

    class KerasInModule(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        @tf.function(input_signature=signature)
        def __call__(self, x: Any) -> Any:
            return self.model(x, training=False)
    return KerasInModule()


def x_probe(model: Any) -> np.ndarray:
    return np.random.default_rng(1).normal(size=(2, 8, model.inputs[0].shape[-1])).astype("float32")


def _tf_keras_copy(tf_keras: Any, model: Any) -> Any:
    """The seed model (LSTM, then TimeDistributed(Dense)) rebuilt in tf_keras with its weights."""
    kinds = [type(layer).__name__ for layer in model.layers]
    if kinds != ["LSTM", "TimeDistributed"]:
        raise NotApplicable(f"the tf_keras copy exists for the seed model only, not {kinds}")
    lstm, head = model.layers
    copy = tf_keras.Sequential([tf_keras.Input((None, model.inputs[0].shape[-1])),
                                tf_keras.layers.LSTM(lstm.units, return_sequences=True),
                                tf_keras.layers.TimeDistributed(tf_keras.layers.Dense(head.layer.units))])
    copy.set_weights(model.get_weights())
    return copy


def _scale_out_runner(case: Case, model: Any, x: np.ndarray, directory: str, extra: dict[str, Any]) -> Callable[[], Any]:
    """jacengine over 2 processes: a 2-worker dask LocalCluster, or init + 2 concurrent shard
    processes. Each worker's (or shard's) peak resident memory goes into ``extra``."""
    import subprocess

    import jacengine

    store = os.path.join(directory, "j.zarr")
    if case.method == "jacengine-dask":
        import logging

        class WorkerPeaks(logging.Handler):
            """The dask executor logs its workers' peak memory; keep the numbers."""

            def emit(self, record: logging.LogRecord) -> None:
                if hasattr(record, "worker_peak_rss_bytes"):
                    extra["worker_peak_rss_bytes"] = record.worker_peak_rss_bytes

        logger = logging.getLogger("jacengine")
        logger.addHandler(WorkerPeaks())
        logger.setLevel(logging.INFO)
        # jacengine starts its own LocalCluster (the production path), after calibrating
        return lambda: jacengine.compute(model, x, store, budget=case.budget, executor="dask", workers=2, progress=False)
    model.save(os.path.join(directory, "model.keras"))
    np.save(os.path.join(directory, "x.npy"), x)
    files = ["--model", os.path.join(directory, "model.keras"), "--inputs", os.path.join(directory, "x.npy")]

    def on_shards() -> Any:
        jacengine.init(files[1], files[3], store, budget=case.budget)
        command = [sys.executable, "-m", "jacengine", "compute", *files, "--out", store, "--budget", case.budget, "--no-progress"]
        env = dict(os.environ, TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1")
        shards = [subprocess.Popen([*command, "--shard", f"{i}/2"], env=env) for i in range(2)]
        peaks = []
        for shard in shards:
            _, status, usage = os.wait4(shard.pid, 0)
            if os.waitstatus_to_exitcode(status) != 0:
                raise RuntimeError(f"shard process exited with {os.waitstatus_to_exitcode(status)}")
            peaks.append(usage.ru_maxrss * 1024)
        extra["worker_peak_rss_bytes"] = sorted(peaks)
        return jacengine.open_store(store)
    return on_shards


def _reduce_runner(case: Case, model: Any, x: np.ndarray, directory: str) -> Callable[[], Any]:
    """Saliency (mean |J| over the batch) and lag profile of a store computed before the baseline."""
    import jacengine
    from jacengine.analysis import reductions

    store = jacengine.compute(model, x, os.path.join(directory, "j.zarr"), budget=case.budget, progress=False)
    if case.method == "jacengine-reduce":
        def out_of_core() -> tuple[np.ndarray, np.ndarray]:
            results = reductions.reduce_many(store, ["saliency", "lag-profile"], write=False)  # one pass
            return results["saliency"]["mean_abs"].values, results["lag-profile"]["mean_abs"].values
        return out_of_core

    def in_memory() -> tuple[np.ndarray, np.ndarray]:
        mean_abs = np.abs(store.to_numpy()).mean(axis=0)  # the whole Jacobian in memory, the numpy way
        lags = [np.diagonal(mean_abs, -lag, axis1=0, axis2=2).mean(axis=-1) for lag in range(x.shape[1])]
        return mean_abs, np.stack(lags)
    return in_memory


def reduction_sample(mean_abs: np.ndarray, lags: np.ndarray) -> list[float]:
    """Fixed saliency entries and the first lags, for checking the two reductions agree."""
    picks = np.random.default_rng(0).integers(0, mean_abs.size, SAMPLE_SIZE)
    return np.concatenate([mean_abs.ravel()[picks], lags.ravel()[:32]]).astype(float).tolist()


class NotApplicable(Exception):
    """The method does not apply to this case (recorded as skipped, not as a failure)."""


def measure(case: Case, gpu_memory_limit: str | None = None) -> dict[str, Any]:
    import tensorflow as tf

    from jacengine import timing
    from jacengine.memory import ProcessMemory
    from jacengine.planning.budget import parse_budget
    from jacengine.tf.memory import TensorMemory, configure_gpus
    from jacengine.tf.zoo import zoo_model

    configure_gpus(parse_budget(gpu_memory_limit) if gpu_memory_limit else None)
    model = zoo_model(case.model, case.units, case.features_in, case.features_out)
    x = np.random.default_rng(0).normal(size=(case.batch, case.steps, case.features_in)).astype("float32")
    gpu = TensorMemory("GPU:0") if tf.config.list_physical_devices("GPU") else None
    extra: dict[str, Any] = {}  # figures a runner reports itself (per-worker peaks)
    with tempfile.TemporaryDirectory() as directory:
        if case.method == "jax":
            run = _jax_runner(case, model, x)
        elif case.method.startswith("tf-"):
            run = _tf_runner(case, model, x)
        elif case.method == "jacengine":
            run = _jacengine_runner(case, model, x, directory)
        elif case.method in ("jacengine-dask", "jacengine-shards"):
            run = _scale_out_runner(case, model, x, directory, extra)
        else:
            run = _reduce_runner(case, model, x, directory)
        process = ProcessMemory()
        process.set_baseline()
        if gpu:
            gpu.reset()
        timing.reset()
        started = time.perf_counter()
        result = run()
        first = time.perf_counter() - started
        if case.method.startswith("jacengine"):
            extra["profile"] = timing.snapshot()  # where the first call's time went
        repeats = []
        for _ in range(case.repeats if first < STEADY_STATE_LIMIT_S else 0):
            started = time.perf_counter()
            run()
            repeats.append(time.perf_counter() - started)
        record: dict[str, Any] = {
            "first_seconds": first,
            "steady_seconds": statistics.median(repeats) if repeats else None,
            "peak_rss_bytes": process.peak_above_baseline(),
            "gpu_peak_bytes": gpu.peak() if gpu else None,
            **extra,
        }
        if case.suite == "reduce":
            record["sample"] = reduction_sample(*result)
        else:
            if case.method.startswith("jacengine"):  # read only the sampled entries' chunks from the store
                record["blocks"] = len(result.plan.blocks)
                record["chosen_method"] = result.spec.method
                values = result.array.get_coordinate_selection(sample_indices(result.shape))
            else:
                values = result[sample_indices(result.shape)]
            record["sample"] = np.asarray(values, dtype=float).tolist()
    return record


def main(case_json: str, gpu_memory_limit: str | None = None) -> None:
    import json

    from jacengine.errors import BudgetError, MethodUnsupported

    case = Case.from_json(case_json)
    if case.tf_first:  # a user's session: TensorFlow and Keras imported first, at their defaults (oneDNN on)
        import keras  # noqa: F401
        import tensorflow  # noqa: F401
    else:  # jacengine's default in a process where it imports TensorFlow (see jacengine.tf), for every method
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    try:
        record = {"status": "ok", **measure(case, gpu_memory_limit)}
    except (NotApplicable, MethodUnsupported) as exc:  # e.g. forward mode on a Keras RNN
        record = {"status": "skipped", "error": str(exc)}
    except BudgetError as exc:  # jacengine refusing a budget below its minimum, before any work
        record = {"status": "refused", "error": str(exc)}
    print("\n" + json.dumps(record), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
