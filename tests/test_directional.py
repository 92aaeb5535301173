"""Sums of J over inputs (one JVP) or outputs (one VJP) equal the same sums of TensorFlow's own
batch_jacobian; tolerance 1e-5 of the largest |sum| (float32)."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from helpers import reference_jacobian  # noqa: E402

import jacengine  # noqa: E402


def gru_model() -> keras.Model:
    keras.utils.set_random_seed(5)
    return keras.Sequential([keras.Input((None, 2)), keras.layers.GRU(4, return_sequences=True), keras.layers.Dense(3)])


def assert_close(actual: np.ndarray, expected: np.ndarray) -> None:
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5 * max(np.abs(expected).max(), 1e-12))


@pytest.fixture(scope="module")
def case():
    from jacengine.tf.zoo import seed_model

    x = np.random.default_rng(6).normal(size=(5, 14, 2)).astype("float32")
    models = {"lstm": seed_model(units=6, features_in=2, features_out=3), "gru": gru_model()}
    return x, {name: (model, reference_jacobian(model, x)) for name, model in models.items()}


@pytest.mark.parametrize("name", ["lstm", pytest.param("gru", marks=pytest.mark.slow)])
def test_input_sum_is_the_seed_window_sum(case, name) -> None:
    x, models = case
    model, jacobian = models[name]
    result = jacengine.directional(model, x, over="inputs", t_in=slice(0, 10), f_in=[1], batch_size=2)
    assert result.attrs["jacengine_reduction"] == "input-sum"
    assert result.attrs["t_in"] == list(range(10)) and result.attrs["f_in"] == [1]
    assert_close(result["sum"], jacobian[:, :, :, :10, 1].sum(axis=3))


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_output_sum_over_output_steps_and_features(case, name) -> None:
    x, models = case
    model, jacobian = models[name]
    result = jacengine.directional(model, x, over="outputs", t_out=[3, 7, 13], f_out=slice(0, 2), batch_size=3)
    assert result["sum"].dims == ("batch", "t_in", "f_in")
    assert_close(result["sum"], jacobian[:, [3, 7, 13]][:, :, 0:2].sum(axis=(1, 2)))


def test_lstm_forward_mode_falls_back_to_reverse_over_reverse(case, caplog) -> None:
    x, models = case
    with caplog.at_level("WARNING", logger="jacengine"):
        result = jacengine.directional(models["lstm"][0], x, over="inputs")
    assert result.attrs["forward_mode"] is False and "reverse-over-reverse" in caplog.text


def test_sequence_to_one_and_bad_arguments(tmp_path) -> None:
    keras.utils.set_random_seed(2)
    model = keras.Sequential([keras.Input((None, 1)), keras.layers.Conv1D(3, 3, activation="tanh"),
                              keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(2)])
    x = np.random.default_rng(1).normal(size=(3, 9, 1)).astype("float32")
    jacobian = reference_jacobian(model, x)  # (B, 1, 2, 9, 1)
    result = jacengine.directional(model, x, over="inputs", t_in=slice(2, 5))
    assert result.attrs["forward_mode"] is True and result["sum"].shape == (3, 1, 2)
    assert_close(result["sum"], jacobian[:, :, :, 2:5].sum(axis=(3, 4)))
    with pytest.raises(jacengine.InputError, match=r"over \(--over\) must be"):
        jacengine.directional(model, x, over="everything")
    with pytest.raises(jacengine.InputError, match="t_in"):
        jacengine.directional(model, x, over="inputs", t_in=[5, 2])


def test_cli_writes_the_sum(case, tmp_path) -> None:
    from click.testing import CliRunner

    from jacengine.cli import main

    x, models = case
    model, jacobian = models["gru"]
    model.save(tmp_path / "m.keras")
    np.save(tmp_path / "x.npy", x)
    result = CliRunner().invoke(main, ["directional", "--model", str(tmp_path / "m.keras"), "--inputs", str(tmp_path / "x.npy"),
                                       "--over", "inputs", "--t-in", "0:10", "--out", str(tmp_path / "s.npy")])
    assert result.exit_code == 0, result.output
    assert_close(np.load(tmp_path / "s.npy"), jacobian[:, :, :, :10].sum(axis=(3, 4)))
