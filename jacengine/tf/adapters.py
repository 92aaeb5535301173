"""Every kind of TensorFlow model jacengine accepts, seen through one interface: :class:`TFModel`.

The block computer, the probes and the references only call a model on a (B, T, F_in) tensor;
what differs between kinds is what can be known about a model without running it:

- :class:`KerasModel` (Keras 3 and tf_keras, i.e. Keras 2) exposes its layer graph: causality is
  judged layer by layer against an allow-list, the model can be rebuilt in float64, rewritten
  for speed (TimeDistributed(Dense) -> Dense) and saved for worker processes.
- :class:`FunctionModel` (a SavedModel's signature or function, a ``tf.Module``, any callable
  built from TensorFlow ops) is opaque: it is non-causal unless the user vouches for it (a
  probe still checks), it computes in its own dtype, and workers load it from the SavedModel
  directory or import path it came from.

Loading (from objects, files, directories and import paths) is :mod:`jacengine.tf.loading`.
"""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from jacengine.errors import ModelError
from jacengine.tf import model as keras_models
from jacengine.tf.rewrite import without_time_distributed_dense


class TFModel(abc.ABC):
    """A model as the TensorFlow backend uses it: callable on (B, T, F_in), plus what is known
    about it without running it."""

    kind: str  # for messages: "Keras 3 model", "SavedModel", ...
    reference: str | None  # what worker processes load: a file, a SavedModel directory or an import path

    @abc.abstractmethod
    def __call__(self, x: Any, training: bool = False) -> tf.Tensor:
        """The model's outputs (B, T_out, F_out) or (B, F_out) for inputs x (a tensor or array)."""

    @property
    @abc.abstractmethod
    def dtype(self) -> tf.DType:
        """The dtype J is computed in: the one the model casts its inputs to."""

    @property
    @abc.abstractmethod
    def input_shape(self) -> tuple[int | None, ...]:
        """The declared (batch, time, features) input shape; None where open or unknown."""

    @property
    @abc.abstractmethod
    def accepts_any_length(self) -> bool:
        """Whether the model may be called on a prefix of the sequence (causal blocks then
        run the forward pass over the steps they need only)."""

    def check(self) -> None:
        """Refuse a model that cannot be differentiated block by block, saying why (here: one
        that takes no floating-point inputs; kinds that know more check more)."""
        if not self.dtype.is_floating:
            raise ModelError(f"the {self.kind} takes {self.dtype.name} inputs; a Jacobian needs floating-point inputs.")

    @abc.abstractmethod
    def output_shape(self, input_shape: tuple[int, int, int], probe: np.ndarray) -> tuple[int, ...]:
        """The outputs' shape for inputs of ``input_shape``; ``probe`` is a short input to run on
        when the shape cannot be inferred without running."""

    @abc.abstractmethod
    def layers(self) -> list[Any]:
        """Every layer inside the model (empty when it has no inspectable layer graph)."""

    @abc.abstractmethod
    def why_not_causal(self) -> str | None:
        """None when the model's structure is causal by construction, else why not (or why
        that cannot be known)."""

    @abc.abstractmethod
    def fingerprint(self, input_features: int) -> str:
        """A hash of what the model computes (a changed model is refused on resume)."""

    @abc.abstractmethod
    def save(self, folder: Path) -> str:
        """What worker processes load: ``reference``, or the model written into ``folder``."""

    @abc.abstractmethod
    def float64(self) -> TFModel:
        """The same model computing in float64 (finite differences, ``precision="float64"``)."""

    def for_blocks(self, probe: np.ndarray) -> TFModel:
        """The model the blocks differentiate: this one, or an equivalent that is cheaper
        (checked on ``probe``)."""
        return self


