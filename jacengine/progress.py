"""Progress bars (``tqdm.auto``: text in a terminal, a widget in Jupyter) for every long step.

``progress=None``, the default everywhere, shows bars only when stderr is a terminal or the code
runs in a notebook, so that the logs of batch jobs hold no bar redraws; ``True`` forces them on and
``False`` off (``--progress`` / ``--no-progress``).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from jacengine import timing
from jacengine.logs import LOGGER
from jacengine.planning.blocks import Block
from jacengine.planning.costmodel import CostModel
from jacengine.planning.spec import JacobianSpec


def show_progress(progress: bool | None) -> bool:
    """Whether to draw bars: as asked, or (None) when stderr is a terminal or a notebook."""
    if progress is not None:
        return progress
    return sys.stderr.isatty() or "ipykernel" in sys.modules


class BlockProgress:
    """A bar over blocks whose length and ETA are weighted by each block's work, by the spec's
    method's formula (:meth:`CostModel.work`: a causal block late in the sequence has a longer
    prefix to differentiate); its label counts blocks done / total."""

    def __init__(self, spec: JacobianSpec, blocks: Sequence[Block], progress: bool | None, desc: str = "jacobian") -> None:
        from tqdm.auto import tqdm

        self.spec, self.desc, self.total_blocks, self.done_blocks = spec, desc, len(blocks), 0
        self.bar = tqdm(total=sum(CostModel.work(spec, b) for b in blocks), disable=not show_progress(progress) or not blocks,
                        bar_format="{l_bar}{bar}| [{elapsed}<{remaining}]")
        self._logs_above = _logs_above_bars() if not self.bar.disable else contextlib.nullcontext()
        self._show_count()

    def advance(self, block: Block) -> None:
        self.done_blocks += 1
        self.bar.update(CostModel.work(self.spec, block))
        self._show_count()

    def _show_count(self) -> None:
        self.bar.set_description_str(f"{self.desc} {self.done_blocks}/{self.total_blocks} blocks", refresh=False)

    def __enter__(self) -> BlockProgress:
        self._logs_above.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()
        self._logs_above.__exit__(None, None, None)


@contextlib.contextmanager
def phase_progress(desc: str, progress: bool | None) -> Iterator[None]:
    """A status line naming the phase in progress (see :mod:`jacengine.timing`) and the time
    spent so far: loading, the causality probe, each method's calibration."""
    if not show_progress(progress):
        yield
        return
    from tqdm.auto import tqdm

    with tqdm(total=None, desc=desc, bar_format="{desc} [{elapsed}]", leave=False) as bar, _logs_above_bars():

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


def _logs_above_bars() -> contextlib.AbstractContextManager[None]:
    """jacengine's log lines printed above the bars instead of through them."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    return logging_redirect_tqdm(loggers=[logging.getLogger(LOGGER)])


def iterate(items: Sequence[Any], desc: str, progress: bool | None, unit: str = "it") -> Any:
    """``items`` with a bar over them."""
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit=unit, disable=not show_progress(progress) or not items)
