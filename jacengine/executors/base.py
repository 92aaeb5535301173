"""The executor contract: map a block task over blocks, stop between blocks on request.

An executor knows blocks, processes and progress bars, not models: it never imports a backend
or the API. It receives a task (:class:`Task`, implemented by :class:`jacengine.task.BlockTask`)
and runs its blocks in :func:`execution_order`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from jacengine.planning.blocks import Block, Plan
from jacengine.planning.spec import JacobianSpec

ShouldStop = Callable[[], bool]


class Task(Protocol):
    """One run's block computation: in-process halves (``compute``, ``write``) and the whole
    step for another process (``__call__``, picklable)."""

    @property
    def spec(self) -> JacobianSpec: ...

    @property
    def plan(self) -> Plan: ...

    def compute(self, block: Block) -> np.ndarray: ...

    def write(self, block: Block, values: np.ndarray) -> None: ...

    def claim(self, block: Block, *, wait: bool) -> Claim | None:
        """This process's claim on ``block`` (None: another run holds it; see
        :meth:`jacengine.storage.ledger.BlockLedger.claim`)."""
        ...

    def is_done(self, block: Block) -> bool: ...

    def __call__(self, index: int) -> dict[str, Any]: ...


class Claim(Protocol):
    def release(self) -> None: ...


class Executor(Protocol):
    """Runs a task's blocks; ``concurrent`` says whether other processes may be writing to the
    same store meanwhile (their temporary files must then be left alone), ``in_process`` whether
    the blocks run in this process (whose memory is then the budgeted one)."""

    concurrent: bool
    in_process: bool

    def run(self, task: Task, blocks: Sequence[Block], should_stop: ShouldStop = lambda: False) -> int:
        """Compute and write the :meth:`assigned` part of ``blocks``; returns how many completed."""
        ...

    def assigned(self, task: Task, blocks: Sequence[Block]) -> list[Block]:
        """The part of ``blocks`` that :meth:`run` computes (all of them, but for a shard)."""
        ...


def execution_order(blocks: Sequence[Block]) -> list[Block]:
    """Blocks grouped by shape, shapes in order of first appearance, plan order within a shape:
    each compiled shape is traced once and released before the next."""
    first_use: dict[tuple[int, ...], int] = {}
    for block in blocks:
        first_use.setdefault(block.shape_key, len(first_use))
    return sorted(blocks, key=lambda b: (first_use[b.shape_key], b.index))
