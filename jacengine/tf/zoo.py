"""Built-in models: the seed problem's LSTM (used by ``jacengine demo`` and the benchmarks)."""

from __future__ import annotations

import keras


def seed_model(units: int = 32, features_in: int = 1, features_out: int = 1, seed: int = 0) -> keras.Model:
    """Input((None, F_in)) -> LSTM(units, return_sequences=True) -> TimeDistributed(Dense(F_out))."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((None, features_in)),
            keras.layers.LSTM(units, return_sequences=True),
            keras.layers.TimeDistributed(keras.layers.Dense(features_out)),
        ]
    )