class KerasModel(TFModel):
    """A Keras 3 or tf_keras (Keras 2) model with one input and one output."""

    def __init__(self, model: Any, reference: str | None = None) -> None:
        self.model = model
        self.reference = reference
        self.legacy = not isinstance(model, keras.Model)  # tf_keras
        self.kind = "tf_keras model" if self.legacy else "Keras 3 model"

    def __call__(self, x: Any, training: bool = False) -> tf.Tensor:
        return self.model(x, training=training)

    @property
    def dtype(self) -> tf.DType:
        # Keras casts inputs to the Input layer's dtype, so that is the precision J has with
        # respect to x, whatever the layers compute in (a Sequential's policy may not say either)
        return tf.as_dtype(self.model.inputs[0].dtype)

    @property
    def input_shape(self) -> tuple[int | None, ...]:
        return tuple(self.model.inputs[0].shape)

    @property
    def accepts_any_length(self) -> bool:
        return len(self.input_shape) == 3 and self.input_shape[1] is None

    def check(self) -> None:
        super().check()
        keras_models.check_model(self.model, self.layers())

    def output_shape(self, input_shape: tuple[int, int, int], probe: np.ndarray) -> tuple[int, ...]:
        """Keras 3's shape inference for ``input_shape``, trusted only where it agrees with an
        eager call on ``probe``; else an eager call on zeros of that shape."""
        if not self.legacy:
            try:
                symbolic = tuple(self.model.compute_output_spec(keras.KerasTensor(input_shape)).shape)
                short_symbolic = tuple(self.model.compute_output_spec(keras.KerasTensor(probe.shape)).shape)
            except Exception:  # shape inference is optional for custom layers
                symbolic = short_symbolic = ()
            if symbolic and None not in symbolic and short_symbolic == tuple(np.shape(self(probe))):
                return symbolic
        return tuple(np.shape(self(np.zeros(input_shape, dtype=probe.dtype))))

    def layers(self) -> list[Any]:
        return keras_models.iter_layers(self.model)

    def why_not_causal(self) -> str | None:
        from jacengine.tf.causality import why_not_causal

        return why_not_causal(self.model, self.layers())

    def fingerprint(self, input_features: int) -> str:
        return keras_models.model_hash(self.model)

    def save(self, folder: Path) -> str:
        if self.reference is not None:
            return self.reference
        path = folder / ("model.h5" if self.legacy else "model.keras")
        self.model.save(path)
        return str(path)

    def float64(self) -> KerasModel:
        return KerasModel(keras_models.float64_copy(self.model))

    def for_blocks(self, probe: np.ndarray) -> KerasModel:
        rewritten = without_time_distributed_dense(self.model, probe)
        return self if rewritten is self.model else KerasModel(rewritten, self.reference)


