"""The dask.distributed executor: each block is a task on a dask cluster, written by the worker.

By default a LocalCluster on this machine (loopback only, TLS with a temporary certificate,
one single-threaded worker process per core, the backend's thread pools sized to match); or an existing cluster by scheduler
address, or a dask-jobqueue cluster. Each worker process loads the model once (on its first
task, see :mod:`jacengine.task`) and keeps it for every later block; a task computes its block,
writes it straight into the store and returns a few numbers, so no Jacobian data passes
through the scheduler.

A worker that dies mid-task has the task rescheduled by dask. Running a block twice is safe:
a block owns its chunks, and rewriting it stores identical bytes and the same manifest entry.

The client never blocks on a task: it polls for finished blocks, so a stop (SIGINT, SIGTERM)
is seen within :data:`POLL_S` whatever the workers do, and a cluster left without workers for
:data:`NO_WORKERS_S` ends the run as resumable instead of waiting forever. The workers of the
LocalCluster started here ignore SIGINT (:mod:`jacengine.executors.worker_signals`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from jacengine.errors import RunInterrupted
from jacengine.executors.base import ShouldStop, Task, execution_order
from jacengine.planning.blocks import Block
from jacengine.progress import BlockProgress

log = logging.getLogger("jacengine")

POLL_S = 0.2  # how often the client looks for finished blocks, a stop, and workers
NO_WORKERS_S = 60.0  # a cluster without workers this long ends the run (resumable)


class DaskExecutor:
    """Run blocks as dask.distributed tasks; progress and interruption handled on the client.

    ``env``: environment variables of the worker processes of a LocalCluster started here (the
    backend's: threads, kernels, log level).
    """

    concurrent = True
    in_process = False

    def __init__(self, *, scheduler: str | None = None, workers: int | None = None, cluster: Any = None,
                 env: dict[str, str] | None = None, progress: bool | None = None) -> None:
        self.scheduler = scheduler
        self.workers = workers
        self.cluster = cluster
        self.env = env or {}
        self.progress = progress

    @contextlib.contextmanager
    def _address(self) -> Iterator[Any]:
        """A scheduler address or cluster to connect to, started here when none was given."""
        if self.scheduler or self.cluster is not None:
            yield self.scheduler or self.cluster
            return
        from distributed import LocalCluster
        from distributed.security import Security

        # TLS with a throwaway certificate: on a shared node no other user can connect to it
        with LocalCluster(n_workers=self.workers or os.cpu_count() or 1, threads_per_worker=1, processes=True,
                          host="127.0.0.1", dashboard_address=None, env=self.env, security=Security.temporary(),
                          protocol="tls://", preload=["jacengine.executors.worker_signals"]) as cluster:
            yield cluster

    def assigned(self, task: Task, blocks: Sequence[Block]) -> list[Block]:
        return list(blocks)

    def run(self, task: Task, blocks: Sequence[Block], should_stop: ShouldStop = lambda: False) -> int:
        """Compute ``blocks``; returns how many completed. Blocks are submitted in execution order
        (higher priority first), so each worker mostly reuses one compiled shape at a time."""
        from distributed import Client

        ordered = execution_order(blocks)
        done = 0
        peaks: dict[int, int] = {}
        with self._address() as address, Client(address) as client, \
                BlockProgress(task.spec, ordered, self.progress) as bar:
            prefix = f"jacengine-{uuid.uuid4().hex[:12]}-block"
            by_key = {f"{prefix}-{block.index}": block for block in ordered}
            futures = [
                client.submit(task, block.index, key=key, pure=False, priority=len(ordered) - position)
                for position, (key, block) in enumerate(by_key.items())
            ]
            try:
                for future in _finished(client, futures, should_stop):
                    metadata = future.result()  # re-raises a task's error (e.g. a non-finite block)
                    peaks[metadata["pid"]] = max(peaks.get(metadata["pid"], 0), metadata["peak_rss_bytes"])
                    done += 1
                    bar.advance(by_key[future.key])
            finally:
                client.cancel([f for f in futures if not f.done()])
        log.info("peak resident memory of the dask workers (whole process): %s MiB",
                 ", ".join(f"{peak / 2**20:.0f}" for peak in sorted(peaks.values())) or "none",
                 extra={"worker_peak_rss_bytes": sorted(peaks.values())})
        return done


def _finished(client: Any, futures: list[Any], should_stop: ShouldStop) -> Iterator[Any]:
    """The futures as they finish, until all have or ``should_stop()``; polled every
    :data:`POLL_S`, never blocking on a task. Raises :class:`RunInterrupted` when the cluster has
    had no worker for :data:`NO_WORKERS_S` (they died, or were never granted)."""
    from distributed import as_completed

    completed = as_completed(futures)
    workerless_since: float | None = None
    while not completed.is_empty() and not should_stop():
        if completed.has_ready():
            yield from completed.next_batch(block=False)
            workerless_since = None
            continue
        if client.scheduler_info().get("workers"):
            workerless_since = None
        elif workerless_since is None:
            workerless_since = time.monotonic()
        elif time.monotonic() - workerless_since > NO_WORKERS_S:
            raise RunInterrupted(f"the dask cluster has had no workers for {NO_WORKERS_S:.0f} s; every finished block is "
                                 "saved. Rerun the same command when workers are available to resume.")
        time.sleep(POLL_S)
