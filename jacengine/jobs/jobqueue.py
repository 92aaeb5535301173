"""dask-jobqueue clusters (``--cluster slurm|pbs``) from a config file's ``[jobqueue]`` section.

The section holds keyword arguments of dask-jobqueue's ``SLURMCluster``/``PBSCluster`` (cores,
memory, walltime, queue, account, ...) plus ``jobs``, the number of batch jobs to start. Each job
runs one worker process by default, so jacengine's per-process budget is also the per-job one,
and TensorFlow's thread pools are sized to the job's cores. dask-jobqueue is an optional
dependency: ``pip install 'jacengine[hpc]'``.

The cluster is private: its scheduler and workers speak TLS with a temporary certificate, so a
client without it is refused (dask-jobqueue's default is plain TCP, where anyone who can reach
the port can run code as the user). The jobs read the certificate from files in a folder they
share with the login node, readable by the user only: by default the store's folder, which the
jobs share anyway (``shared_temp_directory`` in the section names another). The scheduler
listens on the interface that routes off this node (``interface`` or ``scheduler_options``
choose another).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jacengine.errors import InputError

CLUSTER_CLASSES = {"slurm": "SLURMCluster", "pbs": "PBSCluster"}
ALWAYS_TLS = ("security", "protocol")  # keys a section may not set: the cluster is always TLS


def jobqueue_options(section: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
    """(cluster keyword arguments, number of jobs) for a ``[jobqueue]`` section."""
    options = dict(section)
    jobs = int(options.pop("jobs", 1))
    insecure = [key for key in ALWAYS_TLS if key in options]
    if insecure:
        raise InputError(f"[jobqueue] sets {' and '.join(insecure)}; jacengine's job-queue clusters always use TLS with a "
                         "temporary certificate. Remove the setting.")
    missing = [key for key in ("cores", "memory") if key not in options]
    if missing:
        raise InputError(f"[jobqueue] needs {' and '.join(missing)} (per job), e.g. cores = 4 and memory = \"16GiB\".")
    options.setdefault("processes", 1)
    threads = max(1, int(options["cores"]) // int(options["processes"]))
    exports = [f"export TF_NUM_INTRAOP_THREADS={threads}", "export TF_NUM_INTEROP_THREADS=1", f"export OMP_NUM_THREADS={threads}"]
    options["job_script_prologue"] = [*exports, *options.get("job_script_prologue", [])]
    return options, jobs


def private_cluster_options(options: Mapping[str, Any], shared_directory: Path) -> dict[str, Any]:
    """``options`` with TLS on a temporary certificate whose files go to ``shared_directory``
    (unless the section names one), and the scheduler bound to the routed interface."""
    from distributed.utils import get_ip

    private = {**options, "security": True}
    private.setdefault("shared_temp_directory", str(shared_directory))
    scheduler = dict(private.get("scheduler_options", {}))
    if "interface" not in private and not {"host", "interface"} & set(scheduler):
        scheduler["host"] = get_ip()  # not 0.0.0.0: the address the workers are given to reach it
    private["scheduler_options"] = scheduler
    return private


def jobqueue_cluster(kind: str, section: Mapping[str, Any], shared_directory: Path) -> Any:
    """Start a private dask-jobqueue cluster of ``kind`` ("slurm" or "pbs") and ask for its jobs
    (see the module docstring; ``shared_directory``: where the jobs find the certificate)."""
    if kind not in CLUSTER_CLASSES:
        raise InputError(f"cluster {kind!r} is not one of {', '.join(CLUSTER_CLASSES)}.")
    try:
        import dask_jobqueue
    except ImportError:
        raise InputError("--cluster needs dask-jobqueue: pip install 'jacengine[hpc]'.") from None
    options, jobs = jobqueue_options(section)
    cluster = getattr(dask_jobqueue, CLUSTER_CLASSES[kind])(**private_cluster_options(options, shared_directory))
    cluster.scale(jobs=jobs)
    return cluster
