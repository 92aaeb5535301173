"""Progress bars (``tqdm.auto``: text in a terminal, a widget in Jupyter) for every long step.

``progress=None``, the default everywhere, shows bars only when stderr is a terminal or the code
runs in a notebook, so that the logs of batch jobs hold no bar redraws; ``True`` forces them on and
``False`` off (``--progress`` / ``--no-progress``).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from jacengine import timing
from jacengine.planning.blocks import Block


def show_progress(progress: bool | None) -> bool:
    """Whether to draw bars: as asked, or (None) when stderr is a terminal or a notebook."""
    if progress is not None:
        return progress
    return sys.stderr.isatty() or "ipykernel" in sys.modules


def block_work(block: Block) -> int:
    """A block's predicted cost, in (sample, output row, forward step) triples: a causal block
    late in the sequence runs the model over more steps, and its reverse pass back over them."""
    return block.compute_batch * block.compute_rows * block.forward_steps


class BlockProgress:
    """A bar over blocks whose length and ETA are weighted by :func:`block_work`; it shows
    blocks done / total beside the percentage."""

    def __init__(self, blocks: Sequence[Block], progress: bool | None, desc: str = "jacobian") -> None:
        from tqdm.auto import tqdm

        self.total_blocks, self.done_blocks = len(blocks), 0
        self.bar = tqdm(total=sum(block_work(b) for b in blocks), desc=desc, disable=not show_progress(progress) or not blocks,
                        bar_format="{l_bar}{bar}| {postfix} [{elapsed}<{remaining}]")
        self._show_count()

    def advance(self, block: Block) -> None:
        self.done_blocks += 1
        self.bar.update(block_work(block))
        self._show_count()

    def _show_count(self) -> None:
        self.bar.set_postfix_str(f"{self.done_blocks}/{self.total_blocks} blocks", refresh=False)

    def __enter__(self) -> BlockProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()


@contextlib.contextmanager
def phase_progress(desc: str, progress: bool | None) -> Iterator[None]:
    """A status line naming the phase in progress (see :mod:`jacengine.timing`) and the time
    spent so far: loading, the causality probe, each method's calibration."""
    if not show_progress(progress):
        yield
        return
    from tqdm.auto import tqdm

    with tqdm(total=None, desc=desc, bar_format="{desc} [{elapsed}]") as bar:

        def show(name: str) -> None:
            bar.set_description_str(f"{desc}: {name}")

        with timing.on_phase(show):
            yield


@contextlib.contextmanager
def dask_progress(desc: str, progress: bool | None) -> Iterator[None]:
    """A bar over the tasks of every dask computation run inside (local schedulers)."""
    if not show_progress(progress):
        yield
        return
    from tqdm.auto import tqdm
    from tqdm.dask import TqdmCallback

    with TqdmCallback(desc=desc, unit="task", tqdm_class=tqdm):
        yield


def iterate(items: Sequence[Any], desc: str, progress: bool | None, unit: str = "it") -> Any:
    """``items`` with a bar over them."""
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit=unit, disable=not show_progress(progress) or not items)
