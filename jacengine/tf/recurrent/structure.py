"""Read a Keras model as a recurrent chain (:class:`~jacengine.tf.recurrent.chain.Chain`), or
say why it is not one.

A model qualifies when it is a single path of layers, each either recurrent (LSTM, GRU,
SimpleRNN, or an RNN of any cell with ``call(inputs, states)``), run forwards over the whole
sequence and returning every step, or per-step (Dense, TimeDistributed of a per-step layer,
Activation, LayerNormalization over features, Dropout and the other inference no-ops), with at
least one recurrent layer. The reading is checked against the model's own outputs before any
Jacobian is trusted (:mod:`jacengine.tf.recurrent.computer`), so a layer read wrongly shows as
a refusal, never as a wrong J.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from jacengine.errors import MethodUnsupported
from jacengine.tf.adapters import KerasModel, TFModel
from jacengine.tf.recurrent import stages
from jacengine.tf.recurrent.activations import closed_form
from jacengine.tf.recurrent.chain import Chain

METHOD = "recurrent"
# layers that compute nothing at inference
NO_OPS = {"Dropout", "SpatialDropout1D", "GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization"}
RECURRENT = {"LSTM", "GRU", "SimpleRNN", "RNN"}
CELLS = {"LSTMCell": "LSTM", "GRUCell": "GRU", "SimpleRNNCell": "SimpleRNN"}  # the layer each Keras cell makes


def read_chain(model: TFModel) -> Chain:
    """The chain ``model`` computes; raises :class:`MethodUnsupported` naming the first layer
    that keeps it from being one."""
    if not isinstance(model, KerasModel):
        raise MethodUnsupported(METHOD, f"a {model.kind} has no layers to read step by step")
    keras_model = model.model
    if len(keras_model.inputs) != 1 or len(keras_model.outputs) != 1:
        raise MethodUnsupported(METHOD, "the model has several inputs or outputs")
    dtype = np.dtype(model.dtype.as_numpy_dtype)
    layers = [layer for layer in keras_model.layers if type(layer).__name__ != "InputLayer"]
    _check_single_path(keras_model, layers)
    features = model.input_shape[2]
    if features is None:
        raise MethodUnsupported(METHOD, "the model's input features are not fixed")
    width = int(features)
    read: list[stages.Stage] = []
    for layer in layers:
        stage = _stage(layer, width, dtype)
        read.append(stage)
        width = stage.output_size
    if not any(stage.recurrent for stage in read):
        raise MethodUnsupported(METHOD, "the model has no recurrent layer")
    return Chain(read, int(features), dtype)


def why_not_chain(model: TFModel) -> str | None:
    """None when ``model`` reads as a recurrent chain, else why not (naming the first layer)."""
    try:
        read_chain(model)
    except MethodUnsupported as why:
        return why.reason
    return None


def connected_by_construction(model: TFModel) -> bool:
    """Whether every output of ``model`` depends on its inputs by construction: a chain whose
    layers all have closed forms here (matmuls and smooth or piecewise activations, no
    ``stop_gradient`` a custom layer might hold)."""
    try:
        chain = read_chain(model)
    except MethodUnsupported:
        return False
    return not any(isinstance(stage, stages.AutodiffStage) for stage in chain.stages)


def describe(chain: Chain) -> str:
    """The chain's layers in one phrase, e.g. ``LSTM(32) -> Dense(1)``."""
    return " -> ".join(f"{type(stage).__name__}({stage.output_size})" for stage in chain.stages)


def _check_single_path(keras_model: Any, layers: list[Any]) -> None:
    """A functional model must feed each layer the previous layer's output (a Sequential does)."""
    if type(keras_model).__name__ == "Sequential":
        return
    previous = keras_model.inputs[0]
    for layer in layers:
        try:
            fed = layer.input
        except (AttributeError, ValueError) as exc:  # a layer used more than once has no single input
            raise MethodUnsupported(METHOD, f"layer {layer.name!r} is not on a single path of layers") from exc
        if fed is not previous:
            raise MethodUnsupported(METHOD, f"layer {layer.name!r} does not read the previous layer's output alone")
        previous = layer.output
    if previous is not keras_model.outputs[0]:
        raise MethodUnsupported(METHOD, "the model's output is not its last layer's")


def _refuse(layer: Any, why: str) -> MethodUnsupported:
    return MethodUnsupported(METHOD, f"layer {layer.name!r} ({type(layer).__name__}) {why}")


def _numpy(variable: Any, dtype: np.dtype) -> np.ndarray:
    return np.asarray(variable.numpy() if hasattr(variable, "numpy") else variable, dtype=dtype)


def _optional(layer: Any, name: str, dtype: np.dtype) -> np.ndarray | None:
    value = getattr(layer, name, None)
    return None if value is None else _numpy(value, dtype)


def _stage(layer: Any, width: int, dtype: np.dtype) -> stages.Stage:
    kind = type(layer).__name__
    if kind in RECURRENT:
        return _recurrent_stage(layer, width, dtype)
    if kind == "TimeDistributed":
        inner = layer.layer
        if type(inner).__name__ in RECURRENT:
            raise _refuse(layer, "wraps a recurrent layer")
        return _per_step_stage(inner, width, dtype, name=layer.name)
    return _per_step_stage(layer, width, dtype, name=layer.name)


