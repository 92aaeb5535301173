"""Every differentiation method equals TensorFlow's batch_jacobian where it applies, says clearly
where it does not, and ``method="auto"`` never picks one that fails.

Tolerance: float32 models within 1e-5 of max |J| (as in test_equivalence).
"""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from helpers import compute_with_blocks, reference_jacobian  # noqa: E402
from test_equivalence import ZOO, B, T  # noqa: E402

import jacengine  # noqa: E402
from jacengine.errors import MethodUnsupported  # noqa: E402


class SortOverTime(keras.layers.Layer):
    """Sorting along time: its gradient has an op (ScatterNd) that pfor cannot vectorise."""

    def call(self, x):
        return keras.ops.sort(x, axis=1)


def sorting_model() -> keras.Model:
    return keras.Sequential([keras.Input((None, 2)), keras.layers.Dense(3), SortOverTime(), keras.layers.Dense(1)])


def inputs(features: int) -> np.ndarray:
    return np.random.default_rng(2).normal(size=(B, T, features)).astype("float32")


def assert_matches_reference(actual: np.ndarray, model: keras.Model, x: np.ndarray) -> None:
    expected = reference_jacobian(model, x)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


# (zoo model, method): forward mode applies to models without Keras RNN layers; the slow ones
# (--runslow) repeat code paths the others cover
CASES = [
    ("gru_fin3_fout2", "reverse-loop"),
    pytest.param("conv1d_same", "reverse-loop", marks=pytest.mark.slow),
    ("conv1d_causal", "forward"),
    ("conv1d_same", "forward"),
    ("attention_causal_mask", "forward"),
    pytest.param("attention_no_mask", "forward", marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("name", "method"), CASES)
def test_method_equals_batch_jacobian(name: str, method: str, tmp_path) -> None:
    builder, f_in, causal = ZOO[name]
    keras.utils.set_random_seed(1)
    model, x = builder(), inputs(f_in)
    # several blocks, a remainder block and several prefix lengths: (t_chunk 5 on T=12)
    store = compute_with_blocks(model, x, tmp_path / "j.zarr", chunks_per_block=1, t_chunk=5, batch_chunk=2, method=method)
    assert store.spec.method == method and store.spec.causal is causal
    assert_matches_reference(store.to_numpy(), model, x)


def test_forward_mode_on_an_rnn_is_refused_and_names_the_way_out(tmp_path) -> None:
    builder, f_in, _ = ZOO["gru_fin3_fout2"]
    with pytest.raises(MethodUnsupported, match=r"method 'forward' does not work for this model: TypeError.*method='auto'"):
        jacengine.compute(builder(), inputs(f_in), tmp_path / "j.zarr", method="forward", progress=False)
    assert not (tmp_path / "j.zarr").exists()


@pytest.fixture
def probed_methods(monkeypatch) -> list[str]:
    """The methods ``auto`` traces and measures, in order; pfor methods are always measured
    (a test model is small enough for the loop-only fast path otherwise)."""
    from jacengine.planning import calibration, method_choice

    probed: list[str] = []
    first_probe = calibration.first_probe

    def recording(prober, spec, *args, **kwargs):
        probed.append(spec.method)
        return first_probe(prober, spec, *args, **kwargs)

    monkeypatch.setattr(calibration, "first_probe", recording)
    monkeypatch.setattr(method_choice, "PFOR_TRACE_FACTOR", 0.0)
    return probed


def test_auto_takes_the_recurrent_chain_on_an_rnn_without_tracing(tmp_path, caplog, probed_methods) -> None:
    builder, f_in, _ = ZOO["gru_fin3_fout2"]
    model, x = builder(), inputs(f_in)
    with caplog.at_level(logging.INFO, logger="jacengine"):
        store = jacengine.compute(model, x, tmp_path / "j.zarr", method="auto", budget="1GiB", progress=False)
    assert store.spec.method == "recurrent"
    assert probed_methods == ["recurrent"]
    assert any("the model is a recurrent chain, GRU(6) -> Dense(2); nothing traced" in r.getMessage() for r in caplog.records)
    assert_matches_reference(store.to_numpy(), model, x)


@pytest.mark.slow
def test_auto_leaves_forward_mode_out_on_an_rnn_that_is_not_a_chain(tmp_path, caplog, probed_methods) -> None:
    builder, f_in, _ = ZOO["bidirectional_lstm"]
    model, x = builder(), inputs(f_in)
    with caplog.at_level(logging.INFO, logger="jacengine"):
        store = jacengine.compute(model, x, tmp_path / "j.zarr", method="auto", budget="1GiB", progress=False)
    assert store.spec.method in ("reverse", "reverse-loop")  # whichever measured faster; never forward
    assert probed_methods == ["reverse-loop", "reverse"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # expected for every RNN: no warning
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "forward: Keras' Bidirectional, LSTM raise under ForwardAccumulator" in messages
    assert re.search(r"recurrent: layer 'bidirectional\w*' \(Bidirectional\) reads the sequence in both directions", messages)
    assert_matches_reference(store.to_numpy(), model, x)


def test_auto_takes_the_loop_alone_on_a_small_problem(tmp_path, monkeypatch) -> None:
    """The fast path: the loop's whole run is predicted shorter than a pfor trace could take."""
    from jacengine.planning import method_choice

    monkeypatch.setattr(method_choice, "PFOR_TRACE_FACTOR", 1e6)
    builder, f_in, _ = ZOO["conv1d_causal"]
    model, x = builder(), inputs(f_in)
    store = jacengine.compute(model, x, tmp_path / "j.zarr", method="auto", budget="1GiB", progress=False)
    assert store.spec.method == "reverse-loop"
    assert_matches_reference(store.to_numpy(), model, x)


def test_auto_moves_past_a_pfor_fallback_naming_the_op_and_resumes_with_its_choice(tmp_path, caplog, probed_methods) -> None:
    keras.utils.set_random_seed(1)
    model, x = sorting_model(), inputs(2)
    path = tmp_path / "j.zarr"
    with caplog.at_level(logging.INFO, logger="jacengine"):
        store = jacengine.compute(model, x, path, method="auto", budget="1GiB", progress=False)
    assert store.spec.method in ("forward", "reverse-loop")
    assert probed_methods == ["reverse-loop", "reverse", "forward"]
    reasons = [r.getMessage() for r in caplog.records if "reverse does not work" in r.getMessage()]
    assert len(reasons) == 1 and "ScatterNd" in reasons[0]
    assert_matches_reference(store.to_numpy(), model, x)
    # a rerun with method="auto" takes the store's choice instead of choosing again
    again = jacengine.compute(model, x, path, method="auto", budget="1GiB", progress=False)
    assert again.spec.method == store.spec.method and again.is_complete


def test_explicit_reverse_with_a_pfor_fallback_warns_once_and_is_still_right(tmp_path, caplog) -> None:
    keras.utils.set_random_seed(1)
    model, x = sorting_model(), inputs(2)
    with caplog.at_level(logging.WARNING, logger="jacengine"):
        store = compute_with_blocks(model, x, tmp_path / "j.zarr", chunks_per_block=1, t_chunk=6, batch_chunk=2,
                                    method="reverse")
    warnings = [r.getMessage() for r in caplog.records if "ScatterNd" in r.getMessage()]
    assert len(warnings) == 1 and "while loop" in warnings[0]
    assert_matches_reference(store.to_numpy(), model, x)


def test_unknown_method_is_refused_with_the_choices(tmp_path) -> None:
    builder, f_in, _ = ZOO["conv1d_same"]
    with pytest.raises(jacengine.InputError, match="not one of auto, reverse, reverse-loop, forward, recurrent"):
        jacengine.plan(builder(), inputs(f_in), method="backward")
