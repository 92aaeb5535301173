"""jacengine's logger (``logging.getLogger("jacengine")``) and the ``verbose=`` of the API.

The library configures no handler of its own: by default its warnings reach stderr through
Python's last-resort handler and its INFO messages (what was decided and why, the end-of-run
summary) go nowhere. ``verbose=True`` shows them for one call, ``verbose=False`` keeps only
errors; an application that configures logging itself leaves ``verbose`` at None.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

LOGGER = "jacengine"
FORMAT = "jacengine: %(message)s"

Function = TypeVar("Function", bound=Callable[..., Any])


def log_to_stderr(level: int) -> None:
    """Send jacengine's messages at ``level`` and above to stderr, prefixed "jacengine:"; the root
    logger (TensorFlow's and dask's messages) is left as it is. What the command line does."""
    logger = logging.getLogger(LOGGER)
    _only_to_stderr(logger)
    logger.setLevel(level)


@contextlib.contextmanager
def verbosity(verbose: bool | None) -> Iterator[None]:
    """Inside the block, jacengine logs at INFO (True) or ERROR (False) to stderr; None: unchanged."""
    if verbose is None:
        yield
        return
    logger = logging.getLogger(LOGGER)
    saved = logger.level, list(logger.handlers), logger.propagate
    if not logger.handlers:  # the command line's handler (or an application's) stays; else one for this call
        _only_to_stderr(logger)
    logger.setLevel(logging.INFO if verbose else logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(saved[0])
        logger.handlers, logger.propagate = saved[1], saved[2]


def _only_to_stderr(logger: logging.Logger) -> None:
    """``logger``'s one handler: stderr, each line prefixed "jacengine:"; nothing passed up to the root."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(FORMAT))
    logger.handlers = [handler]
    logger.propagate = False


def accepts_verbose(function: Function) -> Function:
    """Give ``function`` the keyword ``verbose`` (see :func:`verbosity`)."""

    @functools.wraps(function)
    def wrapper(*args: Any, verbose: bool | None = None, **kwargs: Any) -> Any:
        with verbosity(verbose):
            return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
