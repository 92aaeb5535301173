"""The lag layout stores the diagonals t_in = t_out - l of the full Jacobian, l < max_lag.

References: TensorFlow's batch_jacobian of the whole model, rearranged to lags with numpy
(tolerance 1e-5 of max |J|, float32), and the same reductions of a full-layout store.
"""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from helpers import compute_with_blocks, reference_jacobian  # noqa: E402
from test_equivalence import ZOO, B, T  # noqa: E402

import jacengine  # noqa: E402
from jacengine.analysis.reductions import lag_profile, saliency, top_k, window_sum  # noqa: E402
from jacengine.errors import InputError  # noqa: E402


def as_lags(full: np.ndarray, t_out: np.ndarray, max_lag: int) -> np.ndarray:
    """(B, To, Fo, T, Fi) -> (B, To, Fo, L, Fi) with [.., i, .., l, ..] = full[.., i, .., t_out[i] - l, ..]."""
    lagged = np.zeros((*full.shape[:3], max_lag, full.shape[4]), full.dtype)
    for i, step in enumerate(t_out):
        for lag in range(min(max_lag, step + 1)):
            lagged[:, i, :, lag] = full[:, i, :, step - lag]
    return lagged


@pytest.fixture(scope="module")
def gru_and_inputs():
    builder, f_in, _ = ZOO["gru_fin3_fout2"]
    keras.utils.set_random_seed(1)
    model = builder()
    x = np.random.default_rng(2).normal(size=(B, T, f_in)).astype("float32")
    return model, x, reference_jacobian(model, x)


CASES = [
    # zoo model, method, max_lag: causal RNN (window and bucketed prefix), non-causal conv (full
    # forward pass), causal attention in forward mode; a window of one step and of the whole sequence
    pytest.param("gru_fin3_fout2", "reverse", 1, marks=pytest.mark.slow),
    ("gru_fin3_fout2", "reverse", 4),
    pytest.param("gru_fin3_fout2", "reverse-loop", 4, marks=pytest.mark.slow),
    ("conv1d_same", "reverse", 3),
    ("attention_causal_mask", "forward", 5),
    pytest.param("fixed_length_lstm", "reverse", T, marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("name", "method", "max_lag"), CASES)
def test_lag_layout_equals_the_diagonals_of_the_full_jacobian(name, method, max_lag, tmp_path) -> None:
    builder, f_in, _ = ZOO[name]
    keras.utils.set_random_seed(1)
    model = builder()
    x = np.random.default_rng(2).normal(size=(B, T, f_in)).astype("float32")
    full = reference_jacobian(model, x)
    store = compute_with_blocks(model, x, tmp_path / "lag.zarr", chunks_per_block=1, t_chunk=5, batch_chunk=2,
                                method=method, layout="lag", max_lag=max_lag)
    assert store.dims == ("batch", "t_out", "f_out", "lag", "f_in")
    assert store.shape == (B, T, full.shape[2], max_lag, f_in)
    np.testing.assert_array_equal(store.coordinate("lag"), np.arange(max_lag))
    np.testing.assert_allclose(store.to_numpy(), as_lags(full, np.arange(T), max_lag), rtol=0, atol=1e-5 * np.abs(full).max())
    if max_lag < T:  # a window shorter than the prefix: blocks differentiate fewer steps than they feed
        assert any(b.watch_steps < b.forward_steps for b in store.plan.blocks)


def test_lag_store_reductions_match_the_full_store_and_refuse_input_windows(gru_and_inputs, tmp_path) -> None:
    model, x, full = gru_and_inputs
    max_lag = 4
    lag_store = jacengine.compute(model, x, tmp_path / "lag.zarr", layout="lag", max_lag=max_lag, t_out=slice(2, None),
                                  budget="1GiB", progress=False)
    full_store = jacengine.compute(model, x, tmp_path / "full.zarr", t_out=slice(2, None), budget="1GiB", progress=False)
    np.testing.assert_allclose(lag_store.to_numpy(), as_lags(full_store.to_numpy(), np.arange(2, T), max_lag),
                               rtol=0, atol=1e-6 * np.abs(full).max())
    from_lags, from_full = lag_profile(lag_store), lag_profile(full_store)
    np.testing.assert_allclose(from_lags["mean_abs"], from_full["mean_abs"][:max_lag], rtol=1e-5)
    np.testing.assert_array_equal(from_lags["lag"], np.arange(max_lag))
    assert saliency(lag_store)["mean_abs"].dims == ("t_out", "f_out", "lag", "f_in")
    best = top_k(lag_store, k=2)
    assert best["lag"].shape == (T - 2, 2, 2) and best["lag"].max() < max_lag
    with pytest.raises(InputError, match="holds lags"):
        window_sum(lag_store, 0, 3)
    assert jacengine.verify(lag_store.path, model, x, samples=4).ok


def test_lag_layout_is_refused_where_lags_mean_nothing(tmp_path) -> None:
    builder, f_in, _ = ZOO["sequence_to_one"]
    x = np.zeros((B, T, f_in), "float32")
    with pytest.raises(InputError, match="one output step per input step"):
        jacengine.plan(builder(), x, layout="lag", max_lag=3)
    builder, f_in, _ = ZOO["gru_fin3_fout2"]
    with pytest.raises(InputError, match=r"max_lag \(--max-lag\) between 1 and the sequence length 12"):
        jacengine.plan(builder(), np.zeros((B, T, f_in), "float32"), layout="lag", max_lag=13)
    with pytest.raises(InputError, match=r"max_lag \(--max-lag\) applies to layout='lag' only"):
        jacengine.plan(builder(), np.zeros((B, T, f_in), "float32"), max_lag=3)
