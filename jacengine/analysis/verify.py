"""Check a store: block checksums, and sampled entries recomputed independently.

Corrupt blocks are marked pending again, so the next ``compute`` (resume) recomputes them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jacengine.backends import backend_for, runs_code_when_loaded, untrusted_model_message
from jacengine.errors import StoreMismatchError
from jacengine.logs import accepts_verbose
from jacengine.options import MODEL_IDENTITY, RunOptions
from jacengine.planning.spec import JacobianSpec
from jacengine.progress import iterate
from jacengine.storage.inputs import Inputs
from jacengine.storage.ledger import block_checksum
from jacengine.storage.store import JacobianStore


@dataclass
class VerifyReport:
    blocks_total: int
    missing: list[int]
    corrupt: list[int]
    rows_checked: int = 0
    max_gradient_error: float | None = None  # relative to max |J| of the checked rows
    entries_checked: int = 0
    max_finite_difference_error: float | None = None
    tolerance: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        errors = [e for e in (self.max_gradient_error, self.max_finite_difference_error) if e is not None]
        return not self.corrupt and not self.missing and all(e <= self.tolerance for e in errors)

    def to_dict(self) -> dict[str, Any]:
        return dict(dataclasses.asdict(self), ok=self.ok)


def check_checksums(store: JacobianStore, done: set[int], progress: bool | None = None) -> list[int]:
    """Indices of ``done`` blocks whose bytes no longer match the checksum recorded with them in
    the manifest (a check of the whole block, which also catches chunk files swapped with
    each other: each chunk's own CRC-32C cannot)."""
    manifest = store.manifest()
    corrupt = []
    for block in iterate([b for b in store.plan.blocks if b.index in done], "checksums", progress, unit="block"):
        _, recorded = manifest[block.index]
        try:
            matches = block_checksum(store.read_block(block)) == int(recorded)
        except Exception:  # an unreadable chunk is corrupt too
            matches = False
        if not matches:
            corrupt.append(block.index)
    return corrupt


@accepts_verbose
def verify(
    path: str | Path,
    model: Any = None,
    inputs: Any = None,
    *,
    samples: int = 16,
    seed: int = 0,
    repair: bool = True,
    trust_model: bool = False,
    progress: bool | None = None,
) -> VerifyReport:
    """Verify the store at ``path``.

    Every done block's checksum is checked. When the model and inputs are known (given, or the
    file paths recorded in the store), ``samples`` random (sample, output step, output feature)
    rows are recomputed with a plain eager gradient and compared over every input step (the
    skipped upper triangle included), and a few entries are checked by central finite differences
    on a float64 copy of the model. With ``repair``, corrupt blocks are marked pending. A model
    the store names that runs code when loaded (an import path, a SavedModel) is loaded only
    with ``trust_model``: a store may come from anyone.
    ``progress`` and ``verbose`` as for :func:`jacengine.compute`.
    """
    store = JacobianStore(path, mode="r+" if repair else "r")
    done, damaged = store.completion()  # damaged: recorded done, but a chunk file is missing, short or fails its CRC
    report = VerifyReport(
        blocks_total=len(store.plan.blocks),
        missing=[b.index for b in store.plan.blocks if b.index not in done | damaged],
        corrupt=sorted(damaged | set(check_checksums(store, done, progress))),
    )
    if report.corrupt and repair:
        store.forget_blocks(report.corrupt)
        report.notes.append(f"blocks {report.corrupt} marked pending: rerun compute to recompute them")
    sources = store.attrs.get("sources", {})
    named_by_store = model is None  # a store's model that runs code loads only with trust: below
    model = model if model is not None else sources.get("model")
    inputs = inputs if inputs is not None else sources.get("inputs")
    if model is None or inputs is None:
        report.notes.append("model or inputs unknown: pass them to recompute sampled entries")
        return report
    if named_by_store and runs_code_when_loaded(model) and not trust_model:
        report.notes.append("sampled entries not recomputed: " + untrusted_model_message(model, "the store"))
        return report
    identity = {name: sources[name] for name in MODEL_IDENTITY if name in sources}
    _check_samples(store, report, model, Inputs(inputs), samples, seed, RunOptions(trust_model=trust_model, **identity),
                   progress)
    return report


def _check_samples(
    store: JacobianStore, report: VerifyReport, model: Any, inputs: Inputs, samples: int, seed: int, options: RunOptions,
    progress: bool | None,
) -> None:
    backend = backend_for(model)
    loaded = backend.load(model, options)
    fingerprint = store.fingerprint
    for name, actual in (("model", backend.model_hash(loaded, inputs.shape[2])), ("inputs", inputs.content_hash())):
        if fingerprint.get(name) != actual:
            raise StoreMismatchError(f"the {name} given to verify is not the one that produced {store.path}.")
    spec = store.spec
    report.tolerance = {"float64": 1e-10, "float32": 1e-4, "float16": 2e-3}[spec.store_dtype]
    skip = set(report.missing) | set(report.corrupt)
    candidates = [b for b in store.plan.blocks if b.index not in skip]
    if not candidates:
        return
    rng = np.random.default_rng(seed)
    references = backend.references(loaded)
    if references.finite_differences_unavailable:
        report.notes.append(f"finite differences skipped: {references.finite_differences_unavailable}")
    gradient_errors, difference_errors = [], []
    for i in iterate(range(samples), "recomputed rows", progress, unit="row"):
        block = candidates[rng.integers(len(candidates))]
        b = int(rng.integers(block.batch_start, block.batch_stop))
        row = int(rng.integers(block.row_start, block.row_stop))
        fo_index = int(rng.integers(len(spec.f_out)))
        step = None if spec.sequence_to_one else spec.t_out[row]
        sample = inputs.read(b, b + 1)
        stored = np.asarray(store.array[b, row, fo_index])  # (T, |f_in|)
        reference = references.gradient_row(sample, step, spec.f_out[fo_index])[:, list(spec.f_in)]
        scale = max(float(np.abs(reference).max()), 1e-30)
        gradient_errors.append(float(np.abs(stored - _as_stored(spec, reference, step)).max()) / scale)
        if not references.finite_differences_unavailable and i < 4:
            last = step if step is not None else spec.input_steps - 1
            first = max(0, last - spec.max_lag + 1) if spec.max_lag is not None else 0
            t_in = int(rng.integers(first, last + 1))
            fi_index = int(rng.integers(len(spec.f_in)))
            value = references.central_difference(sample, step, spec.f_out[fo_index], t_in, spec.f_in[fi_index])
            position = last - t_in if spec.layout == "lag" else t_in
            difference_errors.append(abs(float(stored[position, fi_index]) - value) / scale)
    report.rows_checked = len(gradient_errors)
    report.max_gradient_error = max(gradient_errors)
    if difference_errors:
        report.entries_checked = len(difference_errors)
        report.max_finite_difference_error = max(difference_errors)


def _as_stored(spec: JacobianSpec, row: np.ndarray, step: int | None) -> np.ndarray:
    """A gradient row over input steps (T, |f_in|) in the store's layout: unchanged, or its lags
    0..max_lag-1 behind ``step`` (zero before the first input step)."""
    if spec.max_lag is None or step is None:
        return row
    steps = step - np.arange(spec.max_lag)
    return np.where((steps >= 0)[:, None], row[np.clip(steps, 0, None)], 0)
