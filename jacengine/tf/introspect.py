"""Build a :class:`JacobianSpec` from a model and its inputs (shapes, causality, dtypes)."""

from __future__ import annotations

import gc

import numpy as np

from jacengine.errors import InputError, ModelError
from jacengine.memory import release_free_heap
from jacengine.options import RunOptions
from jacengine.planning.selection import normalise_selection
from jacengine.planning.spec import JacobianSpec
from jacengine.storage.inputs import Inputs
from jacengine.tf.adapters import TFModel
from jacengine.tf.causality import probe_is_causal
from jacengine.tf.recurrent.structure import connected_by_construction

PROBE_SAMPLES = 2
PROBE_STEPS = 12  # eager Keras RNNs cost about 10 ms per step and call; structure shows on short inputs


def build_spec(model: TFModel, inputs: Inputs, options: RunOptions) -> tuple[JacobianSpec, str]:
    """The spec of J for ``model`` at ``inputs`` with the selections, layout, method and store
    dtype of ``options``, and a one-line explanation of the causality decision."""
    batch, steps, features = inputs.shape
    _check_input_shape(model, steps, features)
    probe = inputs.read(0, min(batch, PROBE_SAMPLES)).astype(model.dtype.as_numpy_dtype)
    # Structural questions are answered on a short prefix when the model accepts one: eager
    # passes (and a persistent tape) over thousands of steps are slow and hold memory the budget
    # needs. The output shape is read symbolically for the full length.
    short = probe[:, :PROBE_STEPS] if model.accepts_any_length else probe
    sequence_to_one, output_steps, output_features = _output_layout(model.output_shape((1, steps, features), short[:1]))
    decided, reason = _decide_causal(model, short, options.causal, sequence_to_one, output_steps == steps)
    spec = JacobianSpec(
        batch=batch, input_steps=steps, input_features=features, output_steps=output_steps,
        output_features=output_features, t_out=normalise_selection(options.t_out, output_steps, "t_out"),
        f_out=normalise_selection(options.f_out, output_features, "f_out"),
        f_in=normalise_selection(options.f_in, features, "f_in"), causal=decided, truncatable=model.accepts_any_length,
        sequence_to_one=sequence_to_one, method="reverse" if options.method == "auto" else options.method,
        compute_dtype=model.dtype.name, layout=options.layout, max_lag=options.max_lag, store_dtype=options.store_dtype)
    if not connected_by_construction(model):  # an eager pass with a persistent tape is slow
        check_connected(model, short[:1], spec)
    gc.collect()
    release_free_heap()
    return spec, reason


def _check_input_shape(model: TFModel, steps: int, features: int) -> None:
    """Refuse inputs whose rank, steps or features the model does not take."""
    expected = model.input_shape
    if len(expected) != 3:
        raise ModelError(f"the {model.kind} takes inputs of shape {expected}; jacengine needs (batch, time, features).")
    if expected[2] is not None and expected[2] != features:
        raise InputError(f"the model expects {expected[2]} input features, the inputs have {features}.")
    if expected[1] is not None and expected[1] != steps:
        raise InputError(f"the model expects sequences of length {expected[1]}, the inputs have {steps}.")


def _output_layout(y_shape: tuple[int, ...]) -> tuple[bool, int, int]:
    """(sequence_to_one, output steps, output features) of an output of shape ``y_shape``."""
    if len(y_shape) == 2:
        return True, 1, y_shape[1]
    if len(y_shape) == 3:
        return False, y_shape[1], y_shape[2]
    raise ModelError(f"the model returns shape {y_shape}; jacengine needs (B, T, F) or (B, F).")


def check_connected(model: TFModel, probe: np.ndarray, spec: JacobianSpec) -> None:
    """Raise when a selected output feature does not depend on the inputs at all.

    TensorFlow's pfor Jacobian silently returns zeros for a disconnected output (and a plain
    gradient returns None with only a warning); storing those zeros would be a silent lie.
    """
    import tensorflow as tf

    x = tf.constant(probe)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y = model(x, training=False)
        sums = {feature: tf.reduce_sum(y[..., feature]) for feature in spec.f_out}
    for feature, total in sums.items():
        if tape.gradient(total, x) is None:
            raise ModelError(
                f"output feature {feature} is not connected to the inputs (TensorFlow returns no "
                "gradient: a stop_gradient, a constant or an unused branch); its Jacobian would be "
                "all zeros. Select connected outputs with f_out, or fix the model."
            )
    del tape


def _decide_causal(
    model: TFModel, probe: np.ndarray, causal: bool | str, sequence_to_one: bool, aligned: bool
) -> tuple[bool, str]:
    if causal not in ("auto", True, False):
        raise InputError(f"causal (--causal) must be 'auto', True or False, got {causal!r}.")
    if causal is False:
        return False, "non-causal (as requested): every input step is differentiated"
    if sequence_to_one or not aligned:
        if causal is True:
            raise ModelError("causal=True (--causal true) needs one output step per input step; this model has no such "
                             "alignment. Leave causal at 'auto' (the default).")
        return False, "non-causal: the output time axis does not align with the input's"
    probe_ok = probe_is_causal(model, probe)
    if causal is True:
        if not probe_ok:
            raise ModelError(
                "causal=True (--causal true), but perturbing later inputs changed earlier outputs: the model is "
                "not causal. Use causal='auto' or causal=False (--causal auto or false)."
            )
        return True, "causal (as requested; a probe found no dependence on future inputs)"
    structural = model.why_not_causal()
    if structural is not None:
        return False, f"non-causal: {structural}"
    if not probe_ok:
        return False, "non-causal: perturbing later inputs changed earlier outputs"
    return True, "causal: every layer is causal by construction, and a probe agrees"
