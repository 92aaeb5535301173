"""The blocked, stored Jacobian equals TensorFlow's own batch_jacobian across a zoo of models.

Tolerances: float32 models within 1e-5 of max |J|; float64 models within 1e-12 relative.
Each model runs with two block sizes (one block per t-chunk, and several chunks per block).
"""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from helpers import compute_with_blocks, reference_jacobian  # noqa: E402

B, T = 3, 12


def rnn(layer: str, f_in: int = 1, f_out: int = 1, dtype: str = "float32") -> keras.Model:
    cls = getattr(keras.layers, layer)
    return keras.Sequential(
        [keras.Input((None, f_in), dtype=dtype), cls(6, return_sequences=True, dtype=dtype), keras.layers.Dense(f_out, dtype=dtype)]
    )


def stacked_lstm() -> keras.Model:
    return keras.Sequential(
        [keras.Input((None, 2)), keras.layers.LSTM(5, return_sequences=True),
         keras.layers.LSTM(4, return_sequences=True), keras.layers.TimeDistributed(keras.layers.Dense(2))]
    )


def conv(padding: str) -> keras.Model:
    return keras.Sequential(
        [keras.Input((None, 2)), keras.layers.Conv1D(4, 3, padding=padding, activation="tanh"),
         keras.layers.Conv1D(2, 3, padding=padding, dilation_rate=2)]
    )


def bidirectional() -> keras.Model:
    return keras.Sequential(
        [keras.Input((None, 1)), keras.layers.Bidirectional(keras.layers.LSTM(4, return_sequences=True)),
         keras.layers.Dense(1)]
    )


def attention(causal: bool) -> keras.Model:
    inputs = keras.Input((None, 2))
    hidden = keras.layers.Dense(4)(inputs)
    attended = keras.layers.MultiHeadAttention(num_heads=2, key_dim=2)(hidden, hidden, use_causal_mask=causal)
    return keras.Model(inputs, keras.layers.Dense(2)(attended))


def sequence_to_one() -> keras.Model:
    return keras.Sequential([keras.Input((None, 2)), keras.layers.GRU(5), keras.layers.Dense(3)])


def fixed_length() -> keras.Model:
    return keras.Sequential([keras.Input((T, 2)), keras.layers.LSTM(4, return_sequences=True), keras.layers.Dense(2)])


ZOO = {
    # name: (builder, input features, expected causal decision)
    "lstm": (lambda: rnn("LSTM"), 1, True),
    "gru_fin3_fout2": (lambda: rnn("GRU", 3, 2), 3, True),
    "simple_rnn": (lambda: rnn("SimpleRNN", 2), 2, True),
    "stacked_lstm_time_distributed": (stacked_lstm, 2, True),
    "conv1d_causal": (lambda: conv("causal"), 2, True),
    "conv1d_same": (lambda: conv("same"), 2, False),
    "bidirectional_lstm": (bidirectional, 1, False),
    "attention_causal_mask": (lambda: attention(True), 2, True),
    "attention_no_mask": (lambda: attention(False), 2, False),
    "sequence_to_one": (sequence_to_one, 2, False),
    "fixed_length_lstm": (fixed_length, 2, True),
}


# Slow (--runslow): models whose code paths the default cases already cover (the seed test is an
# LSTM with TimeDistributed; GRU with several features), kept off the default suite for time.
SLOW = {"lstm", "stacked_lstm_time_distributed", "fixed_length_lstm", "simple_rnn", "bidirectional_lstm", "sequence_to_one",
        "gru_fin3_fout2"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in sorted(ZOO)])
def test_blocked_jacobian_equals_batch_jacobian(name: str, tmp_path) -> None:
    builder, f_in, causal = ZOO[name]
    keras.utils.set_random_seed(1)
    model = builder()
    x = np.random.default_rng(2).normal(size=(B, T, f_in)).astype("float32")
    expected = reference_jacobian(model, x)
    scale = np.abs(expected).max()
    assert scale > 0
    for label, (per_block, t_chunk, batch_chunk) in {"small": (1, 3, 2), "large": (3, 2, 3)}.items():
        store = compute_with_blocks(
            model, x, tmp_path / f"{label}.zarr", chunks_per_block=per_block, t_chunk=t_chunk, batch_chunk=batch_chunk
        )
        assert store.attrs["causal"] is causal, store.attrs
        assert store.is_complete
        actual = store.to_numpy()
        assert actual.shape == expected.shape
        np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5 * scale, err_msg=f"{name} {label}")


