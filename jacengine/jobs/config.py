"""Job configuration files (TOML): everything a run needs, so a job script is one line.

    model = "model.keras"          # paths are relative to the config file (or "package.module:name")
    inputs = "inputs.npy"
    store = "jacobian.zarr"
    budget = "4GiB"                # per process (each dask worker, each shard)
    t_out = "0:500"                # selections as on the command line: 10, "0:50", [1, 5, 9]
    executor = "dask"              # "local" (default) or "dask"
    workers = 4                    # dask LocalCluster size (default: one per core)
    # cluster = "slurm"                  # start a dask-jobqueue SLURMCluster from [jobqueue]

    [reduce]                       # what the final job of `jacengine script` runs
    ops = ["saliency", "lag-profile"]

    [job]                          # `jacengine script slurm|pbs`
    shards = 8
    time = "02:00:00"
    cpus = 4
    memory = "16G"
    partition = "gpu"              # optional: partition/queue, account, extra directives
    setup = ["module load python/3.11", "source ~/venvs/jacengine/bin/activate"]

    [jobqueue]                     # dask-jobqueue (cluster = "slurm"): SLURMCluster/PBSCluster
                                   # keyword arguments, plus jobs = how many jobs to start
    cores = 4
    memory = "16GiB"
    walltime = "02:00:00"
    jobs = 4

Command-line flags override the file. Unknown keys are refused (a typo must not be ignored), and
so are ``trust_model`` and ``scheduler``: a config file is often shared, so what lets a model file
run code, or sends the work to another machine, comes only from the command line or the API.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jacengine.backends import is_import_path
from jacengine.errors import BudgetError, InputError
from jacengine.options import RunOptions

_PATH_KEYS = ("model", "inputs", "store")
_SECTIONS = ("reduce", "job", "jobqueue")
REDUCE_KEYS = {"ops", "window", "k", "fraction"}
JOB_KEYS = {"shards", "time", "cpus", "memory", "partition", "account", "gpus", "setup", "directives", "requeue_signal_s"}
CLUSTER_KINDS = ("slurm", "pbs")
# settings a shared file must not be able to set, and why
COMMAND_LINE_ONLY = {
    "trust_model": "it lets model files run code when loaded",
    "scheduler": "it sends the model, the inputs and the work to another machine",
}


@dataclass(frozen=True)
class Config:
    """A parsed config file: the files, the run settings it sets (checked by
    :class:`~jacengine.options.RunOptions`, defaults left to it) and its sections."""

    model: str | None = None
    inputs: str | None = None
    store: str | None = None
    cluster: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)  # RunOptions fields, as written in the file
    reduce: dict[str, Any] = field(default_factory=dict)
    job: dict[str, Any] = field(default_factory=dict)
    jobqueue: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def options(self) -> RunOptions:
        return RunOptions.from_mapping(self.settings)


def load_config(path: str | Path) -> Config:
    """Read and check a TOML config file; relative paths are taken from the file's folder."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"config file {path} does not exist.") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"config file {path} is not valid TOML: {exc}") from None
    for key in COMMAND_LINE_ONLY:
        if key in raw:
            raise InputError(f"config file {path} sets {key}, which jacengine takes only from the command line or the "
                             f"Python API ({COMMAND_LINE_ONLY[key]}): a config file is often shared. Remove it from the file "
                             f"and pass --{key.replace('_', '-')} where you trust it.")
    known = {*_PATH_KEYS, "cluster", *(set(RunOptions.names()) - set(COMMAND_LINE_ONLY))}
    unknown = sorted(set(raw) - known - set(_SECTIONS))
    if unknown:
        raise InputError(f"config file {path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}, "
                         f"and the sections [{'], ['.join(_SECTIONS)}].")
    sections = {name: raw.pop(name, {}) for name in _SECTIONS}
    for name, allowed in (("reduce", REDUCE_KEYS), ("job", JOB_KEYS)):
        extra = sorted(set(sections[name]) - allowed)
        if extra:
            raise InputError(f"config file {path}: unknown key(s) {', '.join(extra)} in [{name}]; "
                             f"known: {', '.join(sorted(allowed))}.")
    files = {key: _relative_to(path, raw.pop(key)) for key in _PATH_KEYS if key in raw}
    cluster = raw.pop("cluster", None)
    if cluster is not None and cluster not in CLUSTER_KINDS:
        raise InputError(f"config file {path}: cluster = {cluster!r} is not one of {', '.join(CLUSTER_KINDS)}.")
    try:
        RunOptions.from_mapping(raw)  # refuse bad values now, not when a job starts
    except (InputError, BudgetError) as exc:
        raise InputError(f"config file {path}: {exc}") from None
    return Config(model=files.get("model"), inputs=files.get("inputs"), store=files.get("store"), cluster=cluster,
                  settings=raw, reduce=sections["reduce"], job=sections["job"], jobqueue=sections["jobqueue"],
                  path=path.resolve())


def _relative_to(config: Path, value: str) -> str:
    """``value`` as an absolute path, relative paths taken from the config file's folder; an
    import path 'package.module:name' (a model defined in code) stays as it is."""
    if Path(value).is_absolute() or (is_import_path(value) and not (config.parent / value).exists()):
        return value
    return str((config.parent / value).resolve())
