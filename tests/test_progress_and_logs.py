"""Progress bars are weighted by each block's predicted cost and stay out of logs that are not a
terminal; ``verbose=`` shows jacengine's INFO lines for one call and restores the logger after."""

from __future__ import annotations

import io
import logging

import pytest

from jacengine.logs import verbosity
from jacengine.planning.blocks import Block
from jacengine.planning.spec import JacobianSpec
from jacengine.progress import BlockProgress, show_progress


def block(index: int, forward_steps: int, batch: int = 4, rows: int = 10) -> Block:
    return Block(index, 0, batch, 0, rows, forward_steps, forward_steps, forward_steps, batch, rows)


def test_the_block_bar_counts_predicted_work_not_blocks() -> None:
    """Causal blocks late in a sequence differentiate longer prefixes: a bar over blocks 0..9
    with prefixes 10, 20, ..., 100 (reverse mode) is 1/55 done after the first, not 1/10."""
    spec = JacobianSpec(batch=4, input_steps=100, input_features=1, output_steps=100, output_features=1,
                        t_out=tuple(range(100)), f_out=(0,), f_in=(0,), causal=True, truncatable=True)
    blocks = [block(i, 10 * (i + 1)) for i in range(10)]
    with BlockProgress(spec, blocks, progress=True) as bar:
        assert bar.bar.total == 4 * 10 * sum(10 * (i + 1) for i in range(10))
        bar.advance(blocks[0])
        assert bar.bar.n / bar.bar.total == pytest.approx(1 / 55)
        for done in blocks[1:]:
            bar.advance(done)
        assert bar.bar.n == bar.bar.total and bar.done_blocks == 10


def test_bars_default_to_terminals_only(monkeypatch) -> None:
    monkeypatch.setattr("sys.stderr", io.StringIO())  # a batch job's log file
    monkeypatch.delitem(__import__("sys").modules, "ipykernel", raising=False)
    assert show_progress(None) is False
    assert show_progress(True) is True and show_progress(False) is False

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stderr", Terminal())
    assert show_progress(None) is True


def test_verbose_shows_info_for_one_call_and_restores_the_logger(capsys) -> None:
    logger = logging.getLogger("jacengine")
    saved = logger.level, list(logger.handlers), logger.propagate
    with verbosity(True):
        logger.info("decided something")
    with verbosity(False):
        logger.warning("a warning that -q hides")
        logger.error("an error that -q keeps")
    with verbosity(None):
        logger.info("not shown: INFO is off by default")
    err = capsys.readouterr().err
    assert "jacengine: decided something" in err and "an error that -q keeps" in err
    assert "a warning that -q hides" not in err and "not shown" not in err
    assert (logger.level, logger.handlers, logger.propagate) == saved
