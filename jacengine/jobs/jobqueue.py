"""dask-jobqueue clusters (``--cluster slurm|pbs``) from a config file's ``[jobqueue]`` section.

The section holds keyword arguments of dask-jobqueue's ``SLURMCluster``/``PBSCluster`` (cores,
memory, walltime, queue, account, ...) plus ``jobs``, the number of batch jobs to start. Each job
runs one worker process by default, so jacengine's per-process budget is also the per-job one,
and TensorFlow's thread pools are sized to the job's cores. dask-jobqueue is an optional
dependency: ``pip install 'jacengine[hpc]'``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jacengine.errors import InputError

CLUSTER_CLASSES = {"slurm": "SLURMCluster", "pbs": "PBSCluster"}


def jobqueue_options(section: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
    """(cluster keyword arguments, number of jobs) for a ``[jobqueue]`` section."""
    options = dict(section)
    jobs = int(options.pop("jobs", 1))
    missing = [key for key in ("cores", "memory") if key not in options]
    if missing:
        raise InputError(f"[jobqueue] needs {' and '.join(missing)} (per job), e.g. cores = 4 and memory = \"16GiB\".")
    options.setdefault("processes", 1)
    threads = max(1, int(options["cores"]) // int(options["processes"]))
    exports = [f"export TF_NUM_INTRAOP_THREADS={threads}", "export TF_NUM_INTEROP_THREADS=1", f"export OMP_NUM_THREADS={threads}"]
    options["job_script_prologue"] = [*exports, *options.get("job_script_prologue", [])]
    return options, jobs


def jobqueue_cluster(kind: str, section: Mapping[str, Any]) -> Any:
    """Start a dask-jobqueue cluster of ``kind`` ("slurm" or "pbs") and ask for its jobs."""
    if kind not in CLUSTER_CLASSES:
        raise InputError(f"cluster {kind!r} is not one of {', '.join(CLUSTER_CLASSES)}.")
    try:
        import dask_jobqueue
    except ImportError:
        raise InputError("--cluster needs dask-jobqueue: pip install 'jacengine[hpc]'.") from None
    options, jobs = jobqueue_options(section)
    cluster = getattr(dask_jobqueue, CLUSTER_CLASSES[kind])(**options)
    cluster.scale(jobs=jobs)
    return cluster
