"""Equivalence-checked rewrites that make a model cheaper to differentiate.

``TimeDistributed(Dense)`` maps the Dense over the time axis with a reshape that pfor vectorises
badly (several times the memory of the same maths) and that Keras computes wrongly inside
``tf.function`` when the time axis is dynamic. ``Dense`` applied to the 3-D tensor is the same
function, so we call the wrapped Dense layer directly (same weights, shared, not copied). The
rewritten model is used only if it reproduces the original's outputs on a probe.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from jacengine.tf.model import keras_api

log = logging.getLogger("jacengine")


def _is_time_distributed_dense(layer: Any) -> bool:
    return type(layer).__name__ == "TimeDistributed" and type(getattr(layer, "layer", None)).__name__ == "Dense"


def _unwrap(layer: Any) -> Any:
    return layer.layer if _is_time_distributed_dense(layer) else layer


def _call(layer: Any, *args: object, **kwargs: object) -> object:
    if type(layer).__name__ == "Dense":
        kwargs.pop("mask", None)  # TimeDistributed accepted a mask; Dense does not
    return layer(*args, **kwargs)


def without_time_distributed_dense(model: Any, probe: np.ndarray) -> Any:
    """``model`` (Keras 3 or tf_keras) with every TimeDistributed(Dense) replaced by its Dense,
    if provably equal on ``probe``; otherwise ``model`` unchanged."""
    api = keras_api(model)
    if api is None or not any(_is_time_distributed_dense(layer) for layer in model.layers):
        return model
    try:
        # Sequential models list their layers and take no call_function; Keras 3 functional
        # ones need it (tf_keras' clone_model has none: its functional clones call layers plainly)
        call = {} if isinstance(model, api.Sequential) or api.__name__ != "keras" else {"call_function": _call}
        rewritten = api.models.clone_model(model, clone_function=_unwrap, **call)
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
