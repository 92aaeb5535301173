"""The dask.distributed executor: each block is a task on a dask cluster, written by the worker.

By default a LocalCluster on this machine (loopback only, one single-threaded worker process
per core, TensorFlow's thread pools sized to match); or an existing cluster by scheduler
address, or a dask-jobqueue cluster. Each worker process loads the model once (on its first
task) and keeps it for every later block; a task computes its block, writes it straight into
the store and returns a few numbers, so no Jacobian data passes through the scheduler.

A worker that dies mid-task has the task rescheduled by dask. Running a block twice is safe:
a block owns its chunks, and rewriting it stores identical bytes and the same manifest entry.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from jacengine.executors.local import first_use
from jacengine.executors.splitting import SplittingCompute
from jacengine.memory import peak_resident_bytes
from jacengine.planning.blocks import Block
from jacengine.storage.store import JacobianStore

log = logging.getLogger("jacengine")

# One thread per worker process: TensorFlow would otherwise start a pool as wide as the machine
# in every worker, and the workers would fight over the cores.
WORKER_ENV = {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1", "OMP_NUM_THREADS": "1",
              "TF_CPP_MIN_LOG_LEVEL": "2"}


@dataclass(frozen=True)
class WorkerSetup:
    """What a worker needs to rebuild the computation: files it can read, and the options of
    :func:`jacengine.api.prepare_for_store` (the same ones that built the store, checked by fingerprint)."""

    model: str
    inputs: str
    store: str
    options: dict[str, Any] = field(hash=False)
    token: str = ""


_CONTEXTS: dict[str, tuple[JacobianStore, SplittingCompute]] = {}


def _worker_context(setup: WorkerSetup) -> tuple[JacobianStore, SplittingCompute]:
    """The store and the block computation of this worker process, built on its first task."""
    if setup.token not in _CONTEXTS:
        from jacengine.api import prepare_for_store

        store = JacobianStore(setup.store, mode="r+")
        prepared = prepare_for_store(setup.model, setup.inputs, store, **setup.options)
        _CONTEXTS.clear()  # one computation per worker at a time: free the previous model
        _CONTEXTS[setup.token] = (store, SplittingCompute(prepared.compute_block))
    return _CONTEXTS[setup.token]


def compute_and_write(setup: WorkerSetup, index: int) -> dict[str, Any]:
    """The task: compute block ``index``, write it, return its timing (runs on a worker)."""
    store, compute = _worker_context(setup)
    block = store.plan.blocks[index]
    started = time.perf_counter()
    store.write_block(block, compute(block))
    peak = peak_resident_bytes()
    return {"index": index, "seconds": time.perf_counter() - started, "pid": os.getpid(), "peak_rss_bytes": peak}


class DaskExecutor:
    """Run blocks as dask.distributed tasks; progress and interruption handled on the client."""

    def __init__(self, setup: WorkerSetup, *, scheduler: str | None = None, workers: int | None = None,
                 cluster: Any = None, progress: bool = True) -> None:
        self.setup = setup
        self.scheduler = scheduler
        self.workers = workers
        self.cluster = cluster
        self.progress = progress

    @contextlib.contextmanager
    def _address(self) -> Iterator[Any]:
        """A scheduler address or cluster to connect to, started here when none was given."""
        if self.scheduler or self.cluster is not None:
            yield self.scheduler or self.cluster
            return
        from distributed import LocalCluster

        # the workers use the kernels this process uses (oneDNN on unless switched off; see jacengine.tf)
        env = dict(WORKER_ENV, TF_ENABLE_ONEDNN_OPTS=os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1"))
        with LocalCluster(n_workers=self.workers or os.cpu_count() or 1, threads_per_worker=1, processes=True,
                          host="127.0.0.1", dashboard_address=None, env=env) as cluster:
            yield cluster

    def run(self, store: JacobianStore, blocks: Sequence[Block], compute_block: Any = None,
            should_stop: Callable[[], bool] = lambda: False) -> int:
        """Compute ``blocks``; returns how many completed. Blocks are submitted grouped by shape
        (higher priority first), so each worker mostly reuses one compiled shape at a time.
        ``compute_block`` is unused: workers build their own from the :class:`WorkerSetup`."""
        from distributed import Client, as_completed
        from tqdm.auto import tqdm

        order = first_use(blocks)
        blocks = sorted(blocks, key=lambda b: (order[b.shape_key], b.index))
        done = 0
        peaks: dict[int, int] = {}
        with self._address() as address, Client(address) as client, \
                tqdm(total=len(blocks), unit="block", disable=not self.progress or not blocks, desc="jacobian") as bar:
            prefix = f"jacengine-{self.setup.token[:12]}-block"
            futures = [
                client.submit(compute_and_write, self.setup, block.index, key=f"{prefix}-{block.index}", pure=False,
                              priority=len(blocks) - position)
                for position, block in enumerate(blocks)
            ]
            completed = as_completed(futures)
            try:
                for future in completed:
                    metadata = future.result()  # re-raises a task's error (e.g. a non-finite block)
                    peaks[metadata["pid"]] = max(peaks.get(metadata["pid"], 0), metadata["peak_rss_bytes"])
                    done += 1
                    bar.update()
                    if should_stop():
                        break
            finally:
                client.cancel([f for f in futures if not f.done()])
        log.info("peak resident memory of the dask workers (whole process): %s MiB",
                 ", ".join(f"{peak / 2**20:.0f}" for peak in sorted(peaks.values())) or "none",
                 extra={"worker_peak_rss_bytes": sorted(peaks.values())})
        return done