@pytest.mark.slow  # float64 computation is covered by the float64-precision test below
def test_float64_model_matches_to_1e_12(tmp_path) -> None:
    keras.utils.set_random_seed(3)
    model = rnn("LSTM", 2, 2, dtype="float64")
    x = np.random.default_rng(4).normal(size=(B, T, 2))
    expected = reference_jacobian(model, x)
    store = compute_with_blocks(model, x, tmp_path / "f64.zarr", chunks_per_block=2, t_chunk=3, batch_chunk=2)
    assert store.array.dtype == np.float32  # stored in float32 by default
    # compare the computation itself through a float64 store
    store64 = compute_with_blocks(
        model, x, tmp_path / "f64b.zarr", chunks_per_block=2, t_chunk=3, batch_chunk=2, store_dtype="float64"
    )
    actual = store64.to_numpy()
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-12 * np.abs(expected).max())


def test_float64_precision_of_a_float32_model_matches_its_float64_reference(tmp_path) -> None:
    import jacengine
    from jacengine.tf.model import float64_copy

    keras.utils.set_random_seed(4)
    model = rnn("GRU", 2, 2)
    x = np.random.default_rng(3).normal(size=(2, 10, 2)).astype("float32")
    expected = reference_jacobian(float64_copy(model), x.astype("float64"))
    store = jacengine.compute(model, x, tmp_path / "j.zarr", precision="float64", store_dtype="float64", progress=False)
    assert store.array.dtype == np.float64 and store.fingerprint["dtypes"] == "float64->float64"
    np.testing.assert_allclose(store.to_numpy(), expected, rtol=0, atol=1e-12 * np.abs(expected).max())
    float32 = jacengine.compute(model, x, tmp_path / "j32.zarr", progress=False).to_numpy()
    assert 0 < np.abs(float32 - expected).max() <= 1e-5 * np.abs(expected).max()  # float32 is close, not exact


def test_float16_store_records_a_rounding_bound_that_holds(tmp_path) -> None:
    import jacengine
    from jacengine.analysis.reductions import saliency

    keras.utils.set_random_seed(4)
    model = rnn("GRU", 2, 2)
    x = np.random.default_rng(3).normal(size=(2, 10, 2)).astype("float32")
    full = jacengine.compute(model, x, tmp_path / "j32.zarr", progress=False)
    half = jacengine.compute(model, x, tmp_path / "j16.zarr", store_dtype="float16", progress=False)
    bound = half.attrs["rounding_error_max_abs"]
    difference = np.abs(half.to_numpy().astype(np.float64) - full.to_numpy()).max()
    assert half.array.dtype == np.float16 and 0 < difference <= bound <= 2**-11 * np.abs(full.to_numpy()).max()
    assert half.to_dask().dtype == np.float32  # reductions accumulate in float32
    np.testing.assert_allclose(saliency(half)["mean_abs"], saliency(full)["mean_abs"], rtol=0, atol=bound)


def test_float16_store_refuses_values_beyond_its_range(tmp_path) -> None:
    import jacengine

    model = keras.Sequential([keras.Input((None, 1)), keras.layers.Dense(1, use_bias=False)])
    model.layers[-1].set_weights([np.full((1, 1), 1e6, "float32")])
    x = np.ones((2, 6, 1), "float32")
    with pytest.raises(jacengine.BlockError, match="beyond float16's range"):
        jacengine.compute(model, x, tmp_path / "j16.zarr", store_dtype="float16", progress=False)
    assert not jacengine.open_store(tmp_path / "j16.zarr").done_blocks()  # nothing recorded as done
