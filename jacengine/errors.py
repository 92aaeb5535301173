"""One exception hierarchy for everything jacengine raises on purpose.

Every message says what is wrong, why it matters and how to fix it, so that a user reading a
traceback in a job log can act without reading our source.
"""

from __future__ import annotations

from typing import Any

_NO_VALUE = object()


def setting(name: str, value: Any = _NO_VALUE) -> str:
    """How a message names a setting: its API keyword (with the value when given) and its
    command-line flag, e.g. ``t_out=[3, 1] (--t-out)``; messages that both users read say both."""
    keyword = name if value is _NO_VALUE else f"{name}={value!r}"
    return f"{keyword} (--{name.replace('_', '-')})"


class JacengineError(Exception):
    """Base class of every error jacengine raises deliberately."""


class InputError(JacengineError, ValueError):
    """The inputs (array, path, selection) are unusable: wrong rank, dtype, NaN, out of range."""


class ModelError(JacengineError, ValueError):
    """The model cannot be differentiated safely (stateful RNN, disconnected output, ...)."""


class MethodUnsupported(ModelError):
    """A differentiation method does not work for this model: it raises, or pfor falls back to a
    while loop for some op (``method="auto"`` then moves to the next method)."""

    def __init__(self, method: str, reason: str) -> None:
        self.method, self.reason = method, reason
        advice = ("No method differentiates it block by block; the reasons name the layers or ops that fail: replace "
                  "them, or for small inputs use tape.batch_jacobian(..., experimental_use_pfor=False)." if method == "auto"
                  else "Use method='auto' (--method auto) to pick one that does.")
        super().__init__(f"method {method!r} does not work for this model: {reason.rstrip('.')}. {advice}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # dask ships errors between processes
        return (type(self), (self.method, self.reason))


class BudgetError(JacengineError, ValueError):
    """The memory budget is malformed or too small for the smallest possible block."""


class StoreError(JacengineError):
    """The store path is unusable: foreign data, unwritable, incomplete or corrupt."""


class DiskFullError(StoreError):
    """The store's file system ran out of space (or quota) while writing; every block recorded
    done is whole, and a rerun after freeing space resumes."""

    exit_status = 74  # EX_IOERR: not resumable by requeueing alone, unlike RunInterrupted


class StoreMismatchError(StoreError):
    """An existing store was produced by a different model, inputs or settings."""


class BlockError(JacengineError):
    """A block produced an unusable result (NaN/Inf); the block is not marked done."""


class RunInterrupted(JacengineError):
    """A run stopped cleanly between blocks (SIGTERM/SIGINT); rerunning the same command resumes."""

    exit_status = 75  # EX_TEMPFAIL: job scripts requeue on it


class BlockOutOfMemory(JacengineError, MemoryError):
    """Computing a block ran out of memory (TensorFlow's ResourceExhaustedError or MemoryError);
    the executor splits the block and retries."""
