"""The recurrent-chain method equals TensorFlow's batch_jacobian, keeps the engine's guarantees,
and refuses (naming the layer) every model that is not a chain of recurrent and per-step layers.

Tolerances: float32 within 1e-5 of max |J|; float64 within 1e-12 of max |J|.
"""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from helpers import compute_with_blocks, reference_jacobian  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from test_lag_layout import as_lags  # noqa: E402

import jacengine  # noqa: E402
from jacengine.errors import MethodUnsupported  # noqa: E402
from jacengine.tf.adapters import KerasModel  # noqa: E402
from jacengine.tf.recurrent.chain import sweep  # noqa: E402
from jacengine.tf.recurrent.structure import describe, read_chain  # noqa: E402

B, T = 3, 12
L = keras.layers


def sequential(*layers, features: int = 2, dtype: str = "float32") -> keras.Model:
    keras.utils.set_random_seed(3)
    return keras.Sequential([keras.Input((None, features), dtype=dtype), *layers])


def inputs(features: int, dtype: str = "float32", batch: int = B, steps: int = T) -> np.ndarray:
    return np.random.default_rng(4).normal(size=(batch, steps, features)).astype(dtype)


def assert_close(actual: np.ndarray, expected: np.ndarray, relative: float = 1e-5) -> None:
    np.testing.assert_allclose(actual, expected, rtol=0, atol=relative * np.abs(expected).max())


def chain_jacobian(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """J of every output step, by one sweep of the chain (no engine around it)."""
    chain = read_chain(KerasModel(model))
    steps, f_out = x.shape[1], chain.output_size
    out = np.zeros((x.shape[0], steps, f_out, steps, x.shape[2]), dtype=x.dtype)
    sweep(chain, x, np.arange(steps), np.arange(f_out), np.arange(x.shape[2]), out)
    return out


CELLS = {
    "lstm_non_default_activations": lambda: sequential(
        L.LSTM(5, return_sequences=True, activation="softsign", recurrent_activation="tanh"), L.Dense(2)),
    "gru_reset_after": lambda: sequential(L.GRU(5, return_sequences=True, activation="elu"), L.Dense(2), features=3),
    "gru_reset_before": lambda: sequential(
        L.GRU(5, return_sequences=True, reset_after=False, recurrent_activation="softplus"), L.Dense(1), features=3),
    "simple_rnn_relu": lambda: sequential(L.SimpleRNN(4, return_sequences=True, activation="relu"), L.Dense(2)),
    "rnn_of_keras_cells": lambda: sequential(L.RNN(L.LSTMCell(3), return_sequences=True),
                                             L.RNN(L.GRUCell(3, reset_after=False), return_sequences=True), L.Dense(1)),
    "two_layer_stack_dense_head": lambda: sequential(
        L.LSTM(5, return_sequences=True), L.GRU(3, return_sequences=True), L.Dense(2, activation="tanh")),
    "time_distributed_and_per_step_layers": lambda: sequential(
        L.Dense(4, activation="swish"), L.LSTM(5, return_sequences=True), L.Dropout(0.5), L.LayerNormalization(),
        L.Activation("sigmoid"), L.SimpleRNN(3, return_sequences=True), L.TimeDistributed(L.Dense(2))),
}


@pytest.mark.parametrize("name", CELLS)
def test_chain_equals_batch_jacobian(name: str) -> None:
    model = CELLS[name]()
    assert "AutodiffStage" not in describe(read_chain(KerasModel(model)))  # every layer in closed form
    x = inputs(model.inputs[0].shape[-1])
    assert_close(chain_jacobian(model, x), reference_jacobian(model, x))


def test_cells_and_activations_without_closed_forms_are_differentiated_by_tensorflow() -> None:
    class ScaledCell(L.Layer):
        """A cell whose output is not its state: h = tanh(x W + h U), output 2 h."""

        def __init__(self, units: int, **kwargs) -> None:
            super().__init__(**kwargs)
            self.units, self.state_size = units, units

        def build(self, shape) -> None:
            self.w = self.add_weight(shape=(shape[-1], self.units))
            self.u = self.add_weight(shape=(self.units, self.units))

        def call(self, x, states, training=False):
            h = keras.ops.tanh(x @ self.w + states[0] @ self.u)
            return 2 * h, [h]

    model = sequential(L.RNN(ScaledCell(4), return_sequences=True),
                       L.LSTM(3, return_sequences=True, recurrent_activation="hard_sigmoid"), L.Dense(2, activation="gelu"))
    assert describe(read_chain(KerasModel(model))) == "AutodiffStage(4) -> AutodiffStage(3) -> AutodiffStage(2)"
    x = inputs(2)
    assert_close(chain_jacobian(model, x), reference_jacobian(model, x))


RANDOM_ACTIVATIONS = st.sampled_from(["tanh", "sigmoid", "relu", "linear", "softsign", "elu", "softplus", "swish"])


@st.composite
def small_stacks(draw) -> tuple[list[tuple[str, dict]], int]:
    """(layer class name, arguments) of 1-2 recurrent layers, each perhaps with a Dense after
    it, then a Dense head; and the input features."""
    layers: list[tuple[str, dict]] = []
    for _ in range(draw(st.integers(1, 2))):
        kind = draw(st.sampled_from(["LSTM", "GRU", "SimpleRNN"]))
        arguments = {"units": draw(st.integers(1, 4)), "return_sequences": True, "activation": draw(RANDOM_ACTIVATIONS)}
        if kind != "SimpleRNN":
            arguments["recurrent_activation"] = draw(RANDOM_ACTIVATIONS)
        if kind == "GRU":
            arguments["reset_after"] = draw(st.booleans())
        layers.append((kind, arguments))
        if draw(st.booleans()):
            layers.append(("Dense", {"units": draw(st.integers(1, 3)), "activation": draw(RANDOM_ACTIVATIONS)}))
    layers.append(("Dense", {"units": draw(st.integers(1, 2))}))
    return layers, draw(st.integers(1, 3))


@pytest.mark.slow
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_stacks())
def test_random_small_stacks_equal_batch_jacobian(stack: tuple[list[tuple[str, dict]], int]) -> None:
    layers, features = stack
    model = sequential(*(getattr(L, kind)(**arguments) for kind, arguments in layers), features=features)
    x = inputs(features, batch=2, steps=7)
    expected = reference_jacobian(model, x)
    if not np.abs(expected).max() > 0:  # a dead ReLU stack: nothing to compare relative to
        return
    assert_close(chain_jacobian(model, x), expected)


