"""The public entry points: :func:`compute` and :func:`plan`.

TensorFlow is imported inside these functions only, so ``import jacengine`` stays fast.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from jacengine.budget import BUDGET_DEFINITION, ProcessMemory, format_bytes, parse_budget
from jacengine.costmodel import CostModel, choose_plan, predicted_peak, predicted_store_bytes
from jacengine.errors import RunInterrupted
from jacengine.executors import LocalExecutor
from jacengine.inputs import Inputs, InputsLike
from jacengine.interrupt import stop_on_signals
from jacengine.plan import Plan
from jacengine.selection import Selection
from jacengine.spec import JacobianSpec
from jacengine.store import FORMAT_VERSION, JacobianStore, check_writable_target, is_jacengine_store

log = logging.getLogger("jacengine")


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
    computer: Any  # jacengine.tf.blocks.BlockComputer
    probe_result: np.ndarray | None = None

    def summary(self) -> dict[str, Any]:
        """What ``jacengine plan`` prints: blocks and predictions, nothing computed."""
        blocks = self.plan.blocks
        return {
            "shape": list(self.spec.shape),
            "causal": self.spec.causal,
            "causal_reason": self.causal_reason,
            "chunks": list(self.plan.chunks(self.spec)),
            "blocks": len(blocks),
            "block_shapes": [list(k) for k in self.plan.shape_keys],
            "budget_bytes": self.budget_bytes,
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
    store_dtype: str = "float32",
    trust_model: bool = False,
    gpu_memory_limit: int | str | None = None,
    calibrate: bool = True,
) -> Prepared:
    """Validate everything, build the spec, calibrate the cost model and plan the blocks."""
    budget_bytes = parse_budget(budget)
    from jacengine.tf.memory import configure_gpus

    configure_gpus(parse_budget(gpu_memory_limit) if gpu_memory_limit is not None else None)
    from jacengine.tf.blocks import BlockComputer
    from jacengine.tf.calibrate import prior_cost
    from jacengine.tf.introspect import build_spec
    from jacengine.tf.memory import TensorMemory, compute_device
    from jacengine.tf.model import load_model, model_hash
    from jacengine.tf.rewrite import without_time_distributed_dense

    keras_model = load_model(model, trust_model=trust_model)
    source = Inputs(inputs)
    inputs_hash = source.content_hash()  # also refuses NaN/Inf, before any work
    device = compute_device()
    tensors = TensorMemory(device)
    process = ProcessMemory() if device.startswith("CPU") else None
    if process is not None:
        # the budget counts from here: the model is loaded and the inputs opened and scanned
        # (pages of a memory-mapped .npy that the scan touched belong to the baseline)
        process.set_baseline()
    spec, reason = build_spec(
        keras_model, source, t_out=t_out, f_out=f_out, f_in=f_in, causal=causal, method=method, store_dtype=store_dtype
    )
    probe_inputs = source.read(0, min(spec.batch, 2)).astype(spec.compute_dtype)
    computer = BlockComputer(without_time_distributed_dense(keras_model, probe_inputs), spec)
    cost = prior_cost(keras_model, spec)
    plan = choose_plan(spec, cost, budget_bytes, fallback_to_smallest=True)
    probe_result = None
    if calibrate:
        cost, plan, probe_result = _calibrated_plan(spec, computer, source, plan.blocks[0], budget_bytes, tensors, process)
    fingerprint = {
        "format": FORMAT_VERSION,
        "model": model_hash(keras_model),
        "inputs": inputs_hash,
        "spec": _sha(spec.to_json()),
        "grid": list(plan.grid),
        "dtypes": f"{spec.compute_dtype}->{spec.store_dtype}",
    }
    return Prepared(spec, reason, cost, plan, budget_bytes, fingerprint, source, computer, probe_result)


def _calibrated_plan(
    spec: JacobianSpec, computer: Any, source: Inputs, probe: Any, budget_bytes: int, tensors: Any, process: Any
) -> tuple[CostModel, Plan, np.ndarray | None]:
    """Measure a probe block, plan, and measure again on the planned shape when it differs (a
    trace's memory depends on the shape, and the plan's first block is the one whose peak
    matters); the cost model keeps the most pessimistic fixed term seen. Returns the cost model,
    the plan, and the probe's result when the probe is the plan's first block."""
    from jacengine.tf.calibrate import calibrate

    cost, probe_result = calibrate(computer, source, probe, tensors, process)
    plan = choose_plan(spec, cost, budget_bytes)
    for _ in range(2):
        if plan.blocks[0].shape_key == probe.shape_key:
            break
        computer.release()  # the probe's compiled graph will not be used again: free it
        probe = plan.blocks[0]
        measured, probe_result = calibrate(computer, source, probe, tensors, process)
        cost = replace(measured, fixed_bytes=max(cost.fixed_bytes, measured.fixed_bytes))
        plan = choose_plan(spec, cost, budget_bytes)
    return cost, plan, probe_result if plan.blocks[0] == probe else None


def plan(model: Any, inputs: InputsLike, **options: Any) -> dict[str, Any]:
    """Plan a run without computing the Jacobian: blocks, predicted peak memory, store size and
    run time (the cost model is calibrated on one probe block). Options as for :func:`compute`."""
    return prepare(model, inputs, **options).summary()


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
    store_dtype: str = "float32",
    overwrite: bool = False,
    progress: bool = True,
    trust_model: bool = False,
    gpu_memory_limit: int | str | None = None,
) -> JacobianStore:
    """Compute J[b, t_out, f_out, t_in, f_in] = dy/dx of ``model`` at ``inputs`` into ``store``.

    Args:
        model: a ``keras.Model`` or a path to a ``.keras`` file (loaded in safe mode).
        inputs: (B, T, F) floats: a numpy array, a ``.npy`` path (memory-mapped) or a zarr array.
        store: directory of the zarr store to create, or of an existing store to resume.
        budget: peak memory allowed for the computation, bytes or a string like "2GiB".
        t_out, f_out, f_in: output steps, output features and input features to keep (int,
            slice or increasing sequence; default all).
        causal: "auto" (detect; never mistakes a non-causal model for causal), True or False.
        method: "auto" or "reverse" (pfor-vectorised reverse mode).
        store_dtype: "float32" (default) or "float64" (with a float64 model, for verification).
        overwrite: replace an existing jacengine store instead of resuming it.
        progress: show a progress bar.
        trust_model: allow loading ``.keras`` files that carry Python code (Lambda layers).
        gpu_memory_limit: cap TensorFlow's GPU memory (a logical device of this size); by
            default memory growth is enabled instead. Ignored on machines without a GPU.

    Returns the opened :class:`JacobianStore`. Rerunning the same call on an interrupted store
    computes only the missing blocks; a store from a different model, inputs or settings is
    refused with a message naming what differs.
    """
    path = Path(store)
    resume = is_jacengine_store(path) and not overwrite
    if not resume:
        check_writable_target(path, overwrite=overwrite)
    prepared = prepare(
        model, inputs, budget=budget, t_out=t_out, f_out=f_out, f_in=f_in, causal=causal,
        method=method, store_dtype=store_dtype, trust_model=trust_model, gpu_memory_limit=gpu_memory_limit,
        calibrate=not resume,
    )
    sources = {name: str(Path(value).resolve()) for name, value in (("model", model), ("inputs", inputs))
               if isinstance(value, (str, Path))}
    return execute(prepared, path, resume=resume, overwrite=overwrite, progress=progress, sources=sources)


def execute(
    prepared: Prepared, path: Path, *, resume: bool, overwrite: bool, progress: bool, sources: dict[str, str] | None = None
) -> JacobianStore:
    """Create (or reopen and check) the store at ``path`` and compute its pending blocks."""
    if resume:
        target = JacobianStore(path, mode="r+")
        requested = dict(prepared.fingerprint, grid=target.fingerprint.get("grid"))
        target.check_fingerprint(requested)
        removed = target.remove_partial_files()
        if removed:
            log.info("removed %d temporary files of interrupted writes", removed)
    else:
        target = JacobianStore.create(
            path, prepared.spec, prepared.plan, prepared.fingerprint, overwrite=overwrite, sources=sources
        )
        if prepared.probe_result is not None:
            target.write_block(prepared.plan.blocks[0], prepared.probe_result)
    pending = target.pending_blocks()
    log.info(
        "%s; %d of %d blocks to compute, budget %s",
        prepared.causal_reason, len(pending), len(target.plan.blocks), format_bytes(prepared.budget_bytes),
    )

    def compute_block(block: Any) -> np.ndarray:
        x = prepared.inputs.read(block.batch_start, block.batch_stop, block.forward_steps)
        return prepared.computer.compute(block, x)

    with stop_on_signals() as stop:
        LocalExecutor(progress=progress, should_stop=stop).run(target, pending, compute_block)
    if stop():
        remaining = len(target.pending_blocks())
        raise RunInterrupted(
            f"stopped by {stop.signal_name} with {remaining} of {len(target.plan.blocks)} blocks left; "
            f"every finished block is saved in {path}. Rerun the same command to resume."
        )
    return target
