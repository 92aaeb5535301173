"""The public entry points: :func:`compute`, :func:`init` and :func:`plan`.

Each takes the model, the inputs and the run's settings, either as keyword arguments (the
fields of :class:`~jacengine.options.RunOptions`) or as ``options=RunOptions(...)``. The
backend (TensorFlow unless another recognises the model) is imported on first use, so
``import jacengine`` stays fast.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from dask.utils import format_bytes

from jacengine.backends import backend_for
from jacengine.errors import BudgetError, InputError, RunInterrupted
from jacengine.executors import DaskExecutor, Executor, LocalExecutor, ShardExecutor
from jacengine.executors.shards import parse_shard, shard_from_env
from jacengine.interrupt import StopFlag, stop_on_signals
from jacengine.jobs.jobqueue import jobqueue_cluster
from jacengine.logs import accepts_verbose
from jacengine.options import MODEL_IDENTITY, RunOptions, options_from
from jacengine.planning.spec import JacobianSpec
from jacengine.preparation import Prepared, prepare, prepare_for_store
from jacengine.progress import phase_progress
from jacengine.storage.inputs import InputsLike
from jacengine.storage.locking import store_lock
from jacengine.storage.scratch import scratch_store_path
from jacengine.storage.staging import staged_for_workers
from jacengine.storage.store import JacobianStore, check_writable_target, is_jacengine_store
from jacengine.task import BlockTask

log = logging.getLogger("jacengine")

STALE_TEMPORARY_S = 600.0  # a temporary file this old belongs to no running write


@accepts_verbose
def plan(model: Any, inputs: InputsLike, *, options: RunOptions | None = None, progress: bool | None = None,
         **settings: Any) -> dict[str, Any]:
    """Plan a run without computing the Jacobian: blocks, predicted peak memory, store size and
    run time (the cost model is calibrated on probe blocks). Settings, ``progress`` and
    ``verbose`` as for :func:`compute`."""
    with phase_progress("planning", progress):
        return prepare(model, inputs, options_from(options, settings)).summary()


@accepts_verbose
def init(model: Any, inputs: InputsLike, store: str | Path, *, overwrite: bool = False, options: RunOptions | None = None,
         progress: bool | None = None, **settings: Any) -> JacobianStore:
    """Create the store and its plan (calibrated on the actual model) without computing the rest.

    What job arrays run first, so that their shards never race to create the store. Running it
    again on the store it made is harmless: the store is checked against the settings and
    returned. Settings, ``progress`` and ``verbose`` as for :func:`compute`.
    """
    run = options_from(options, settings)
    path = _local_path(store)
    if is_jacengine_store(path) and not overwrite:
        existing = JacobianStore(path, mode="r")
        with phase_progress("checking", progress):
            prepare_for_store(model, inputs, existing, run)
        return existing
    check_writable_target(path, overwrite=overwrite)
    with phase_progress("planning", progress):
        prepared = prepare(model, inputs, run)
    return _create(prepared, path, overwrite=overwrite, sources=_sources(model, inputs, run), durable=run.durable)


@accepts_verbose
def compute(
    model: Any,
    inputs: InputsLike,
    store: str | Path | None,
    *,
    options: RunOptions | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
    cluster: Any = None,
    jobqueue: Mapping[str, Any] | None = None,
    shard: tuple[int, int] | str | None = None,
    **settings: Any,
) -> JacobianStore:
    """Compute J[b, t_out, f_out, t_in, f_in] = dy/dx of ``model`` at ``inputs`` into ``store``.

    Args:
        model: a ``keras.Model`` or a path to a ``.keras`` file (loaded in safe mode), or a model
            of another registered backend.
        inputs: (B, T, F) floats: a numpy array, a ``.npy`` path (memory-mapped) or a zarr array.
        store: directory of the zarr store to create, or of an existing store to resume; None:
            compute in memory (a scratch store, deleted with the returned object), with the
            result counted against the budget (see :func:`jacobian`).
        options: a :class:`~jacengine.options.RunOptions`; keyword ``settings`` (its field
            names: ``budget``, ``t_out``, ``f_out``, ``f_in``, ``causal``, ``method``, ``layout``,
            ``max_lag``, ``store_dtype``, ``precision``, ``trust_model``, ``gpu_memory_limit``,
            ``backend``, ``executor``, ``scheduler``, ``workers``, ``durable``) override it. Each is
            documented there; the default budget is 2 GiB per process.
        overwrite: replace an existing jacengine store instead of resuming it.
        progress: show progress (the preparation's phases, then a bar over the blocks weighted by
            their predicted cost); None: when stderr is a terminal or in a notebook.
        verbose: True logs what is decided and why and a summary line to stderr; False only
            errors; None leaves jacengine's logger as configured (warnings by default).
        cluster: with executor "dask", a cluster object to use (e.g. a dask-jobqueue cluster),
            or ``"slurm"``/``"pbs"``: a dask-jobqueue cluster that the run starts from the
            ``jobqueue`` settings (a config's ``[jobqueue]`` section) and closes when it ends.
        shard: ``(I, N)`` or ``"I/N"``: compute only shard I of N of the blocks (job arrays; the
            store must exist, see :func:`init`); ``"env"``: the shard of this job-array task,
            from SLURM's or PBS's variables.

    Returns the opened :class:`JacobianStore`. Rerunning the same call on an interrupted store
    computes only the missing blocks; a store from a different model, inputs or settings is
    refused with a message naming what differs.
    """
    started = time.perf_counter()
    run = options_from(options, settings)
    shard = _shard(shard)
    if store is None:
        return _compute_in_memory(model, inputs, run, progress=progress, started=started, refused={
            "overwrite": overwrite, "cluster": cluster is not None, "shard": shard is not None,
            "executor='dask'": run.executor != "local"})
    path = _local_path(store)
    # signals from the start: a stop while loading or calibrating is resumable too
    with stop_on_signals() as stop, contextlib.ExitStack() as staging:
        if isinstance(cluster, str):  # started here, so that a stop while it starts is resumable too
            cluster = staging.enter_context(contextlib.closing(jobqueue_cluster(cluster, jobqueue or {}, path.parent)))
            _stop_if_asked(stop, path, None)
        backend = backend_for(model, run.backend)
        run = run.replace(backend=backend.name)  # workers need not recognise the model again
        resume = is_jacengine_store(path) and not overwrite
        executor = _executor(run, backend.worker_environment(), cluster, shard, progress)
        if shard is not None and (overwrite or not resume):
            raise InputError(
                f"shards compute into an existing store and never create or overwrite one ({path}); create it once "
                "with `jacengine init` (jacengine.init) using the same settings, then start the shards.")
        if not resume:
            check_writable_target(path, overwrite=overwrite)
        task = _task(model, inputs, path, run, staging, backend.save)
        # a resumed store is opened once: its fingerprint is checked against this run, and its
        # generation id (checked before every write) is that of the store checked
        existing = JacobianStore(path, mode="r+", durable=run.durable) if resume else None
        with phase_progress("preparing", progress):
            prepared = prepare_for_store(model, inputs, existing, run) if existing else prepare(model, inputs, run)
        _stop_if_asked(stop, path, None)
        target = _open_target(prepared, path, existing, overwrite=overwrite, sources=_sources(model, inputs, run),
                              concurrent=executor.concurrent, durable=run.durable)
        return execute(prepared, target, task, executor, stop, started)


@accepts_verbose
def jacobian(model: Any, inputs: InputsLike, *, options: RunOptions | None = None, progress: bool | None = None,
             **settings: Any) -> np.ndarray:
    """J of ``model`` at ``inputs`` as a numpy array: small questions without a store.

    ``jacobian(model, x, t_out=10)`` is the gradient of output step 10 with respect to every
    input step: shape (B, F_out, T, F_in). An int selection (``t_out``, ``f_out``, ``f_in``)
    drops its axis, as numpy indexing does; other selections keep it, in the layout of
    ``tape.batch_jacobian`` (B, T_out, F_out, T_in, F_in). The computation is that of
    :func:`compute` (blocks, causal skipping, the same settings), and the result counts against
    the budget: when it does not fit, the error says so and the answer is a store on disk.
    ``progress`` and ``verbose`` as for :func:`compute`.
    """
    run = options_from(options, settings)
    values = compute(model, inputs, None, options=run, progress=progress).to_numpy()
    dropped = tuple(axis for axis, name in ((1, "t_out"), (2, "f_out"), (4, "f_in"))
                    if isinstance(getattr(run, name), (int, np.integer)) and not isinstance(getattr(run, name), bool))
    return values.squeeze(axis=dropped) if dropped else values


def _compute_in_memory(model: Any, inputs: InputsLike, run: RunOptions, *, progress: bool | None, started: float,
                       refused: dict[str, bool]) -> JacobianStore:
    """:func:`compute` with ``store=None``: into a scratch store, in this process, with the
    result (as :meth:`JacobianStore.to_numpy` materialises it) reserved from the budget."""
    asked = [name for name, given in refused.items() if given]
    if asked:
        raise InputError(f"store=None computes in this process's memory; {', '.join(asked)} need(s) a store path "
                         "(store='jacobian.zarr', --out).")
    with stop_on_signals() as stop:
        try:
            with phase_progress("preparing", progress):
                prepared = prepare(model, inputs, run, reserve=_result_bytes)
        except BudgetError as exc:
            raise BudgetError(f"{exc} In memory, the result itself counts against the budget; compute into a store on "
                              "disk (store='jacobian.zarr', --out) to leave the whole budget to the computation, or raise "
                              "budget (--budget).") from exc
        path = scratch_store_path(_result_bytes(prepared.spec))
        target = _create(prepared, path, overwrite=False, sources={}, durable=False)
        target.remove_with_this_object(path.parent)
        try:
            return execute(prepared, target, BlockTask(str(path), model, inputs, run, uuid.uuid4().hex),
                           LocalExecutor(progress=progress), stop, started)
        except RunInterrupted:
            raise RunInterrupted(f"stopped by {stop.signal_name}; a computation in memory keeps nothing. Rerun it, or "
                                 "compute into a store (store='jacobian.zarr', --out) to make it resumable.") from None


def _result_bytes(spec: JacobianSpec) -> int:
    """The whole Jacobian in memory (zeros of skipped blocks included, as to_numpy returns it)."""
    return math.prod(spec.shape) * np.dtype(spec.store_dtype).itemsize


def execute(prepared: Prepared, target: JacobianStore, task: BlockTask, executor: Executor,
            stop: StopFlag | None = None, started: float | None = None) -> JacobianStore:
    """Compute the pending blocks of ``target`` with ``executor`` mapping ``task`` over them
    (this process's preparation attached to the task: nothing is loaded twice). ``stop``: the
    flag of the caller's signal handler (default: one installed here); ``started``: when the
    caller's run began (``time.perf_counter()``; default now), for the summary."""
    task.attach(target, prepared.computation)
    with store_lock(target.path, exclusive=False):  # while it writes, no other run may overwrite or clean up
        finished = _run(prepared, target, task, executor, stop, time.perf_counter() if started is None else started)
    _remove_orphaned_temporary_files(finished)
    return finished


def _remove_orphaned_temporary_files(target: JacobianStore) -> None:
    """Temporary files of writers that died during this run (a dask worker killed mid-write):
    removed now when no other run holds the store, else left to a later run's age rule."""
    with store_lock(target.path, exclusive=True) as alone:
        removed = target.remove_temporary_files(min_age_s=0) if alone else 0
    if removed:
        log.info("removed %d temporary files of writes that died during this run", removed)


def _run(prepared: Prepared, target: JacobianStore, task: BlockTask, executor: Executor,
         stop: StopFlag | None, started: float) -> JacobianStore:
    pending = target.pending_blocks()
    log.info("%s; %s; %d of %d blocks pending, budget %s per process", prepared.causal_reason, prepared.method_reason,
             len(pending), len(target.plan.blocks), format_bytes(prepared.budget_bytes))
    try:
        with contextlib.nullcontext(stop) if stop is not None else stop_on_signals() as flag:
            computed = executor.run(task, pending, should_stop=flag)
    finally:
        task.detach()
    target.record_rounding_error()
    # calibration's probe blocks were stored when the store was created: this run computed them too
    target.last_run = RunSummary(computed + prepared.probe_blocks, len(target.plan.blocks),
                                 time.perf_counter() - started,
                                 prepared.measured_peak() if executor.in_process else None, prepared.budget_bytes,
                                 target.nbytes_on_disk())
    log.info(target.last_run.line())
    if flag():
        left = {b.index for b in target.pending_blocks()} & {b.index for b in executor.assigned(task, pending)}
        _stop_if_asked(flag, target.path, target, finished=not left)
    return target


@dataclass(frozen=True)
class RunSummary:
    """What a run did: blocks computed (of the plan's), wall time (loading and calibration
    included), the measured peak of the
    budgeted memory in this process (None when blocks ran elsewhere: dask workers log theirs),
    the budget, and the store's size on disk."""

    computed: int
    blocks: int
    seconds: float
    peak_bytes: int | None
    budget_bytes: int
    store_bytes: int

    def line(self) -> str:
        peak = ("peak: see the workers' line with -v" if self.peak_bytes is None else
                f"measured peak {format_bytes(self.peak_bytes)} of a {format_bytes(self.budget_bytes)} budget "
                f"({self.peak_bytes / self.budget_bytes:.2f})")
        return (f"computed {self.computed} of {self.blocks} blocks in {self.seconds:.1f} s; {peak}; "
                f"store {format_bytes(self.store_bytes)} on disk")


def _executor(run: RunOptions, worker_environment: dict[str, str], cluster: Any, shard: tuple[int, int] | None,
              progress: bool | None) -> Executor:
    """Where the blocks run: this process or dask (on ``cluster`` where given), and only shard
    I of N of them with ``shard``."""
    if cluster is not None and run.executor != "dask":
        raise InputError("a cluster applies to the dask executor; pass executor='dask' (--executor dask).")
    executor: Executor = LocalExecutor(progress=progress)
    if run.executor == "dask":
        executor = DaskExecutor(scheduler=run.scheduler, workers=run.workers, cluster=cluster, env=worker_environment,
                                progress=progress)
    return ShardExecutor(executor, *shard) if shard is not None else executor


def _task(model: Any, inputs: InputsLike, path: Path, run: RunOptions, staging: contextlib.ExitStack,
          save: Any) -> BlockTask:
    """The task that computes and writes one block. Worker processes load the model and inputs
    from files: an in-memory model or array is written for them (``save``: the backend's) before
    any work, so that a model workers cannot load is refused now, not after calibration."""
    token = uuid.uuid4().hex
    if run.executor == "local":
        return BlockTask(str(path), model, inputs, run, token)
    model_path, inputs_path = staging.enter_context(staged_for_workers(model, inputs, path, save))
    return BlockTask(str(path.resolve()), model_path, inputs_path, run, token)


def _shard(shard: tuple[int, int] | str | None) -> tuple[int, int] | None:
    """A shard as ``(I, N)``, from a pair, "I/N" or "env" (the job array's variables)."""
    if shard == "env":
        return shard_from_env()
    return parse_shard(shard) if isinstance(shard, str) else shard


def _stop_if_asked(stop: StopFlag, path: Path, target: JacobianStore | None, *, finished: bool = False) -> None:
    """Raise :class:`RunInterrupted` (exit status 75, resumable) when a signal asked to stop,
    unless the run had ``finished`` its blocks meanwhile: it succeeded (a job array must not
    requeue a finished shard). ``target``: the store, once blocks have run."""
    if not stop():
        return
    if finished:
        log.info("%s arrived as this run's last block finished; nothing is left to resume", stop.signal_name)
        return
    if target is None:
        raise RunInterrupted(f"stopped by {stop.signal_name} before the first block; rerun the same command to start again.")
    remaining = len(target.pending_blocks())
    raise RunInterrupted(
        f"stopped by {stop.signal_name} with {remaining} of {len(target.plan.blocks)} blocks left; "
        f"every finished block is saved in {path}. Rerun the same command to resume."
    )


def _local_path(store: str | Path) -> Path:
    """The store as a local path; URLs are refused (``Path("s3://b/j")`` would quietly make a
    local directory named ``s3:``)."""
    if "://" in str(store):
        raise InputError(f"store {store!r} is a URL; jacengine writes stores to a local or network file system path "
                         "(remote object stores are not supported yet). Compute locally and copy the store.")
    return Path(store)


def _open_target(prepared: Prepared, path: Path, existing: JacobianStore | None, *, overwrite: bool,
                 sources: dict[str, str], concurrent: bool, durable: bool) -> JacobianStore:
    """The store to compute into: ``existing`` (resumed, already checked) or a new one."""
    if existing is None:
        return _create(prepared, path, overwrite=overwrite, sources=sources, durable=durable)
    # temporary files of interrupted writes: all of them only when no other run holds the store
    # (and this one writes alone), else only stale ones: other runs may be writing right now
    with store_lock(path, exclusive=True) as alone:
        removed = existing.remove_temporary_files(min_age_s=0 if alone and not concurrent else STALE_TEMPORARY_S)
    if removed:
        log.info("removed %d temporary files of interrupted writes", removed)
    return existing


def _sources(model: Any, inputs: Any, run: RunOptions) -> dict[str, str]:
    """What verify needs to load the model and inputs again: them, when they were given as files
    (as absolute paths) or references such as import paths (as given), and the options that
    say how to call and identify the model."""
    sources = {name: str(Path(value).resolve()) if Path(value).exists() else str(value)
               for name, value in (("model", model), ("inputs", inputs)) if isinstance(value, (str, Path))}
    return sources | {name: getattr(run, name) for name in MODEL_IDENTITY if getattr(run, name) is not None}


def _create(prepared: Prepared, path: Path, *, overwrite: bool, sources: dict[str, str], durable: bool = True) -> JacobianStore:
    """A new store for ``prepared``, with the blocks calibration computed already in it."""
    target = JacobianStore.create(path, prepared.spec, prepared.plan, prepared.fingerprint, overwrite=overwrite,
                                  sources=sources, durable=durable)
    while prepared.probe_results:  # written and let go, one at a time
        target.write_block(*prepared.probe_results.popitem())
    return target