class FunctionModel(TFModel):
    """A model without a layer graph: a callable from (B, T, F_in) tensors to outputs.

    ``signature``: the input spec the callable declares (a SavedModel signature, a
    ``tf.function``'s ``input_signature``), None when it declares none. ``model_id``: the
    user's name for what the model computes, used instead of hashing it.
    """

    def __init__(self, function: Callable[[tf.Tensor], Any], kind: str, *, reference: str | None = None,
                 signature: tf.TensorSpec | None = None, model_id: str | None = None) -> None:
        self.function = function
        self.kind = kind
        self.reference = reference
        self.signature = signature
        self.model_id = model_id

    def __call__(self, x: Any, training: bool = False) -> tf.Tensor:
        y = self.function(tf.convert_to_tensor(x, dtype=self.dtype))
        if isinstance(y, dict):
            y = list(y.values())
        if isinstance(y, (list, tuple)):
            if len(y) != 1:
                raise ModelError(f"the {self.kind} returns {len(y)} outputs; jacengine needs exactly one "
                                 "(wrap it in a function that returns the one to differentiate).")
            y = y[0]
        return y

    @property
    def dtype(self) -> tf.DType:
        return self.signature.dtype if self.signature is not None else tf.float32

    @property
    def input_shape(self) -> tuple[int | None, ...]:
        return tuple(self.signature.shape) if self.signature is not None else (None, None, None)

    @property
    def accepts_any_length(self) -> bool:
        # only a declared open time axis says so: an undeclared callable may need the full length
        return self.signature is not None and len(self.signature.shape) == 3 and self.signature.shape[1] is None

    def output_shape(self, input_shape: tuple[int, int, int], probe: np.ndarray) -> tuple[int, ...]:
        try:
            return tuple(np.shape(self(np.zeros(input_shape, dtype=probe.dtype))))
        except (TypeError, ValueError, tf.errors.InvalidArgumentError) as exc:
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise ModelError(f"calling the {self.kind} on {self.dtype.name} inputs of shape {input_shape} failed "
                             f"({first_line}); jacengine needs a model that maps (B, T, F_in) to (B, T, F_out) or "
                             "(B, F_out).") from exc

    def layers(self) -> list[Any]:
        return []

    def why_not_causal(self) -> str | None:
        return (f"a {self.kind} has no layer graph to inspect (pass causal=True, --causal, to vouch that it is "
                "causal; a probe still checks)")

    def fingerprint(self, input_features: int) -> str:
        """``model_id`` when given; a SavedModel directory's files; else the traced graph (its
        op types and constants, without TensorFlow's generated names) and captured values."""
        if self.model_id is not None:
            return hashlib.sha256(f"model_id:{self.model_id}".encode()).hexdigest()
        if self.reference is not None and Path(self.reference).is_dir():
            return _directory_hash(Path(self.reference))
        spec = self.signature or tf.TensorSpec((None, None, input_features), self.dtype)
        try:
            concrete = tf.function(self.function).get_concrete_function(spec)
        except Exception as exc:
            raise ModelError(
                f"cannot trace the {self.kind} to fingerprint it ({type(exc).__name__}: {exc}); resumes need to know "
                "whether the model changed. Pass model_id='...' (--model-id), a name you change whenever the model does."
            ) from exc
        return _graph_hash(concrete)

    def save(self, folder: Path) -> str:
        if self.reference is None:
            raise ModelError(
                f"a {self.kind} given as a Python object cannot be sent to worker processes (dask, shards). Pass it as an "
                "import path 'package.module:name' or save it with tf.saved_model.save and pass the directory."
            )
        return self.reference

    def float64(self) -> TFModel:
        if self.dtype == tf.float64:
            return self
        raise ModelError(f"a {self.kind} computes in its own dtype ({self.dtype.name}) and cannot be rebuilt in "
                         "float64; precision='float64' (--precision float64) needs a Keras model.")


def _directory_hash(folder: Path) -> str:
    """SHA-256 over every file of a SavedModel directory (graph and variables), by relative path."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "fingerprint.pb"):
        digest.update(f"{path.relative_to(folder).as_posix()}|{path.stat().st_size}|".encode())
        with path.open("rb") as file:
            for chunk in iter(lambda: file.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _graph_hash(concrete: Any) -> str:
    """SHA-256 of a traced function: each graph's op types and constant values in order (the
    names TensorFlow generates differ from trace to trace), the library functions' digests
    sorted, and the values of captured variables and tensors, also as sorted digests: TensorFlow
    lists captures in an order that can differ between processes (so two variables of the same
    shape swapping values would go unnoticed; a changed value never does)."""
    graph_def = concrete.graph.as_graph_def()
    digest = hashlib.sha256(_nodes_digest(graph_def.node))
    for function_digest in sorted(_nodes_digest(function.node_def) for function in graph_def.library.function):
        digest.update(function_digest)
    captured = [value for value in concrete.captured_inputs if value.dtype != tf.resource]  # variables: below
    for value_digest in sorted(_value_digest(value.numpy()) for value in [*captured, *concrete.variables]):
        digest.update(value_digest)
    return digest.hexdigest()


def _value_digest(value: Any) -> bytes:
    array = np.ascontiguousarray(value)
    return hashlib.sha256(f"{array.dtype.str}|{array.shape}|".encode() + array.tobytes()).digest()


def _nodes_digest(nodes: Any) -> bytes:
    digest = hashlib.sha256()
    for node in nodes:
        digest.update(node.op.encode() + b"|")
        if node.op == "Const":
            digest.update(node.attr["value"].tensor.SerializeToString(deterministic=True))
    return digest.digest()
