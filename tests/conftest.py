"""Shared fixtures; slow tests run only with --runslow (as in dask's test suite)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# as jacengine.tf does for processes it starts: in-process runs and subprocesses (CLI, dask
# workers) compute with the same kernels, so their stores are bit-identical
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _jacengine_logger_as_a_library_has_it():
    """The command line configures jacengine's logger as a program does (its own stderr handler,
    no propagation); CliRunner runs it in this process, so each test starts from and returns to
    the library's state, in which pytest's caplog sees the messages."""
    import logging

    logger = logging.getLogger("jacengine")
    saved = logger.level, list(logger.handlers), logger.propagate
    logger.setLevel(logging.NOTSET)
    logger.handlers, logger.propagate = [], True
    yield
    logger.setLevel(saved[0])
    logger.handlers, logger.propagate = saved[1], saved[2]