def test_engine_blocks_selections_and_float64(tmp_path) -> None:
    """Several blocks (remainders, prefixes of several lengths), t_out/f_out/f_in selections, a
    float64 model in a float64 store at 1e-12."""
    model = sequential(L.GRU(4, return_sequences=True, dtype="float64"), L.Dense(3, dtype="float64"), features=3,
                       dtype="float64")
    x = inputs(3, "float64")
    expected = reference_jacobian(model, x)
    store = compute_with_blocks(model, x, tmp_path / "all.zarr", chunks_per_block=1, t_chunk=5, batch_chunk=2,
                                method="recurrent", store_dtype="float64")
    assert store.spec.method == "recurrent" and store.spec.causal
    assert_close(store.to_numpy(), expected, 1e-12)
    t_out, f_out, f_in = [2, 5, 6, 11], [0, 2], [1, 2]
    selected = compute_with_blocks(model, x, tmp_path / "sel.zarr", chunks_per_block=2, t_chunk=2, batch_chunk=3,
                                   method="recurrent", store_dtype="float64", t_out=t_out, f_out=f_out, f_in=f_in)
    assert_close(selected.to_numpy(), expected[:, t_out][:, :, f_out][..., f_in], 1e-12)


def test_lag_layout(tmp_path) -> None:
    model = CELLS["two_layer_stack_dense_head"]()
    x, max_lag = inputs(2), 4
    full = reference_jacobian(model, x)
    store = compute_with_blocks(model, x, tmp_path / "lag.zarr", chunks_per_block=1, t_chunk=4, batch_chunk=2,
                                method="recurrent", layout="lag", max_lag=max_lag)
    assert_close(store.to_numpy(), as_lags(full, np.arange(T), max_lag))


def test_auto_run_is_exact_writes_no_chunk_above_the_diagonal_and_resumes(tmp_path) -> None:
    model = CELLS["lstm_non_default_activations"]()
    x = inputs(2)
    path = tmp_path / "j.zarr"
    store = jacengine.compute(model, x, path, budget="1GiB", progress=False)
    assert store.spec.method == "recurrent"
    assert_close(store.to_numpy(), reference_jacobian(model, x))
    t_chunk = store.plan.t_out_chunk
    written = {tuple(int(part) for part in p.relative_to(path / "jacobian" / "c").parts)
               for p in (path / "jacobian" / "c").rglob("*") if p.is_file()}
    assert written and all(t_in * store.plan.t_in_chunk <= min(T - 1, (t_out + 1) * t_chunk - 1)
                           for _, t_out, _, t_in, _ in written)
    again = jacengine.compute(model, x, path, budget="1GiB", progress=False)
    assert again.is_complete and again.spec.method == "recurrent"


