"""Built-in models: the seed problem's LSTM (used by ``jacengine demo``) and the benchmark zoo."""

from __future__ import annotations

from collections.abc import Callable

import keras


def seed_model(units: int = 32, features_in: int = 1, features_out: int = 1, seed: int = 0) -> keras.Model:
    """Input((None, F_in)) -> LSTM(units, return_sequences=True) -> TimeDistributed(Dense(F_out))."""
    return _sequential(seed, features_in, lambda: [keras.layers.LSTM(units, return_sequences=True)], features_out,
                       time_distributed=True)


def _sequential(seed: int, features_in: int, hidden: Callable[[], list[keras.layers.Layer]], features_out: int,
                time_distributed: bool = False) -> keras.Model:
    """Seeded before any layer exists: layers draw their seeds (and weights) from the global seed."""
    keras.utils.set_random_seed(seed)
    hidden_layers = hidden()
    head = keras.layers.Dense(features_out)
    return keras.Sequential(
        [keras.Input((None, features_in)), *hidden_layers, keras.layers.TimeDistributed(head) if time_distributed else head]
    )


def _gru(units: int) -> list[keras.layers.Layer]:
    return [keras.layers.GRU(units, return_sequences=True)]


def _stacked_lstm(units: int) -> list[keras.layers.Layer]:
    return [keras.layers.LSTM(units, return_sequences=True), keras.layers.LSTM(units, return_sequences=True)]


def _causal_conv1d(units: int) -> list[keras.layers.Layer]:
    return [keras.layers.Conv1D(units, 3, padding="causal", dilation_rate=rate, activation="tanh") for rate in (1, 2, 4, 8)]


def _bidirectional(units: int) -> list[keras.layers.Layer]:
    return [keras.layers.Bidirectional(keras.layers.LSTM(units // 2, return_sequences=True))]


_HIDDEN: dict[str, Callable[[int], list[keras.layers.Layer]]] = {
    "gru": _gru,
    "stacked-lstm": _stacked_lstm,
    "causal-conv1d": _causal_conv1d,
    "bidirectional": _bidirectional,
}
MODEL_KINDS = ("lstm", *_HIDDEN)


def zoo_model(kind: str, units: int = 32, features_in: int = 1, features_out: int = 1, seed: int = 0) -> keras.Model:
    """A sequence-to-sequence model of one of :data:`MODEL_KINDS`; ``"lstm"`` is the seed model."""
    if kind == "lstm":
        return seed_model(units, features_in, features_out, seed)
    if kind not in _HIDDEN:
        raise ValueError(f"unknown model kind {kind!r}; choose one of {', '.join(MODEL_KINDS)}")
    return _sequential(seed, features_in, lambda: _HIDDEN[kind](units), features_out)
