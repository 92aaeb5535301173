"""Backends by name, imported only when used, each with an install hint.

``get_backend("tensorflow")`` imports :mod:`jacengine.tf`; ``backend_for(model)`` asks each
registered backend whether it recognises the model. A new framework registers here (or, from
outside the package, with :func:`register_backend`).
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jacengine.backends.base import Backend
from jacengine.errors import InputError, ModelError


@dataclass(frozen=True)
class BackendEntry:
    target: str  # "module:attribute" of a Backend instance
    install_hint: str


_REGISTRY: dict[str, BackendEntry] = {
    "tensorflow": BackendEntry("jacengine.tf.backend:BACKEND", "pip install 'jacengine' (TensorFlow and Keras 3)"),
}
_LOADED: dict[str, Backend] = {}
_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def is_import_path(value: Any) -> bool:
    """A model named as 'package.module:name' (a string that is not an existing path): the
    form the command line, config files and worker processes use for models defined in code."""
    return isinstance(value, str) and bool(_IMPORT_PATH.match(value)) and not Path(value).exists()


def runs_code_when_loaded(model: Any) -> bool:
    """Whether loading ``model`` (a string or path) runs what its author wrote: an import path
    imports a module, and a SavedModel's graph may hold any TensorFlow op (file writes
    included). Such a model named by a config file or a store loads only with ``trust_model``
    (docs/guide.md, "Security")."""
    if is_import_path(model):
        return True
    return isinstance(model, (str, Path)) and (Path(model) / "saved_model.pb").is_file()


def untrusted_model_message(model: Any, named_by: str) -> str:
    """Why a model that :func:`runs_code_when_loaded`, named by ``named_by`` (e.g. "the config
    file c.toml"), is not loaded, and what to do."""
    kind = ("an import path, which imports and runs a module" if is_import_path(model) else
            "a SavedModel, whose graph may run any TensorFlow op (file reads and writes included)")
    return (f"{named_by} names the model {str(model)!r}, {kind}; jacengine loads it only when you trust its author: "
            "pass trust_model=True (--trust-model), or name the model yourself.")


def register_backend(name: str, target: str, install_hint: str = "") -> None:
    """Register a backend: ``target`` is "module:attribute" of an object implementing :class:`Backend`."""
    _REGISTRY[name] = BackendEntry(target, install_hint)
    _LOADED.pop(name, None)


def backend_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get_backend(name: str) -> Backend:
    """The backend registered as ``name``, imported on first use."""
    if name not in _REGISTRY:
        raise InputError(f"backend {name!r} is not one of {', '.join(_REGISTRY)}.")
    if name not in _LOADED:
        entry = _REGISTRY[name]
        module_name, attribute = entry.target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ModelError(f"the {name} backend cannot be imported ({exc}); install it: {entry.install_hint}") from exc
        _LOADED[name] = getattr(module, attribute)
    return _LOADED[name]


def backend_for(model: Any, name: str = "auto") -> Backend:
    """The backend named ``name``, or with "auto" the first registered one that recognises
    ``model``; TensorFlow when none does (its loader then says what it accepts)."""
    if name != "auto":
        return get_backend(name)
    for candidate in _REGISTRY:
        if candidate != "tensorflow" and get_backend(candidate).recognises(model):
            return get_backend(candidate)
    return get_backend("tensorflow")
