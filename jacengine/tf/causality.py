"""Decide whether a model is causal: outputs at step t depend only on inputs at steps <= t.

``causal="auto"`` must never take a non-causal model for causal, because the engine would then
skip blocks of the Jacobian that are not zero and silently store zeros. A numerical probe alone
cannot guarantee that: it perturbs a few input steps at one point x, and a non-causal dependence
may vanish there (a ReLU that is off, a zero weight, a gate that is saturated). So the decision
is the conjunction of two tests:

1. Structure (the guarantee): every layer in the model graph must be on an allow-list of layers
   whose maths is causal by construction (forward RNNs, Conv1D with padding="causal", per-step
   layers such as Dense, attention called with use_causal_mask=True, ...). Any layer we do not
   know, any backwards RNN, any padding="same" convolution, any reshape across time makes the
   model non-causal. Subclassed models without a layer graph are non-causal.
2. A probe (defence in depth): perturbing inputs after step c must leave outputs up to step c
   unchanged, at several c, up to rounding: a batched call computes the copies in one matrix
   product whose kernels may round rows differently (TensorFlow 2.21 on CPU changes the seed
   LSTM's early outputs by 1e-8 when later inputs change), while a real dependence on the
   perturbation (of the inputs' scale) moves them by many orders more. A layer wrongly
   allow-listed is caught here.

An unknown layer costs speed (the full Jacobian is computed), never correctness.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Layers that act on each time step independently (or are the identity at inference).
_PER_STEP = {
    "InputLayer", "Dense", "EinsumDense", "TimeDistributed", "Activation", "ReLU", "LeakyReLU",
    "PReLU", "ELU", "Softmax", "Dropout", "SpatialDropout1D", "GaussianNoise", "GaussianDropout",
    "AlphaDropout", "Identity", "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum",
    "Masking", "Rescaling", "BatchNormalization", "UnitNormalization",
}
_RECURRENT = {"LSTM", "GRU", "SimpleRNN", "RNN"}
_ATTENTION = {"MultiHeadAttention", "Attention", "AdditiveAttention", "GroupedQueryAttention"}


def why_not_causal(model: Any, layers: list[Any]) -> str | None:
    """None when a Keras model's structure (the model and ``layers``, all layers inside it) is
    causal by construction, else the first reason it is not. Layers are known by class name, so
    Keras 3 and tf_keras (Keras 2) models share the allow-list."""
    for layer in [model, *layers]:
        reason = _layer_reason(layer)
        if reason:
            return f"layer {layer.name!r} ({type(layer).__name__}): {reason}"
    return None


def _layer_reason(layer: Any) -> str | None:
    kind = type(layer).__name__
    if any(cls.__name__ == "Model" for cls in type(layer).__mro__):
        if kind in ("Sequential", "Functional"):
            return None  # its layers are judged one by one
        return "a subclassed model has no layer graph to inspect"
    if kind.endswith("Cell"):
        return None  # the wrapping RNN layer is judged instead
    if kind in _PER_STEP:
        if kind in {"BatchNormalization", "UnitNormalization"} and _axes(layer) not in ({-1}, {2}):
            return "normalises across time"
        return None
    if kind == "LayerNormalization":
        return None if _axes(layer) in ({-1}, {2}) else "normalises across time"
    if kind == "Concatenate":
        return None if layer.axis in (-1, 2) else "concatenates along time"
    if kind in _RECURRENT:
        if layer.go_backwards:
            return "runs backwards in time"
        if not layer.return_sequences:
            return "returns only the last step (sequence-to-one)"
        return None
    if kind == "Conv1D":
        if layer.padding != "causal":
            return f"padding={layer.padding!r} sees future steps (use padding='causal')"
        if tuple(layer.strides) != (1,):
            return "strides change the time axis"
        return None
    if kind in _ATTENTION:
        for node in getattr(layer, "_inbound_nodes", []):
            arguments = getattr(node, "arguments", None)  # Keras 3; tf_keras nodes keep call_kwargs
            kwargs = arguments.kwargs if arguments is not None else getattr(node, "call_kwargs", {})
            if not kwargs.get("use_causal_mask", False):
                return "attention without use_causal_mask=True sees every step"
            if kwargs.get("attention_mask") is not None or kwargs.get("mask") is not None:
                return "an explicit attention mask may see future steps"
        return None
    return "not known to be causal"


def _axes(layer: Any) -> set[int]:
    axis = layer.axis
    return set(axis) if isinstance(axis, (list, tuple)) else {axis}


# outputs within this many units of rounding (of the largest output) count as unchanged
ROUNDING_ULPS = 64


def probe_is_causal(model: Any, x: np.ndarray, n_cuts: int = 3, seed: int = 0) -> bool:
    """True when perturbing x[:, c:] leaves y[:, :c] unchanged up to rounding
    (:data:`ROUNDING_ULPS`) for several cut points c.

    The original and all perturbed copies go through the model in one batched call.
    """
    samples, steps = x.shape[:2]
    if steps < 2:
        return True
    rng = np.random.default_rng(seed)
    scale = float(np.std(x)) + 1.0
    cuts = sorted({int(c) for c in np.linspace(1, steps - 1, n_cuts)})
    copies = [x]
    for cut in cuts:
        perturbed = np.array(x, copy=True)
        perturbed[:, cut:] += rng.normal(0.0, scale, size=perturbed[:, cut:].shape).astype(x.dtype)
        copies.append(perturbed)
    outputs = np.asarray(model(np.concatenate(copies), training=False))
    reference = outputs[:samples]
    rounding = ROUNDING_ULPS * np.finfo(outputs.dtype).eps * float(np.max(np.abs(outputs), initial=0.0))
    for i, cut in enumerate(cuts, start=1):
        if not np.allclose(reference[:, :cut], outputs[i * samples : (i + 1) * samples, :cut], rtol=0, atol=rounding):
            return False
    return True
