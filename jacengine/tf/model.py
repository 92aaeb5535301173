"""Keras models (Keras 3 and tf_keras, i.e. Keras 2): load, vet, hash, copy in float64.

Both Kerases are handled by the same code: they share the model API that is used here
(``inputs``, ``layers``, ``get_config``, ``weights``); :func:`keras_api` says which module a
model comes from where a class or function of that module is needed.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import keras
import numpy as np

from jacengine.errors import ModelError


def keras_api(model: Any) -> ModuleType | None:
    """``keras`` for a Keras 3 model, ``tf_keras`` for a Keras 2 one, None for anything else.
    tf_keras is never imported here: a tf_keras model means the user imported it already."""
    if isinstance(model, keras.Model):
        return keras
    tf_keras = sys.modules.get("tf_keras")
    if tf_keras is not None and isinstance(model, tf_keras.Model):
        return tf_keras
    return None


def _is_layer(value: Any) -> bool:
    return any(isinstance(value, api.layers.Layer) for api in (keras, sys.modules.get("tf_keras")) if api is not None)


def load_keras_file(path: Path, *, trust_model: bool = False) -> keras.Model:
    """A Keras 3 model from a ``.keras`` file, loaded in Keras safe mode: a model that carries
    Python code (Lambda layers) runs arbitrary code when loaded, so it is refused unless
    ``trust_model=True``."""
    try:
        return keras.saving.load_model(str(path), safe_mode=not trust_model, compile=False)
    except ValueError as exc:
        if "safe_mode" in str(exc) or "lambda" in str(exc).lower():
            raise ModelError(
                f"{path} contains Python code (e.g. a Lambda layer), which runs arbitrary code when "
                "loaded. If you trust its author, pass trust_model=True (--trust-model)."
            ) from exc
        raise ModelError(f"cannot load {path}: {exc}") from exc


def iter_layers(model: Any) -> list[Any]:
    """Every layer inside ``model``, nested models and wrappers included."""
    found = []
    stack = list(getattr(model, "layers", []))
    while stack:
        layer = stack.pop()
        found.append(layer)
        stack.extend(getattr(layer, "layers", []))
        for attribute in ("layer", "forward_layer", "backward_layer", "cell"):
            inner = getattr(layer, attribute, None)
            if _is_layer(inner):
                stack.append(inner)
    return found


def check_model(model: Any, layers: list[Any]) -> None:
    """Refuse Keras models whose structure cannot be differentiated block by block (``layers``:
    all of them); the input dtype is :meth:`jacengine.tf.adapters.TFModel.check`'s."""
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ModelError(
            f"the model has {len(model.inputs)} inputs and {len(model.outputs)} outputs; jacengine "
            "needs exactly one of each (wrap the model to select them)."
        )
    stateful = [layer.name for layer in layers if getattr(layer, "stateful", False)]
    if stateful:
        raise ModelError(
            f"stateful recurrent layers {stateful} carry state between calls, so blocks would "
            "depend on the order they run in. Rebuild the model with stateful=False (weights "
            "transfer with set_weights)."
        )


def model_hash(model: Any) -> str:
    """SHA-256 over the model's architecture (config) and every weight's bytes, in order.

    Weights are identified by position, not by ``weight.path``: Keras names them differently
    once a model is saved and loaded again (``sequential/lstm/...`` becomes ``lstm/...``), and
    a model handed to dask workers as a file must hash like the model it was saved from.
    """
    digest = hashlib.sha256()
    config = model.get_config()
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    for position, weight in enumerate(model.weights):
        value = np.ascontiguousarray(weight.numpy())
        digest.update(f"{position}|{value.dtype.str}|{value.shape}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def float64_copy(model: Any) -> Any:
    """The same architecture and weights computing in float64 (Sequential/functional models)."""
    try:
        copy = model.__class__.from_config(_to_float64(model.get_config()))
    except (NotImplementedError, TypeError, ValueError) as exc:
        raise ModelError(f"cannot rebuild {type(model).__name__} in float64 from its config ({exc}); "
                         "float64 needs a Sequential or functional model.") from exc
    copy.set_weights([np.asarray(w, dtype="float64") for w in model.get_weights()])
    return copy


def _to_float64(config: Any) -> Any:
    if isinstance(config, dict):
        if config.get("class_name") in ("DTypePolicy", "Policy"):  # Keras 3, tf_keras
            return {**config, "config": {**config["config"], "name": "float64"}}
        return {k: ("float64" if k == "dtype" and v in ("float32", "float16", "bfloat16") else _to_float64(v))
                for k, v in config.items()}
    if isinstance(config, list):
        return [_to_float64(v) for v in config]
    return config