def test_one_sample_splits_its_rows_over_threads(monkeypatch) -> None:
    from jacengine.planning.blocks import Block
    from jacengine.planning.spec import JacobianSpec
    from jacengine.tf.recurrent.computer import RecurrentBlockComputer

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    model = CELLS["gru_reset_after"]()
    x = inputs(3, batch=1)
    spec = JacobianSpec(batch=1, input_steps=T, input_features=3, output_steps=T, output_features=2, t_out=tuple(range(T)),
                        f_out=(0, 1), f_in=(0, 1, 2), causal=True, truncatable=True, sequence_to_one=False,
                        method="recurrent", compute_dtype="float32", layout="full", max_lag=None, store_dtype="float32")
    values = RecurrentBlockComputer(KerasModel(model), spec).compute(Block(0, 0, 1, 0, T, T, T, T, 1, T), x)
    assert_close(values, reference_jacobian(model, x))


NOT_CHAINS = {
    "bidirectional": (lambda: sequential(L.Bidirectional(L.LSTM(3, return_sequences=True)), L.Dense(1)),
                      r"layer 'bidirectional\w*' \(Bidirectional\) reads the sequence in both directions"),
    "go_backwards": (lambda: sequential(L.GRU(3, return_sequences=True, go_backwards=True), L.Dense(1)),
                     r"\(GRU\) runs backwards in time"),
    "sequence_to_one": (lambda: sequential(L.LSTM(3), L.Dense(1)), r"return_sequences=False"),
    "convolution": (lambda: sequential(L.Conv1D(2, 3, padding="causal"), L.LSTM(3, return_sequences=True)),
                    r"\(Conv1D\) is not a recurrent or per-step layer"),
    "per_step_only": (lambda: sequential(L.Dense(2)), r"no recurrent layer"),
}


@pytest.mark.parametrize("name", NOT_CHAINS)
def test_models_that_are_not_chains_are_refused_naming_the_layer(name: str) -> None:
    builder, why = NOT_CHAINS[name]
    with pytest.raises(MethodUnsupported, match=why):
        read_chain(KerasModel(builder()))


def test_explicit_recurrent_on_a_non_chain_is_refused_before_any_store(tmp_path) -> None:
    builder, _ = NOT_CHAINS["bidirectional"]
    refusal = r"method 'recurrent' does not work for this model: layer 'bidirectional\w*' \(Bidirectional\)"
    with pytest.raises(MethodUnsupported, match=refusal):
        jacengine.compute(builder(), inputs(2), tmp_path / "j.zarr", method="recurrent", progress=False)
    assert not (tmp_path / "j.zarr").exists()


def test_a_layer_that_computes_other_than_its_class_is_caught_by_the_reading_check(tmp_path) -> None:
    class DoubledDense(L.Dense):
        """A Dense by class name whose call differs: read as a Dense, it would give a wrong J."""

        def call(self, x):
            return 2 * super().call(x)

    DoubledDense.__name__ = "Dense"
    model = sequential(L.LSTM(3, return_sequences=True), DoubledDense(1))
    x = inputs(2)
    with pytest.raises(MethodUnsupported, match="reading the model layer by layer gives outputs"):
        jacengine.compute(model, x, tmp_path / "j.zarr", method="recurrent", progress=False)
    store = jacengine.compute(model, x, tmp_path / "auto.zarr", budget="1GiB", progress=False)
    assert store.spec.method != "recurrent"
    assert_close(store.to_numpy(), reference_jacobian(model, x))


def test_tf_keras_model() -> None:
    tf_keras = pytest.importorskip("tf_keras")
    tf_keras.utils.set_random_seed(1)
    model = tf_keras.Sequential([tf_keras.Input((None, 2)), tf_keras.layers.GRU(4, return_sequences=True),
                                 tf_keras.layers.LSTM(3, return_sequences=True),
                                 tf_keras.layers.TimeDistributed(tf_keras.layers.Dense(2, activation="tanh"))])
    x = inputs(2)
    assert_close(jacengine.jacobian(model, x, method="recurrent", progress=False), reference_jacobian(model, x))
