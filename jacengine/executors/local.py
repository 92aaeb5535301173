"""The local executor: a plain loop in this process; the default and the debugging path."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from jacengine.executors.splitting import SplittingCompute
from jacengine.planning.blocks import Block
from jacengine.storage.store import JacobianStore

ComputeBlock = Callable[[Block], np.ndarray]


def first_use(blocks: Sequence[Block]) -> dict[tuple[int, ...], int]:
    """Position of each block shape's first appearance: the order shapes are computed in."""
    order: dict[tuple[int, ...], int] = {}
    for block in blocks:
        order.setdefault(block.shape_key, len(order))
    return order


class LocalExecutor:
    """Compute each pending block, write it, record it as done; stop between blocks on request.

    Block k is written by one background thread while block k+1 is computed; at most one
    finished block waits for its write, so memory stays bounded by about one block's result.
    ``should_stop`` is polled between blocks (a signal handler sets the flag it reads), so an
    interrupted run leaves only whole, recorded blocks behind and a rerun resumes from there.
    A block that runs out of memory is computed in halves (see :mod:`.splitting`).
    """

    def __init__(self, progress: bool = True) -> None:
        self.progress = progress

    def run(self, store: JacobianStore, blocks: Sequence[Block], compute_block: ComputeBlock,
            should_stop: Callable[[], bool] = lambda: False) -> int:
        """Returns the number of blocks completed. Blocks run grouped by shape (each compiled
        shape is traced once and released before the next), in plan order within a shape."""
        from tqdm.auto import tqdm

        order = first_use(blocks)
        blocks = sorted(blocks, key=lambda b: (order[b.shape_key], b.index))
        compute = SplittingCompute(compute_block)
        done = 0
        pending: Future | None = None
        with (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="jacengine-writer") as writer,
            tqdm(total=len(blocks), unit="block", disable=not self.progress or not blocks, desc="jacobian") as bar,
        ):
            for block in blocks:
                if should_stop():
                    break
                values = compute(block)
                if pending is not None:
                    pending.result()  # re-raises a failed write; bounds memory to one queued block
                    done += 1
                    bar.update()
                pending = writer.submit(store.write_block, block, values)
            if pending is not None:
                pending.result()
                done += 1
                bar.update()
        return done
