"""Equivalence-checked rewrites that make a model cheaper to differentiate.

``TimeDistributed(Dense)`` maps the Dense over the time axis with a reshape that pfor vectorises
badly (several times the memory of the same maths) and that Keras computes wrongly inside
``tf.function`` when the time axis is dynamic. ``Dense`` applied to the 3-D tensor is the same
function, so we call the wrapped Dense layer directly (same weights, shared, not copied). The
rewritten model is used only if it reproduces the original's outputs on a probe.
"""

from __future__ import annotations

import logging

import keras
import numpy as np

log = logging.getLogger("jacengine")


def _is_time_distributed_dense(layer: keras.layers.Layer) -> bool:
    return isinstance(layer, keras.layers.TimeDistributed) and isinstance(layer.layer, keras.layers.Dense)


def _unwrap(layer: keras.layers.Layer) -> keras.layers.Layer:
    return layer.layer if _is_time_distributed_dense(layer) else layer


def _call(layer: keras.layers.Layer, *args: object, **kwargs: object) -> object:
    if isinstance(layer, keras.layers.Dense):
        kwargs.pop("mask", None)  # TimeDistributed accepted a mask; Dense does not
    return layer(*args, **kwargs)


def without_time_distributed_dense(model: keras.Model, probe: np.ndarray) -> keras.Model:
    """``model`` with every TimeDistributed(Dense) replaced by its Dense, if provably equal on
    ``probe``; otherwise ``model`` unchanged."""
    if not any(_is_time_distributed_dense(layer) for layer in model.layers):
        return model
    try:
        # Sequential models list their layers and take no call_function; functional ones need it
        call = {} if isinstance(model, keras.Sequential) else {"call_function": _call}
        rewritten = keras.models.clone_model(model, clone_function=_unwrap, **call)
    except Exception as exc:  # an exotic graph: keep the original, it is still correct
        log.info("kept TimeDistributed layers (rewrite failed: %s)", exc)
        return model
    expected = np.asarray(model(probe, training=False))
    actual = np.asarray(rewritten(probe, training=False))
    tolerance = 1e-6 * max(1.0, float(np.max(np.abs(expected))))
    if expected.shape != actual.shape or np.max(np.abs(expected - actual)) > tolerance:
        log.info("kept TimeDistributed layers (the rewrite changed the outputs)")
        return model
    return rewritten
