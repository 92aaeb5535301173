"""The local executor: a plain loop in this process; the default and the debugging path."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from jacengine.executors.base import ShouldStop, Task, execution_order
from jacengine.planning.blocks import Block
from jacengine.progress import BlockProgress


class LocalExecutor:
    """Compute each pending block, write it, record it as done; stop between blocks on request.

    Block k is written by one background thread while block k+1 is computed; at most one
    finished block waits for its write, so memory stays bounded by about one block's result.
    ``should_stop`` is polled between blocks (a signal handler sets the flag it reads), so an
    interrupted run leaves only whole, recorded blocks behind and a rerun resumes from there.
    """

    concurrent = False
    in_process = True

    def __init__(self, progress: bool | None = None) -> None:
        self.progress = progress

    def assigned(self, task: Task, blocks: Sequence[Block]) -> list[Block]:
        return list(blocks)

    def run(self, task: Task, blocks: Sequence[Block], should_stop: ShouldStop = lambda: False) -> int:
        done = 0
        pending: tuple[Future, Block] | None = None  # the write in flight, and its block
        with (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="jacengine-writer") as writer,
            BlockProgress(task.spec, blocks, self.progress) as bar,
        ):
            for block in execution_order(blocks):
                if should_stop():
                    break
                values = task.compute(block)
                if pending is not None:
                    pending[0].result()  # re-raises a failed write; bounds memory to one queued block
                    done += 1
                    bar.advance(pending[1])
                pending = writer.submit(task.write, block, values), block
            if pending is not None:
                pending[0].result()
                done += 1
                bar.advance(pending[1])
        return done
