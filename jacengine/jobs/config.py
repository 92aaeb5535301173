"""Job configuration files (TOML): everything a run needs, so a job script is one line.

    model = "model.keras"          # paths are relative to the config file
    inputs = "inputs.npy"
    store = "jacobian.zarr"
    budget = "4GiB"                # per process (each dask worker, each shard)
    t_out = "0:500"                # selections as on the command line: 10, "0:50", [1, 5, 9]
    executor = "dask"              # "local" (default) or "dask"
    workers = 4                    # dask LocalCluster size (default: one per core)
    # scheduler = "tcp://10.0.0.1:8786"   # an existing dask cluster instead
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

Command-line flags override the file. Unknown keys are refused (a typo must not be ignored).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from jacengine.errors import InputError
from jacengine.planning.selection import Selection, parse_selection_text

_PATH_KEYS = ("model", "inputs", "store")
_SELECTION_KEYS = ("t_out", "f_out", "f_in")
_SECTIONS = ("reduce", "job", "jobqueue")
REDUCE_KEYS = {"ops", "window", "k", "fraction"}
JOB_KEYS = {"shards", "time", "cpus", "memory", "partition", "account", "gpus", "setup", "directives", "requeue_signal_s"}


@dataclass
class Config:
    """A parsed config file; ``None`` means "not set" (the command's default applies)."""

    model: str | None = None
    inputs: str | None = None
    store: str | None = None
    budget: str | int | None = None
    t_out: Selection = None
    f_out: Selection = None
    f_in: Selection = None
    causal: str | bool | None = None
    method: str | None = None
    layout: str | None = None
    max_lag: int | None = None
    store_dtype: str | None = None
    precision: str | None = None
    trust_model: bool | None = None
    gpu_memory_limit: str | int | None = None
    executor: str | None = None
    scheduler: str | None = None
    workers: int | None = None
    cluster: str | None = None
    reduce: dict[str, Any] = field(default_factory=dict)
    job: dict[str, Any] = field(default_factory=dict)
    jobqueue: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def run_options(self) -> dict[str, Any]:
        """The top-level settings that are set, by name."""
        names = [f.name for f in fields(self) if f.name not in (*_SECTIONS, "path")]
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


def load_config(path: str | Path) -> Config:
    """Read and check a TOML config file; relative paths are taken from the file's folder."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"config file {path} does not exist.") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"config file {path} is not valid TOML: {exc}") from None
    known = {f.name for f in fields(Config)} - {*_SECTIONS, "path"}
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
    for key in _PATH_KEYS:
        if key in raw:
            raw[key] = str((path.parent / raw[key]).resolve()) if not Path(raw[key]).is_absolute() else raw[key]
    for key in _SELECTION_KEYS:
        if isinstance(raw.get(key), str):
            raw[key] = parse_selection_text(raw[key])
    return Config(**raw, **sections, path=path.resolve())