def _per_step_stage(layer: Any, width: int, dtype: np.dtype, name: str) -> stages.Stage:
    kind = type(layer).__name__
    if kind in NO_OPS:
        return stages.Identity(name, width)
    if kind == "Activation":
        activation = closed_form(layer.activation)
        if activation is not None:
            return stages.Elementwise(name, width, activation=activation)
        return _autodiff_layer(layer, width, dtype, name)
    if kind == "Dense":
        activation = closed_form(layer.activation)
        if activation is None or getattr(layer, "quantization_mode", None) is not None:
            return _autodiff_layer(layer, width, dtype, name)
        return stages.Dense(name, int(layer.units), kernel=_numpy(layer.kernel, dtype),
                            bias=_optional(layer, "bias", dtype), activation=activation)
    if kind == "LayerNormalization":
        axes = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
        if sorted(a % 3 for a in axes) != [2]:
            raise _refuse(layer, "normalises over more than the feature axis")
        if getattr(layer, "rms_scaling", False):
            return _autodiff_layer(layer, width, dtype, name)
        return stages.LayerNorm(name, width, epsilon=float(layer.epsilon), gamma=_optional(layer, "gamma", dtype),
                                beta=_optional(layer, "beta", dtype))
    if kind == "Bidirectional":
        raise _refuse(layer, "reads the sequence in both directions")
    if kind == "Masking":
        raise _refuse(layer, "masks steps")
    raise _refuse(layer, "is not a recurrent or per-step layer that jacengine reads step by step")


def _recurrent_stage(layer: Any, width: int, dtype: np.dtype) -> stages.Stage:
    for flag, why in (("go_backwards", "runs backwards in time (go_backwards=True)"),
                      ("stateful", "is stateful"),
                      ("return_state", "returns its states"),
                      ("time_major", "is time-major")):
        if getattr(layer, flag, False):
            raise _refuse(layer, why)
    if not layer.return_sequences:
        raise _refuse(layer, "returns only its last step (return_sequences=False)")
    cell, kind = layer.cell, type(layer).__name__
    if kind == "RNN":  # RNN(LSTMCell(...)) computes what LSTM(...) does
        kind = CELLS.get(type(cell).__name__, kind)
    units = int(getattr(cell, "units", 0))
    activation = closed_form(getattr(cell, "activation", None))
    gate = closed_form(getattr(cell, "recurrent_activation", None))
    weights = dict(kernel=_numpy(cell.kernel, dtype), recurrent_kernel=_numpy(cell.recurrent_kernel, dtype)) \
        if kind != "RNN" else {}
    if kind == "SimpleRNN" and activation is not None:
        return stages.SimpleRNN(layer.name, units, state_size=units, bias=_optional(cell, "bias", dtype),
                                activation=activation, **weights)
    if kind == "LSTM" and activation is not None and gate is not None:
        return stages.LSTM(layer.name, units, state_size=2 * units, bias=_optional(cell, "bias", dtype),
                           activation=activation, recurrent_activation=gate, **weights)
    if kind == "GRU" and activation is not None and gate is not None:
        bias = _optional(cell, "bias", dtype)
        reset_after = bool(cell.reset_after)
        input_bias, recurrent_bias = (bias[0], bias[1]) if reset_after and bias is not None else (bias, None)
        return stages.GRU(layer.name, units, state_size=units, input_bias=input_bias, recurrent_bias=recurrent_bias,
                          reset_after=reset_after, activation=activation, recurrent_activation=gate, **weights)
    return _autodiff_cell(layer, width, dtype)


def _autodiff_layer(layer: Any, width: int, dtype: np.dtype, name: str) -> stages.Stage:
    """A per-step layer TensorFlow differentiates: called on (N, 1, width), one step per pair."""
    def function(u: Any, state: Any) -> tuple[Any, None]:
        return layer(tf.expand_dims(u, 1), training=False)[:, 0, :], None

    size = int(function(tf.zeros((1, width), dtype=dtype), None)[0].shape[-1])
    return stages.AutodiffStage(name, size, function=function, dtype=dtype)


def _autodiff_cell(layer: Any, width: int, dtype: np.dtype) -> stages.Stage:
    """A cell TensorFlow differentiates. Its output joins its state (first, and read by no one)
    so that the layer's output at step s is part of z_s, whatever the cell returns."""
    cell = layer.cell
    sizes = [int(size) for size in (cell.state_size if isinstance(cell.state_size, (list, tuple)) else [cell.state_size])]
    if not hasattr(cell, "call"):
        raise _refuse(layer, "has a cell without call(inputs, states)")

    def call(u: Any, states: list[Any]) -> tuple[Any, list[Any]]:
        output, new_states = cell(u, states, training=False)
        return output, list(new_states) if isinstance(new_states, (list, tuple)) else [new_states]

    zeros = [tf.zeros((1, size), dtype=dtype) for size in sizes]
    output_size = int(call(tf.zeros((1, width), dtype=dtype), zeros)[0].shape[-1])

    def function(u: Any, state: Any) -> tuple[Any, Any]:
        bounds = np.cumsum([output_size, *sizes])
        states = [state[:, a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        output, new_states = call(u, states)
        return output, tf.concat([output, *new_states], axis=-1)

    return stages.AutodiffStage(layer.name, output_size, state_size=output_size + sum(sizes), function=function,
                                dtype=dtype)
