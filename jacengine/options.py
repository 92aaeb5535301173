""":class:`RunOptions`: every setting of a run, validated once; the only place defaults live.

The Python API (keyword arguments of :func:`jacengine.compute`, :func:`~jacengine.init` and
:func:`~jacengine.plan`), TOML job files (:func:`jacengine.jobs.config.load_config`) and the
command line (whose flags take their defaults and choices from here, and the config file
through click's ``default_map``) all map onto this one class. It is frozen and picklable, so a
block task carries it to dask workers and shards unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from jacengine.errors import InputError, setting
from jacengine.planning.budget import parse_budget
from jacengine.planning.methods import METHOD_CHOICES
from jacengine.planning.selection import Selection, parse_selection_text
from jacengine.planning.spec import LAYOUTS, STORE_DTYPES

CAUSAL_CHOICES = ("auto", True, False)
PRECISIONS = ("model", "float64")  # compute in the model's own dtype, or in a float64 copy of it
EXECUTORS = ("local", "dask")
SELECTIONS = ("t_out", "f_out", "f_in")
MODEL_IDENTITY = ("signature", "model_id")  # how a model is called and identified: recorded in a store for verify


@dataclass(frozen=True)
class RunOptions:
    """The settings of one run.

    Attributes:
        budget: peak memory allowed for the computation, bytes or a string like "2GiB"; it holds
            per process (each dask worker and each shard has the whole budget).
        t_out, f_out, f_in: output steps, output features and input features to keep (int,
            slice or increasing sequence; default all).
        causal: "auto" (detect; never mistakes a non-causal model for causal), True or False.
        method: "auto" (measure each method on probe blocks, take the fastest that works) or a
            method of :data:`jacengine.planning.methods.METHODS`.
        layout: "full": J over every input step, axis ``t_in``; "lag": only lags
            0..max_lag-1 behind each output step, axis ``lag``.
        max_lag: the lag window L of the "lag" layout.
        store_dtype: "float32", "float64" (with float64 computation, for verification) or
            "float16" (half the disk; the largest rounding error is recorded in the store).
        precision: "model" (compute in the model's dtype) or "float64" (a float64 copy of the model).
        trust_model: allow loading models that run their author's code: files with Keras Lambda
            layers, SavedModels (any TensorFlow op), and import paths named by a config file or
            a store (docs/guide.md, "Security").
        signature: for a SavedModel, the signature or function to call (default
            "serving_default", else ``__call__``).
        model_id: for a model without a layer graph (SavedModel object, ``tf.Module``,
            callable), a name for what it computes, checked on resume instead of a hash of its
            traced graph: change it whenever the model changes.
        gpu_memory_limit: cap the GPU memory of the backend (default: memory growth).
        backend: "auto" (the registered backend that recognises the model) or a backend name.
        executor: "local" (this process) or "dask" (dask.distributed tasks).
        scheduler: with "dask", the address of an existing scheduler; default a LocalCluster.
        workers: with "dask" and no scheduler, the LocalCluster's worker processes (default:
            one per core).
        durable: fsync every block before recording it done, so a store survives a power loss
            (see :meth:`jacengine.JacobianStore.write_block`); False is faster on slow disks and
            still safe against a killed process.
    """

    budget: int | str = "2GiB"
    t_out: Selection = None
    f_out: Selection = None
    f_in: Selection = None
    causal: bool | str = "auto"
    method: str = "auto"
    layout: str = "full"
    max_lag: int | None = None
    store_dtype: str = "float32"
    precision: str = "model"
    trust_model: bool = False
    signature: str | None = None
    model_id: str | None = None
    gpu_memory_limit: int | str | None = None
    backend: str = "auto"
    executor: str = "local"
    scheduler: str | None = None
    workers: int | None = None
    durable: bool = True

    def __post_init__(self) -> None:
        parse_budget(self.budget)
        if self.gpu_memory_limit is not None:
            parse_budget(self.gpu_memory_limit)
        for name in SELECTIONS:  # lists to tuples: frozen means hashable and safe to share
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        for name, allowed in (("causal", CAUSAL_CHOICES), ("method", METHOD_CHOICES), ("layout", LAYOUTS),
                              ("store_dtype", STORE_DTYPES), ("precision", PRECISIONS), ("executor", EXECUTORS)):
            value = getattr(self, name)
            if not any(value is choice or (isinstance(choice, str) and value == choice) for choice in allowed):
                raise InputError(f"{setting(name, value)} is not one of {', '.join(map(str, allowed))}.")
        for name in MODEL_IDENTITY:
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise InputError(f"{setting(name)} must be a non-empty string, got {value!r}.")
        for name in ("max_lag", "workers"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise InputError(f"{setting(name)} must be a positive integer, got {value!r}.")
        if self.executor == "local" and (self.scheduler or self.workers):
            raise InputError("scheduler and workers apply to the dask executor; pass executor='dask' (--executor dask).")

    @property
    def budget_bytes(self) -> int:
        return parse_budget(self.budget)

    def replace(self, **changes: Any) -> RunOptions:
        return dataclasses.replace(self, **changes)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def default(cls, name: str) -> Any:
        return next(f.default for f in fields(cls) if f.name == name)

    @classmethod
    def from_mapping(cls, settings: Mapping[str, Any]) -> RunOptions:
        """Options from text or TOML values (a config file, the command line): selections as
        '10', '0:50' or '1,5,9', causal as 'auto', 'true' or 'false'; unknown names refused."""
        _refuse_unknown(settings, "setting")
        values = dict(settings)
        for name in SELECTIONS:
            if isinstance(values.get(name), str):
                values[name] = parse_selection_text(values[name])
        causal = values.get("causal")
        if isinstance(causal, str):
            if causal.lower() not in ("auto", "true", "false"):
                raise InputError(f"{setting('causal')} must be auto, true or false, not {causal!r}.")
            values["causal"] = {"auto": "auto", "true": True, "false": False}[causal.lower()]
        return cls(**values)


def options_from(options: RunOptions | None, settings: Mapping[str, Any]) -> RunOptions:
    """``options`` (default: all defaults) with keyword ``settings`` applied on top."""
    base = options if options is not None else RunOptions()
    _refuse_unknown(settings, "option")
    return base.replace(**settings) if settings else base


def _refuse_unknown(settings: Mapping[str, Any], what: str) -> None:
    unknown = sorted(set(settings) - set(RunOptions.names()))
    if unknown:
        raise InputError(f"unknown {what}(s) {', '.join(unknown)}; known: {', '.join(RunOptions.names())}.")
