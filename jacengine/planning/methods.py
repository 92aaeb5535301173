"""The differentiation methods, by name: what each does and how its work grows with a block.

A generic method treats the model as a black box and is two things: a row here (name,
description, work formula, whether it vectorises with pfor) and the backend's function that
differentiates a block that way (for TensorFlow, :data:`jacengine.tf.methods.DIFFERENTIATE`).
A structured method reads the model's layers and has a block computer of its own (for
TensorFlow, ``recurrent``: :mod:`jacengine.tf.recurrent`). The spec, the CLI, the Python API,
the cost model, ``method="auto"`` and the benchmarks all read this registry.

The work formula is what a block's memory and time grow with (see
:mod:`jacengine.planning.costmodel`): the cost model is ``fixed + per-work x work``, calibrated
per method on the actual model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

# VJPs a reverse-loop block runs concurrently (its while loop's parallel iterations)
LOOP_PARALLEL_ROWS = 16
# A reverse-loop iteration costs about the same time for up to this many samples (the loop
# vectorises over samples only), so its time work counts batches of that many.
LOOP_FREE_BATCH = 32
# A recurrent sweep's local Jacobians cost about as much per (sample, step) as this many rows of
# its chain (each pushes D + F_in tangents through the gates; a row is one D x (D + F_in) matmul).
LOCAL_JACOBIAN_ROWS = 64


@dataclass(frozen=True)
class BlockSize:
    """The sizes a work formula needs: ``batch`` samples (at least two: one runs as two, see
    :mod:`jacengine.tf.block_computer`), ``rows`` output steps of ``f_out`` features each, the
    ``prefix`` of input steps the backward pass runs over, the ``watched`` input steps
    differentiated (of ``f_in`` features each) and the ``forward_steps`` fed to the model."""

    batch: int
    rows: int
    prefix: int
    watched: int
    forward_steps: int
    f_out: int
    f_in: int

    @property
    def result_entries(self) -> int:
        """Entries of the block's Jacobian: (batch, rows, f_out, watched, f_in)."""
        return self.batch * self.rows * self.f_out * self.watched * self.f_in


def _reverse(size: BlockSize, memory: bool) -> int:
    """One backward pass over the prefix per output row, all rows at once."""
    return size.batch * size.rows * size.f_out * size.prefix


def _reverse_loop(size: BlockSize, memory: bool) -> int:
    """The same backward passes, :data:`LOOP_PARALLEL_ROWS` VJPs at a time (memory), and batches
    of :data:`LOOP_FREE_BATCH` samples cost alike (time). The block's result, which grows with
    every row, is the method's ``result_copies``."""
    if memory:
        rows = min(size.rows, math.ceil(LOOP_PARALLEL_ROWS / size.f_out))
        return size.batch * rows * size.f_out * size.prefix
    return max(size.batch, LOOP_FREE_BATCH) * size.rows * size.f_out * size.prefix


def _forward(size: BlockSize, memory: bool) -> int:
    """One forward pass per watched input direction, each keeping the block's rows."""
    return size.batch * size.watched * size.f_in * (size.forward_steps + size.rows * size.f_out)


def _recurrent(size: BlockSize, memory: bool) -> int:
    """Memory: per sample, the recorded state at every step fed to the chain and the two
    adjoint buffers of every output row (vectors of at most D + |f_in| entries; the window of
    local Jacobians is a fixed size, and the result is the method's ``result_copies``). Time:
    per sample and step, one matmul per row in the sweep plus the step's local Jacobians."""
    if memory:
        return size.batch * (size.forward_steps + 2 * size.rows * size.f_out)
    return size.batch * size.prefix * (size.rows * size.f_out + LOCAL_JACOBIAN_ROWS)


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    work: Callable[[BlockSize, bool], int]  # (sizes, memory) -> memory work or time work
    vectorised: bool  # pfor: fast where it converts every op, holds every row at once
    # Copies of the block's result (B x R x |f_out| x watched x |f_in| entries) held at its peak
    # besides the memory work: 0 where the work formula grows with the result already.
    result_copies: int = 0
    # Reads the model's layers (only some models qualify) instead of treating it as a black box.
    structured: bool = False
    # Budgets above this many bytes are planned as this much (None: the whole budget is used).
    plan_bytes: int | None = None


METHODS: dict[str, Method] = {
    method.name: method
    for method in (
        Method("reverse", "pfor-vectorised VJPs, one per output row", _reverse, vectorised=True),
        # the loop's TensorArray of VJPs, its stack, the transpose to J's layout, the feature
        # gather, and the copy the store's writer holds while the next block runs (docs/design.md,
        # "Planning margins")
        Method("reverse-loop", "VJPs in a while loop; slower, works wherever gradients do", _reverse_loop,
               vectorised=False, result_copies=5),
        Method("forward", "pfor-vectorised JVPs, one per watched input; for few inputs and many outputs", _forward,
               vectorised=True),
        # the block's J, and the previous block's, which the store's writer holds while this one
        # runs; budgets above 1 GiB gain nothing (docs/design.md, "Planning margins")
        Method("recurrent", "products of per-step Jacobians, for chains of RNN and per-step layers; the fastest where "
               "a model qualifies", _recurrent, vectorised=False, result_copies=2, structured=True, plan_bytes=2**30),
    )
}
GENERIC_METHODS = tuple(name for name, method in METHODS.items() if not method.structured)
METHOD_CHOICES = ("auto", *METHODS)  # "auto": measure each on probe blocks, take the fastest that works


def describe_methods() -> str:
    """One line per method, for help texts."""
    return "; ".join(f"{m.name} ({m.description})" for m in METHODS.values())
