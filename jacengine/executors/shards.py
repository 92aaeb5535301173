"""Job-array shards: a deterministic, cost-balanced split of a plan's blocks over N processes,
and the executor that runs one shard's blocks (:class:`ShardExecutor`).

Every shard of a job array computes the same assignment from the stored plan alone, so shards
need no coordination: shard I computes the pending blocks among those assigned to I. The split
is over *all* blocks, not the pending ones, so a shard that starts late or is requeued after its
siblings made progress still agrees with them on who owns what.

Causal blocks differ in cost (a later block watches a longer input prefix), so blocks are
balanced by predicted work (``CostModel.work``: batch x rows x watched steps, which is what
both time and memory scale with), greedily: longest first, each to the least-loaded shard.
"""

from __future__ import annotations

import heapq
import os
import re
from collections.abc import Mapping, Sequence

from jacengine.errors import InputError
from jacengine.executors.base import Executor, ShouldStop, Task
from jacengine.planning.blocks import Block, Plan
from jacengine.planning.costmodel import CostModel
from jacengine.planning.spec import JacobianSpec

# (index variable, count variable, first index variable) per scheduler; PBS has no count
# variable, so job scripts export JACENGINE_SHARD_COUNT.
_ENVIRONMENTS = (
    ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN"),
    ("PBS_ARRAY_INDEX", "JACENGINE_SHARD_COUNT", None),  # PBS Pro
    ("PBS_ARRAYID", "JACENGINE_SHARD_COUNT", None),  # Torque
)


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' -> (I, N) with 0 <= I < N."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match:
        raise InputError(f"shard {text!r} is not of the form I/N (e.g. 0/4 for the first of 4 shards).")
    return check_shard(int(match[1]), int(match[2]))


def check_shard(index: int, count: int) -> tuple[int, int]:
    if count < 1:
        raise InputError(f"the number of shards must be at least 1, got {count}.")
    if not 0 <= index < count:
        raise InputError(f"shard index {index} is out of range for {count} shards; use 0 to {count - 1}.")
    return index, count


def shard_from_env(environ: Mapping[str, str] = os.environ) -> tuple[int, int]:
    """The shard of this job-array task, from SLURM's or PBS's environment variables."""
    for index_name, count_name, first_name in _ENVIRONMENTS:
        if index_name in environ:
            if count_name not in environ:
                raise InputError(f"{index_name} is set but {count_name} is not; export {count_name} (the number of shards).")
            first = int(environ.get(first_name, 0)) if first_name else 0
            return check_shard(int(environ[index_name]) - first, int(environ[count_name]))
    names = ", ".join(index for index, _, _ in _ENVIRONMENTS)
    raise InputError(f"--shard-from-env found none of {names}; is this a job-array task? Otherwise pass --shard I/N.")


def assign_blocks(spec: JacobianSpec, plan: Plan, count: int) -> list[list[Block]]:
    """Blocks per shard, each list in plan order; predicted work balanced (longest first)."""
    loads = [(0, shard) for shard in range(count)]
    assigned: list[list[Block]] = [[] for _ in range(count)]
    for block in sorted(plan.blocks, key=lambda b: (-CostModel.work(spec, b), b.index)):
        load, shard = heapq.heappop(loads)
        assigned[shard].append(block)
        heapq.heappush(loads, (load + CostModel.work(spec, block), shard))
    return [sorted(blocks, key=lambda b: b.index) for blocks in assigned]


def shard_blocks(spec: JacobianSpec, plan: Plan, index: int, count: int) -> list[Block]:
    check_shard(index, count)
    return assign_blocks(spec, plan, count)[index]


class ShardExecutor:
    """Runs only shard ``index`` of ``count``'s blocks, with ``inner`` (any executor). Shards of
    a job array run at the same time on one store, so it is always ``concurrent``."""

    concurrent = True

    def __init__(self, inner: Executor, index: int, count: int) -> None:
        self.inner = inner
        self.in_process = inner.in_process
        self.index, self.count = check_shard(index, count)

    def assigned(self, task: Task, blocks: Sequence[Block]) -> list[Block]:
        mine = {b.index for b in shard_blocks(task.spec, task.plan, self.index, self.count)}
        return [b for b in blocks if b.index in mine]

    def run(self, task: Task, blocks: Sequence[Block], should_stop: ShouldStop = lambda: False) -> int:
        return self.inner.run(task, self.assigned(task, blocks), should_stop)
