"""Everything decided before the first block is stored: the spec, the plan within the budget,
the fingerprint that guards resumes, and the live computation that fills blocks.

This is where the engine meets a backend (:mod:`jacengine.backends`): it loads the model,
describes it, calibrates and plans through the backend's protocol, and knows no framework.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from dask.utils import format_bytes

from jacengine.backends import backend_for
from jacengine.errors import BudgetError, setting
from jacengine.options import RunOptions
from jacengine.planning import method_choice
from jacengine.planning.blocks import Block, Plan
from jacengine.planning.budget import BUDGET_DEFINITION
from jacengine.planning.calibration import BlockComputer
from jacengine.planning.costmodel import CostModel, choose_plan, minimum_budget, predicted_peak, predicted_store_bytes
from jacengine.planning.spec import JacobianSpec
from jacengine.storage.inputs import Inputs, InputsLike
from jacengine.storage.store import FORMAT_VERSION, READABLE_FORMATS, JacobianStore
from jacengine.timing import phase


@dataclass
class Computation:
    """The live half of a preparation: reads a block's inputs and computes its J."""

    inputs: Inputs
    computer: BlockComputer

    def __call__(self, block: Block) -> np.ndarray:
        x = self.inputs.read(block.batch_start, block.batch_stop, block.forward_steps)
        return self.computer.compute(block, x)


@dataclass
class Prepared:
    """What a run decided (plain data), with the computation that carries it out."""

    spec: JacobianSpec
    causal_reason: str
    method_reason: str
    cost: CostModel
    plan: Plan
    budget_bytes: int
    fingerprint: dict[str, Any]
    computation: Computation
    # calibration's blocks of this plan, until written (the store's creation takes them out, so
    # that the run does not hold their memory); how many there were
    probe_results: dict[Block, np.ndarray] = field(default_factory=dict)
    measured_peak: Callable[[], int | None] = lambda: None  # the budgeted peak in this process, read now
    probe_blocks: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.probe_blocks = len(self.probe_results)

    def summary(self) -> dict[str, Any]:
        """What ``jacengine plan`` prints: blocks and predictions, nothing computed."""
        return {
            "shape": list(self.spec.shape),
            "causal": self.spec.causal,
            "causal_reason": self.causal_reason,
            "method": self.spec.method,
            "method_reason": self.method_reason,
            "chunks": list(self.plan.chunks(self.spec)),
            "blocks": len(self.plan.blocks),
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


def prepare(model: Any, inputs: InputsLike, options: RunOptions, *, calibrate: bool = True,
            reserve: Callable[[JacobianSpec], int] | None = None) -> Prepared:
    """Load, describe, calibrate and plan: everything but the blocks themselves.

    Without ``calibrate`` the plan comes from the backend's prior cost model and the spec's
    method as given ("auto": the spec's provisional one); resumes and workers use the store's plan.
    ``reserve(spec)``: bytes the run holds besides its blocks (a result kept in memory); the
    blocks are planned within what the budget leaves.
    """
    backend = backend_for(model, options.backend)
    backend.configure(options)
    with phase("load model and inputs"):
        loaded = backend.load(model, options)
        source = Inputs(inputs)
        inputs_hash = source.content_hash()  # also refuses NaN/Inf, before any work
    # the budget counts from here: the model is loaded and the inputs opened and scanned
    # (pages of a memory-mapped .npy that the scan touched belong to the baseline)
    meter = backend.start_budget()
    with phase("spec and causality probe"):
        description = backend.describe(loaded, source, options)
    budget = options.budget_bytes - (reserve(description.spec) if reserve is not None else 0)
    if budget <= 0:
        raise BudgetError(f"the result alone ({format_bytes(options.budget_bytes - budget)}) does not fit the budget of "
                          f"{format_bytes(options.budget_bytes)}; raise {setting('budget')}.")
    probing = backend.probing(description, source, meter)
    if calibrate:
        chosen, method_reason = method_choice.calibrate(probing, description.spec, budget, options.method)
        spec, cost, plan, computer = chosen.spec, chosen.cost, chosen.plan, chosen.prober.computer
        probe_results = chosen.stored_results()
        chosen.results.clear()  # probes outside the plan are garbage: free them now, not at the next gc cycle
    else:
        spec = description.spec
        cost, computer = probing.prior(spec), probing.prober(spec, strict=False).computer
        plan = choose_plan(spec, cost, budget, fallback_to_smallest=True)
        method_reason, probe_results = f"method {spec.method}", {}
    fingerprint = {
        "format": FORMAT_VERSION,
        "model": backend.model_hash(loaded, source.shape[2]),
        "inputs": inputs_hash,
        "spec": _sha(spec.to_json()),
        "grid": list(plan.grid),
        "dtypes": f"{spec.compute_dtype}->{spec.store_dtype}",
    }
    return Prepared(spec, description.causal_reason, method_reason, cost, plan, budget, fingerprint,
                    Computation(source, computer), probe_results, meter.peak)


def prepare_for_store(model: Any, inputs: InputsLike, store: JacobianStore, options: RunOptions) -> Prepared:
    """Prepare to compute into an existing ``store``, refusing one made from anything else.

    Settings left at "auto" (causal, method) take the store's decisions instead of probing again:
    a causality probe is bitwise and a method choice is timed, so either could decide otherwise
    in another process (a dask worker's single thread, a resumed run on a busy machine). Nothing
    is calibrated: the store's plan is the plan.
    """
    settled = {name: getattr(store.spec, name) for name in ("causal", "method") if getattr(options, name) == "auto"}
    prepared = prepare(model, inputs, options.replace(**settled), calibrate=False)
    # an older format this version still writes (its manifest as it is) counts as the same
    stored_format = store.fingerprint.get("format")
    same_format = stored_format if stored_format in READABLE_FORMATS else FORMAT_VERSION
    store.check_fingerprint(dict(prepared.fingerprint, grid=store.fingerprint.get("grid"), format=same_format))
    return prepared
