"""The local executor: a plain loop in this process; the default and the debugging path."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from jacengine.executors.base import Claim, ShouldStop, Task, execution_order
from jacengine.planning.blocks import Block
from jacengine.progress import BlockProgress


class LocalExecutor:
    """Compute each pending block, write it, record it as done; stop between blocks on request.

    Block k is written by one background thread while block k+1 is computed; at most one
    finished block waits for its write, so memory stays bounded by about one block's result.
    ``should_stop`` is polled between blocks (a signal handler sets the flag it reads), so an
    interrupted run leaves only whole, recorded blocks behind and a rerun resumes from there.

    Each block is claimed before it is computed (:meth:`Task.claim`): a block that another run
    resuming the same store is computing is passed over, and its turn comes after the others,
    when this run waits for that claim and computes the block only if it is still not done.
    """

    concurrent = False
    in_process = True

    def __init__(self, progress: bool | None = None) -> None:
        self.progress = progress

    def assigned(self, task: Task, blocks: Sequence[Block]) -> list[Block]:
        return list(blocks)

    def run(self, task: Task, blocks: Sequence[Block], should_stop: ShouldStop = lambda: False) -> int:
        done = 0
        pending: tuple[Future, Block, Claim] | None = None  # the write in flight, its block and claim

        def finish_pending() -> None:
            nonlocal done, pending
            if pending is not None:
                future, block, claim = pending
                try:
                    future.result()  # re-raises a failed write; bounds memory to one queued block
                finally:
                    claim.release()
                done += 1
                bar.advance(block)
                pending = None

        ordered = execution_order(blocks)
        claimed_elsewhere: list[Block] = []
        with (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="jacengine-writer") as writer,
            BlockProgress(task.spec, blocks, self.progress) as bar,
        ):
            try:
                # the blocks claimed elsewhere are taken in turn once the others are done (the
                # second generator reads the list as it is by then), waiting for their claims
                for block, wait in itertools.chain(((b, False) for b in ordered), ((b, True) for b in claimed_elsewhere)):
                    if should_stop():
                        break
                    if wait:
                        finish_pending()  # hold no claim while waiting for one: two runs would wait on each other
                    claim = task.claim(block, wait=wait)
                    if claim is None:
                        claimed_elsewhere.append(block)
                        continue
                    if task.is_done(block):  # by another run since this one listed it
                        claim.release()
                        bar.advance(block)
                        continue
                    try:
                        values = task.compute(block)
                    except BaseException:
                        claim.release()
                        raise
                    finish_pending()
                    pending = writer.submit(task.write, block, values), block, claim
                finish_pending()
            finally:
                if pending is not None:  # an error in flight: the writer's block stays unrecorded
                    pending[2].release()
        return done
