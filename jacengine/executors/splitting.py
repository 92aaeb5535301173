"""Out of memory inside a block: split it and retry, and split later blocks of that shape too.

A block is the unit of writing (whole chunks, one manifest entry); a split only changes how it is
computed. The halves are computed one after the other and joined before the block is written, so
the store, the plan and the manifest are unchanged and resume stays exact.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import numpy as np

from jacengine.errors import BlockOutOfMemory, BudgetError
from jacengine.planning.blocks import Block

log = logging.getLogger("jacengine")

ComputeBlock = Callable[[Block], np.ndarray]  # a block's J from the block (what a task computes)


def halves(block: Block) -> tuple[Block, Block, int]:
    """Two sub-blocks covering ``block`` and the axis they split (1: rows, 0: batch)."""
    if block.n_rows > 1:
        middle = block.row_start + block.n_rows // 2
        first = dataclasses.replace(block, row_stop=middle, compute_rows=middle - block.row_start)
        second = dataclasses.replace(block, row_start=middle, compute_rows=block.row_stop - middle)
        return first, second, 1
    if block.n_batch > 1:
        middle = block.batch_start + block.n_batch // 2
        first = dataclasses.replace(block, batch_stop=middle, compute_batch=middle - block.batch_start)
        second = dataclasses.replace(block, batch_start=middle, compute_batch=block.batch_stop - middle)
        return first, second, 0
    raise BudgetError(
        f"block {block.index} ran out of memory at one sample and one output step; "
        "this model and sequence length need a larger budget (or a machine with more memory)."
    )


class SplittingCompute:
    """Wraps a block computation: on :class:`BlockOutOfMemory`, compute the block in halves
    (recursively), and start later blocks of the same shape at the depth that worked."""

    def __init__(self, compute: ComputeBlock) -> None:
        self.compute = compute
        self.depth_for_shape: dict[tuple[int, int, int, int], int] = {}

    def __call__(self, block: Block) -> np.ndarray:
        depth = self.depth_for_shape.get(block.shape_key, 0)
        values, used = self._compute(block, depth)
        if used > depth:
            log.warning("block %d ran out of memory; blocks of its shape now run in %d parts", block.index, 2**used)
            self.depth_for_shape[block.shape_key] = used
        return values

    def _compute(self, block: Block, depth: int) -> tuple[np.ndarray, int]:
        if depth == 0:
            try:
                return self.compute(block), 0
            except BlockOutOfMemory:
                depth = 1
        first, second, axis = halves(block)
        left, used_left = self._compute(first, depth - 1)
        right, used_right = self._compute(second, used_left)  # same shape: start where the first half ended
        return np.concatenate([left, right], axis=axis), 1 + max(used_left, used_right)
