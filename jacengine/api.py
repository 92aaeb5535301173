"""The public entry points: :func:`compute` and :func:`plan`.

TensorFlow is imported inside these functions only, so ``import jacengine`` stays fast.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from dask.utils import format_bytes

from jacengine.errors import InputError, RunInterrupted
from jacengine.executors import LocalExecutor
from jacengine.executors.cluster import DaskExecutor, WorkerSetup
from jacengine.executors.shards import check_shard, shard_blocks
from jacengine.executors.staging import staged_for_workers
from jacengine.interrupt import stop_on_signals
from jacengine.memory import ProcessMemory, return_large_frees_to_the_os
from jacengine.planning.blocks import Plan
from jacengine.planning.budget import BUDGET_DEFINITION, parse_budget
from jacengine.planning.costmodel import CostModel, choose_plan, minimum_budget, predicted_peak, predicted_store_bytes
from jacengine.planning.selection import Selection
from jacengine.planning.spec import METHODS, JacobianSpec
from jacengine.storage.inputs import Inputs, InputsLike
from jacengine.storage.store import FORMAT_VERSION, JacobianStore, check_writable_target, is_jacengine_store
from jacengine.timing import phase

log = logging.getLogger("jacengine")

EXECUTORS = ("local", "dask")
METHOD_CHOICES = ("auto", *METHODS)
PRECISIONS = ("model", "float64")  # compute in the model's own dtype, or in a float64 copy of it
STALE_PARTIAL_S = 600.0  # a temporary file this old belongs to no running write


@dataclass
class Prepared:
    """Everything decided before the first block is stored."""

    spec: JacobianSpec
    causal_reason: str
    cost: CostModel
    plan: Plan
    budget_bytes: int
    fingerprint: dict[str, Any]
    inputs: Inputs
    computer: Any  # jacengine.tf.block_computer.BlockComputer
    probe_results: dict[Any, np.ndarray] = field(default_factory=dict)  # calibration's blocks of this plan
    method_reason: str = ""

    def compute_block(self, block: Any) -> np.ndarray:
        """J for one block of a plan with this spec (reads just the inputs the block needs)."""
        x = self.inputs.read(block.batch_start, block.batch_stop, block.forward_steps)
        return self.computer.compute(block, x)

    def summary(self) -> dict[str, Any]:
        """What ``jacengine plan`` prints: blocks and predictions, nothing computed."""
        blocks = self.plan.blocks
        return {
            "shape": list(self.spec.shape),
            "causal": self.spec.causal,
            "causal_reason": self.causal_reason,
            "method": self.spec.method,
            "method_reason": self.method_reason,
            "chunks": list(self.plan.chunks(self.spec)),
            "blocks": len(blocks),
            "block_shapes": [list(k) for k in self.plan.shape_keys],
            "traces": self.cost.traces(self.plan),
            "budget_bytes": self.budget_bytes,
            "minimum_budget_bytes": minimum_budget(self.spec, self.cost),
            "budget_definition": BUDGET_DEFINITION,
            "predicted_peak_bytes": int(predicted_peak(self.spec, self.plan, self.cost)),
            "predicted_store_bytes": predicted_store_bytes(self.spec, self.plan),
            "predicted_seconds": round(self.cost.plan_seconds(self.spec, self.plan), 2),
            "cost_model": self.cost.to_dict(),
        }


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def prepare(
    model: Any,
    inputs: InputsLike,
    *,
    budget: int | str = "2GiB",
    t_out: Selection = None,
    f_out: Selection = None,
    f_in: Selection = None,
    causal: Any = "auto",
    method: str = "auto",
    layout: str = "full",
    max_lag: int | None = None,
    store_dtype: str = "float32",
    precision: str = "model",
    trust_model: bool = False,
    gpu_memory_limit: int | str | None = None,
    calibrate: bool = True,
) -> Prepared:
    """Validate everything, build the spec, calibrate the cost model and plan the blocks."""
    budget_bytes = parse_budget(budget)
    from jacengine.tf.memory import configure_gpus

    configure_gpus(parse_budget(gpu_memory_limit) if gpu_memory_limit is not None else None)
    from jacengine.tf.block_computer import BlockComputer
    from jacengine.tf.calibrate import prior_cost
    from jacengine.tf.introspect import PROBE_SAMPLES, PROBE_STEPS, build_spec
    from jacengine.tf.memory import TensorMemory, compute_device
    from jacengine.tf.method_choice import Meters, calibrated, choose_method
    from jacengine.tf.model import float64_copy, load_model, model_hash
    from jacengine.tf.rewrite import without_time_distributed_dense

    if precision not in PRECISIONS:
        raise InputError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}.")
    if method not in METHOD_CHOICES:
        raise InputError(f"method {method!r} is not one of {', '.join(METHOD_CHOICES)}.")
    with phase("load model and inputs"):
        keras_model = load_model(model, trust_model=trust_model)
        if precision == "float64":
            keras_model = float64_copy(keras_model)
        source = Inputs(inputs)
        inputs_hash = source.content_hash()  # also refuses NaN/Inf, before any work
    device = compute_device()
    tensors = TensorMemory(device)
    process = ProcessMemory() if device.startswith("CPU") else None
    if process is not None:
        return_large_frees_to_the_os()  # resident memory then tracks what blocks hold (see jacengine.budget)
        # the budget counts from here: the model is loaded and the inputs opened and scanned
        # (pages of a memory-mapped .npy that the scan touched belong to the baseline)
        process.set_baseline()
    with phase("spec and causality probe"):
        spec, reason = build_spec(
            keras_model, source, t_out=t_out, f_out=f_out, f_in=f_in, causal=causal, method=method, layout=layout,
            max_lag=max_lag, store_dtype=store_dtype,
        )
        probe_inputs = source.read(0, PROBE_SAMPLES, PROBE_STEPS if spec.truncatable else None).astype(spec.compute_dtype)
        block_model = without_time_distributed_dense(keras_model, probe_inputs)
    if calibrate:
        meters = Meters(source, budget_bytes, tensors, process)
        if method == "auto":
            chosen, method_reason = choose_method(block_model, spec, meters)
        else:
            chosen, method_reason = calibrated(block_model, spec, meters), f"method {method} (as requested)"
        spec, computer, cost, plan, probe_results = (
            chosen.spec, chosen.computer, chosen.cost, chosen.plan, chosen.stored_results())
    else:  # the spec's method as given (auto: reverse, the first rung); a prior plan
        computer, cost, probe_results = BlockComputer(block_model, spec), prior_cost(keras_model, spec), {}
        plan = choose_plan(spec, cost, budget_bytes, fallback_to_smallest=True)
        method_reason = f"method {spec.method}"
    fingerprint = {
        "format": FORMAT_VERSION,
        "model": model_hash(keras_model),
        "inputs": inputs_hash,
        "spec": _sha(spec.to_json()),
        "grid": list(plan.grid),
        "dtypes": f"{spec.compute_dtype}->{spec.store_dtype}",
    }
    return Prepared(spec, reason, cost, plan, budget_bytes, fingerprint, source, computer, probe_results, method_reason)


def plan(model: Any, inputs: InputsLike, **options: Any) -> dict[str, Any]:
    """Plan a run without computing the Jacobian: blocks, predicted peak memory, store size and
    run time (the cost model is calibrated on one probe block). Options as for :func:`compute`."""
    return prepare(model, inputs, **options).summary()


def prepare_for_store(model: Any, inputs: InputsLike, store: JacobianStore, **options: Any) -> Prepared:
    """Prepare to compute into an existing ``store``, refusing one made from anything else.

    Settings left at "auto" (causal, method) take the store's decisions instead of probing again:
    a causality probe is bitwise and a method choice is timed, so either could decide otherwise
    in another process (a dask worker's single thread, a resumed run on a busy machine). Nothing
    is calibrated: the store's plan is the plan.
    """
    settled = dict(options)
    for name in ("causal", "method"):
        if settled.get(name, "auto") == "auto":
            settled[name] = getattr(store.spec, name)
    prepared = prepare(model, inputs, calibrate=False, **settled)
    store.check_fingerprint(dict(prepared.fingerprint, grid=store.fingerprint.get("grid")))
    return prepared


def init(model: Any, inputs: InputsLike, store: str | Path, *, overwrite: bool = False, **options: Any) -> JacobianStore:
    """Create the store and its plan (calibrated on the actual model) without computing the rest.

    What job arrays run first, so that their shards never race to create the store. Running it
    again on the store it made is harmless: the store is checked against the settings and
    returned. Options as for :func:`compute`.
    """
    path = Path(store)
    if is_jacengine_store(path) and not overwrite:
        existing = JacobianStore(path, mode="r")
        prepare_for_store(model, inputs, existing, **options)
        return existing
    check_writable_target(path, overwrite=overwrite)
    return _create(prepare(model, inputs, **options), path, overwrite=overwrite, sources=_sources(model, inputs))


def compute(
    model: Any,
    inputs: InputsLike,
    store: str | Path,
    *,
    budget: int | str = "2GiB",
    t_out: Selection = None,
    f_out: Selection = None,
    f_in: Selection = None,
    causal: Any = "auto",
    method: str = "auto",
    layout: str = "full",
    max_lag: int | None = None,
    store_dtype: str = "float32",
    precision: str = "model",
    overwrite: bool = False,
    progress: bool = True,
    trust_model: bool = False,
    gpu_memory_limit: int | str | None = None,
    executor: str = "local",
    scheduler: str | None = None,
    workers: int | None = None,
    cluster: Any = None,
    shard: tuple[int, int] | None = None,
) -> JacobianStore:
    """Compute J[b, t_out, f_out, t_in, f_in] = dy/dx of ``model`` at ``inputs`` into ``store``.

    Args:
        model: a ``keras.Model`` or a path to a ``.keras`` file (loaded in safe mode).
        inputs: (B, T, F) floats: a numpy array, a ``.npy`` path (memory-mapped) or a zarr array.
        store: directory of the zarr store to create, or of an existing store to resume.
        budget: peak memory allowed for the computation, bytes or a string like "2GiB"; it holds
            per process (each dask worker and each shard has the whole budget).
        t_out, f_out, f_in: output steps, output features and input features to keep (int,
            slice or increasing sequence; default all).
        causal: "auto" (detect; never mistakes a non-causal model for causal), True or False.
        method: "auto" (default: measures each method on probe blocks and takes the fastest that
            works), "reverse" (pfor-vectorised VJPs), "reverse-loop" (VJPs in a while loop) or
            "forward" (pfor-vectorised JVPs).
        layout: "full" (default): J over every input step, axis ``t_in``; "lag": only lags
            0..max_lag-1 behind each output step, axis ``lag`` (J[b, i, fo, l, fi] is the
            derivative by x[b, t_out[i] - l, fi]), computed from just the inputs those lags reach.
        max_lag: the lag window L of the "lag" layout.
        store_dtype: "float32" (default), "float64" (with float64 computation, for verification) or
            "float16" (half the disk; the largest rounding error is recorded in the store).
        precision: "model" (compute in the model's dtype) or "float64" (compute with a float64
            copy of the model and inputs, e.g. to verify a float32 Jacobian).
        overwrite: replace an existing jacengine store instead of resuming it.
        progress: show a progress bar.
        trust_model: allow loading ``.keras`` files that carry Python code (Lambda layers).
        gpu_memory_limit: cap TensorFlow's GPU memory (a logical device of this size); by
            default memory growth is enabled instead. Ignored on machines without a GPU.
        executor: "local" (this process) or "dask" (dask.distributed tasks).
        scheduler: with "dask", the address of an existing scheduler; default a LocalCluster.
        workers: with "dask" and no scheduler, the LocalCluster's worker processes (default:
            one per core).
        cluster: with "dask", a cluster object to use instead (e.g. a dask-jobqueue cluster).
        shard: ``(I, N)``: compute only shard I of N of the blocks (job arrays; the store must
            exist, see :func:`init`).

    Returns the opened :class:`JacobianStore`. Rerunning the same call on an interrupted store
    computes only the missing blocks; a store from a different model, inputs or settings is
    refused with a message naming what differs.
    """
    if executor not in EXECUTORS:
        raise InputError(f"executor {executor!r} is not one of {', '.join(EXECUTORS)}.")
    if executor == "local" and (scheduler or workers or cluster is not None):
        raise InputError("scheduler, workers and cluster apply to the dask executor; pass executor='dask' (--executor dask).")
    path = Path(store)
    resume = is_jacengine_store(path) and not overwrite
    if shard is not None:
        check_shard(*shard)
        if overwrite or not resume:
            raise InputError(
                f"shards compute into an existing store and never create or overwrite one ({path}); create it once "
                "with `jacengine init` (jacengine.init) using the same settings, then start the shards."
            )
    if not resume:
        check_writable_target(path, overwrite=overwrite)
    options = dict(budget=budget, t_out=t_out, f_out=f_out, f_in=f_in, causal=causal, method=method, layout=layout,
                   max_lag=max_lag, store_dtype=store_dtype, precision=precision, trust_model=trust_model,
                   gpu_memory_limit=gpu_memory_limit)
    prepared = prepare_for_store(model, inputs, JacobianStore(path), **options) if resume else prepare(model, inputs, **options)
    run: dict[str, Any] = dict(resume=resume, overwrite=overwrite, sources=_sources(model, inputs), shard=shard)
    if executor == "local":
        return execute(prepared, path, LocalExecutor(progress=progress), **run)
    with staged_for_workers(model, inputs, path) as (model_path, inputs_path):
        setup = WorkerSetup(model_path, inputs_path, str(path.resolve()), options, token=uuid.uuid4().hex)
        dask = DaskExecutor(setup, scheduler=scheduler, workers=workers, cluster=cluster, progress=progress)
        return execute(prepared, path, dask, **run)


def execute(prepared: Prepared, path: Path, executor: Any, *, resume: bool, overwrite: bool = False,
            sources: dict[str, str] | None = None, shard: tuple[int, int] | None = None) -> JacobianStore:
    """Create (or reopen and check) the store at ``path`` and compute its pending blocks (those
    of ``shard`` only, when given) with ``executor``."""
    if resume:
        target = JacobianStore(path, mode="r+")
        target.check_fingerprint(dict(prepared.fingerprint, grid=target.fingerprint.get("grid")))
        # other processes (shards, dask workers) may be writing right now: only stale leftovers
        concurrent = shard is not None or not isinstance(executor, LocalExecutor)
        removed = target.remove_partial_files(min_age_s=STALE_PARTIAL_S if concurrent else 0)
        if removed:
            log.info("removed %d temporary files of interrupted writes", removed)
    else:
        target = _create(prepared, path, overwrite=overwrite, sources=sources or {})
    pending = target.pending_blocks()
    if shard is not None:
        mine = {b.index for b in shard_blocks(target.spec, target.plan, *shard)}
        pending = [b for b in pending if b.index in mine]
    log.info(
        "%s; %s; %d of %d blocks to compute%s, budget %s per process",
        prepared.causal_reason, prepared.method_reason, len(pending), len(target.plan.blocks),
        f" (shard {shard[0]}/{shard[1]})" if shard else "", format_bytes(prepared.budget_bytes),
    )
    with stop_on_signals() as stop:
        executor.run(target, pending, prepared.compute_block, should_stop=stop)
    target.record_rounding_error()
    if stop():
        remaining = len(target.pending_blocks())
        raise RunInterrupted(
            f"stopped by {stop.signal_name} with {remaining} of {len(target.plan.blocks)} blocks left; "
            f"every finished block is saved in {path}. Rerun the same command to resume."
        )
    return target


def _sources(model: Any, inputs: Any) -> dict[str, str]:
    """Paths of the model and inputs when they were given as files (recorded for verify)."""
    return {name: str(Path(value).resolve()) for name, value in (("model", model), ("inputs", inputs))
            if isinstance(value, (str, Path))}


def _create(prepared: Prepared, path: Path, *, overwrite: bool, sources: dict[str, str]) -> JacobianStore:
    """A new store for ``prepared``, with the blocks calibration computed already in it."""
    target = JacobianStore.create(path, prepared.spec, prepared.plan, prepared.fingerprint, overwrite=overwrite, sources=sources)
    for block, result in prepared.probe_results.items():
        target.write_block(block, result)
    return target
