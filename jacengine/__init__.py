"""jacengine: memory-bounded Jacobians of sequence models, stored in zarr, reduced with dask.

The public API is what this module exports. Each name is imported when it is first used, so
``import jacengine`` is quick and imports neither TensorFlow nor dask (the ``jacengine``
command catches stop signals before its slower imports: :mod:`jacengine.entry`); the backend
is imported when :func:`compute`, :func:`init`, :func:`plan`, :func:`directional` or
:func:`verify` first needs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from jacengine._version import __version__

_EXPORTS = {
    "directional": "jacengine.analysis.directional",
    "reduce": "jacengine.analysis.reductions",
    "reduce_many": "jacengine.analysis.reductions",
    "VerifyReport": "jacengine.analysis.verify",
    "verify": "jacengine.analysis.verify",
    "compute": "jacengine.api",
    "init": "jacengine.api",
    "jacobian": "jacengine.api",
    "plan": "jacengine.api",
    "BlockError": "jacengine.errors",
    "BlockOutOfMemory": "jacengine.errors",
    "BudgetError": "jacengine.errors",
    "DiskFullError": "jacengine.errors",
    "InputError": "jacengine.errors",
    "JacengineError": "jacengine.errors",
    "MethodUnsupported": "jacengine.errors",
    "ModelError": "jacengine.errors",
    "RunInterrupted": "jacengine.errors",
    "StoreError": "jacengine.errors",
    "StoreMismatchError": "jacengine.errors",
    "RunOptions": "jacengine.options",
    "JacobianStore": "jacengine.storage.store",
    "open_store": "jacengine.storage.store",
    "StoreStatus": "jacengine.store_status",
    "status": "jacengine.store_status",
}
__all__ = [
    "BlockError",
    "BlockOutOfMemory",
    "BudgetError",
    "DiskFullError",
    "InputError",
    "JacengineError",
    "JacobianStore",
    "MethodUnsupported",
    "ModelError",
    "RunInterrupted",
    "RunOptions",
    "StoreError",
    "StoreMismatchError",
    "StoreStatus",
    "VerifyReport",
    "__version__",
    "compute",
    "directional",
    "init",
    "jacobian",
    "open_store",
    "plan",
    "reduce",
    "reduce_many",
    "status",
    "verify",
]


def __getattr__(name: str) -> Any:
    """Import an exported name on first use (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'jacengine' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:
    from jacengine.analysis.directional import directional
    from jacengine.analysis.reductions import reduce, reduce_many
    from jacengine.analysis.verify import VerifyReport, verify
    from jacengine.api import compute, init, jacobian, plan
    from jacengine.errors import (
        BlockError,
        BlockOutOfMemory,
        BudgetError,
        DiskFullError,
        InputError,
        JacengineError,
        MethodUnsupported,
        ModelError,
        RunInterrupted,
        StoreError,
        StoreMismatchError,
    )
    from jacengine.options import RunOptions
    from jacengine.storage.store import JacobianStore, open_store
    from jacengine.store_status import StoreStatus, status
