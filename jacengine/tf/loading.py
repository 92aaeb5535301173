"""Turn whatever the user passes as ``model=`` into a :class:`~jacengine.tf.adapters.TFModel`.

Accepted, as objects: Keras 3 and tf_keras models, ``tf.Module``s, loaded SavedModels, and any
callable mapping a (B, T, F_in) tensor to (B, T, F_out) or (B, F_out) with TensorFlow ops. As
strings or paths: ``.keras`` files (Keras 3), ``.h5`` files and tf_keras SavedModel directories
(tf_keras, the optional extra ``jacengine[tf-keras]``), other SavedModel directories, and import
paths ``package.module:name`` naming any of the objects above (resolved on ``sys.path`` as it
is: the current directory is not added, so a file there cannot shadow a package; set
``PYTHONPATH=.`` to use a module next to the job).

Files are loaded without running code they carry: Keras safe mode for ``.keras``, and Lambda
layers in ``.h5`` files are refused unless ``trust_model``. A SavedModel directory loads only with
``trust_model``: its graph may hold any TensorFlow op, ``tf.io.write_file`` included, and runs
when the model is called. An import path runs the code of a module, which is the user's own
choice to name; one named by a config file or a store needs ``trust_model`` too (checked where
the name is read: the CLI and :func:`jacengine.verify`).
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import tensorflow as tf

from jacengine.backends import is_import_path
from jacengine.errors import ModelError
from jacengine.tf.adapters import FunctionModel, KerasModel, TFModel
from jacengine.tf.model import keras_api, load_keras_file

KERAS2_SUFFIXES = (".h5", ".hdf5")
ACCEPTED = ("a Keras 3 or tf_keras model, a tf.Module, a callable built from TensorFlow ops, a .keras or .h5 file, "
            "a SavedModel directory, or an import path 'package.module:name'")


def recognises(model: Any) -> bool:
    """Whether ``model`` is of a kind this backend accepts (without loading it)."""
    if isinstance(model, (str, Path)):
        path = Path(model)
        return (path.suffix in (".keras", *KERAS2_SUFFIXES) or (path / "saved_model.pb").is_file()
                or is_import_path(str(model)))
    return isinstance(model, (TFModel, tf.Module)) or keras_api(model) is not None or callable(model)


def load_tf_model(model: Any, *, trust_model: bool = False, signature: str | None = None,
                  model_id: str | None = None) -> TFModel:
    """The model as a :class:`TFModel` (see the module docstring for what is accepted).

    ``signature``: for SavedModels, the signature or attribute to call (default
    "serving_default", else ``__call__``). ``model_id``: for models without a layer graph, the
    identity resumes check instead of a hash of the traced graph.
    """
    if isinstance(model, TFModel):
        return model
    if isinstance(model, str) and is_import_path(model):
        loaded = _adapt(_import(model), reference=model, signature=signature, model_id=model_id)
    elif isinstance(model, (str, Path)):
        loaded = _load_path(Path(model), trust_model=trust_model, signature=signature, model_id=model_id)
    else:
        loaded = _adapt(model, reference=None, signature=signature, model_id=model_id)
    if signature is not None and "SavedModel" not in loaded.kind:
        raise ModelError(f"signature={signature!r} (--signature) names a function of a SavedModel; this model is a "
                         f"{loaded.kind}. Remove the setting.")
    if model_id is not None and isinstance(loaded, KerasModel):
        raise ModelError(f"model_id (--model-id) identifies models without a layer graph; a {loaded.kind} is "
                         "identified by its config and weights. Remove the setting.")
    return loaded


def _adapt(value: Any, *, reference: str | None, signature: str | None, model_id: str | None) -> TFModel:
    """An object (not a path) as a TFModel."""
    if keras_api(value) is not None:
        return KerasModel(value, reference)
    if hasattr(value, "signatures") and not isinstance(value, tf.Module):  # a loaded SavedModel
        return _saved_model_function(value, "loaded SavedModel", reference, signature, model_id)
    if isinstance(value, tf.Module):
        if not callable(value):
            raise ModelError(f"the tf.Module {type(value).__name__} has no __call__; pass the method to differentiate "
                             "(e.g. module.predict) or an import path to it.")
        return FunctionModel(_uncompiled(value.__call__), "tf.Module", reference=reference,
                             signature=_declared_spec(value.__call__), model_id=model_id)
    if callable(value):
        return FunctionModel(_uncompiled(value), "callable", reference=reference, signature=_declared_spec(value),
                             model_id=model_id)
    raise ModelError(f"model must be {ACCEPTED}; got {type(value).__name__}.")


def _load_path(path: Path, *, trust_model: bool, signature: str | None, model_id: str | None) -> TFModel:
    if not path.exists():
        raise ModelError(f"model {path} does not exist (nor is it an import path 'package.module:name').")
    reference = str(path.resolve())
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise ModelError(f"{path} is a directory but not a SavedModel (it has no saved_model.pb). Pass {ACCEPTED}.")
        if not trust_model:
            raise ModelError(f"{path} is a SavedModel: its graph may run any TensorFlow op when called, file reads and "
                             "writes included. If you trust its author, pass trust_model=True (--trust-model).")
        if (path / "keras_metadata.pb").is_file() and importlib.util.find_spec("tf_keras") is not None:
            return KerasModel(_tf_keras().models.load_model(reference, compile=False), reference)
        return _saved_model_function(tf.saved_model.load(reference), "SavedModel", reference, signature, model_id)
    if path.suffix == ".keras":
        return KerasModel(load_keras_file(path, trust_model=trust_model), reference)
    if path.suffix in KERAS2_SUFFIXES:
        tf_keras = _tf_keras()
        import h5py

        with h5py.File(path, "r") as file:
            config = file.attrs.get("model_config", b"")
        _refuse_code(path, config.encode() if isinstance(config, str) else bytes(config), trust_model)
        try:
            return KerasModel(tf_keras.models.load_model(reference, compile=False), reference)
        except (ValueError, OSError) as exc:
            raise ModelError(f"cannot load {path} with tf_keras: {exc}") from exc
    raise ModelError(f"{path} is not a model jacengine can load; pass {ACCEPTED}.")


def _refuse_code(path: Path, config: bytes, trust_model: bool) -> None:
    """Refuse a Keras 2 model file whose config has a Lambda layer (its loader would run the
    layer's marshalled bytecode) unless the user trusts it."""
    if not trust_model and re.search(rb'"class_name":\s*"Lambda"', config):
        raise ModelError(f"{path} contains a Lambda layer, whose Python code runs when the model is loaded. If you "
                         "trust its author, pass trust_model=True (--trust-model).")


def _tf_keras() -> ModuleType:
    try:
        return importlib.import_module("tf_keras")
    except ImportError as exc:
        raise ModelError("this model is a Keras 2 (tf_keras) file; install tf_keras to load it: "
                         "pip install 'jacengine[tf-keras]'.") from exc


def _import(target: str) -> Any:
    """The object an import path 'package.module:name' names, imported from ``sys.path`` as it is."""
    module_name, _, attribute = target.partition(":")
    try:
        value: Any = importlib.import_module(module_name)
    except ImportError as exc:
        top = module_name.partition(".")[0]
        in_cwd = (Path.cwd() / f"{top}.py").is_file() or (Path.cwd() / top).is_dir()
        hint = (f"{top} is in the current directory, which jacengine does not search (a file there could shadow any "
                "package): run with PYTHONPATH=. (dask workers and shards inherit it), or install it." if in_cwd else
                "Install its package, or put its folder on PYTHONPATH.")
        raise ModelError(f"cannot import {module_name!r} for model {target!r}: {exc}. {hint}") from exc
    for part in attribute.split("."):
        if not hasattr(value, part):
            raise ModelError(f"model {target!r}: {module_name} has no attribute {attribute!r}.")
        value = getattr(value, part)
    return value


def _uncompiled(function: Any) -> Any:
    """The Python function behind a ``tf.function`` (converted by AutoGraph, as ``tf.function``
    does: Python loops over tensors become graph loops), else ``function``.

    jacengine compiles the model into its own functions and checks the first call of each
    against an eager call of the same inputs; calling the user's compiled function inside them
    would make that check compare the compiled function with itself. It matters: Keras'
    TimeDistributed, traced with an open time axis (as a ``tf.function`` with an
    ``input_signature`` of (None, None, F) traces it), returns wrong outputs (docs/design.md, "Known
    traps"); jacengine's check catches that and compiles per block shape instead. A loaded
    SavedModel's functions have no Python behind them and are called as they are.
    """
    python_function = getattr(function, "python_function", None)
    if python_function is None or type(function).__name__ == "RestoredFunction":
        return function
    try:
        return tf.autograph.to_graph(python_function)
    except Exception:  # AutoGraph cannot convert it (e.g. no source): the compiled function, unchecked
        return function


def _declared_spec(function: Any) -> tf.TensorSpec | None:
    """The single input TensorSpec a ``tf.function`` declares, else None."""
    specs = getattr(function, "input_signature", None)
    if specs and len(specs) == 1 and isinstance(specs[0], tf.TensorSpec):
        return specs[0]
    return None


def _saved_model_function(loaded: Any, kind: str, reference: str | None, name: str | None,
                          model_id: str | None) -> FunctionModel:
    """The signature or attribute ``name`` of a loaded SavedModel (default: "serving_default",
    else ``__call__``), as a FunctionModel of one input tensor."""
    signatures = dict(loaded.signatures)
    name = name or ("serving_default" if "serving_default" in signatures else "__call__")
    if name in signatures:
        function = signatures[name]
        inputs = function.structured_input_signature[1]
        if len(inputs) != 1 or function.structured_input_signature[0]:
            raise ModelError(f"signature {name!r} of the {kind} takes inputs {sorted(inputs)}; jacengine needs one. "
                             "Name another with signature='...' (--signature).")
        (key, spec), = inputs.items()
        _repair_loop_handle_data([function])
        return FunctionModel(_SignatureCall(loaded, function, key), kind, reference=reference, signature=spec,
                             model_id=model_id)
    attribute = getattr(loaded, name, None)
    if not callable(attribute):
        callables = sorted(a for a in dir(loaded) if not a.startswith("_") and callable(getattr(loaded, a, None)))
        raise ModelError(f"the {kind} has no signature or function {name!r}; it has signatures {sorted(signatures)} "
                         f"and functions {callables}. Name one with signature='...' (--signature).")
    concrete = list(getattr(attribute, "concrete_functions", []))
    _repair_loop_handle_data(concrete)
    specs = [c.structured_input_signature[0] for c in concrete]
    spec = specs[0][0] if len(specs) == 1 and len(specs[0]) == 1 and isinstance(specs[0][0], tf.TensorSpec) else None
    return FunctionModel(attribute, kind, reference=reference, signature=spec, model_id=model_id)


class _SignatureCall:
    """Calls a SavedModel signature with one tensor. Holds the loaded object too: its variables
    live only as long as it does, and the signature alone does not keep it alive."""

    def __init__(self, loaded: Any, signature: Any, input_name: str) -> None:
        self.loaded, self.signature, self.input_name = loaded, signature, input_name

    def __call__(self, x: tf.Tensor) -> Any:
        return self.signature(**{self.input_name: x})


def _repair_loop_handle_data(functions: list[Any]) -> None:
    """Work around a TensorFlow bug that makes loaded RNNs non-differentiable.

    A SavedModel's functions lose the "handle data" (dtype and shape of the value behind a
    resource or variant tensor) on the outputs of ``While`` ops. Differentiating through such a
    loop (every Keras RNN) then fails: "Tried to take gradients (or similar) of a variable
    without handle data", or with pfor "Required handle data not set". A While op passes its
    loop variables through, so each output's handle data is its input's: copy it over, in the
    function's graph and in every function that graph calls.
    """
    from tensorflow.python.ops import handle_data_util  # private: no public API sets handle data

    seen: set[int] = set()
    graphs = [function.graph for function in functions]
    while graphs:
        graph = graphs.pop()
        if id(graph) in seen:
            continue
        seen.add(id(graph))
        for op in graph.get_operations():
            if op.type in ("While", "StatelessWhile"):
                for source, output in zip(op.inputs, op.outputs, strict=False):
                    if output.dtype in (tf.resource, tf.variant):
                        handle_data_util.copy_handle_data(source, output)
        graphs.extend(f.graph for f in getattr(graph, "_functions", {}).values() if hasattr(f, "graph"))
