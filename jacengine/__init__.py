"""jacengine: memory-bounded Jacobians of sequence models, stored in zarr, reduced with dask.

The public API is what this module exports. ``import jacengine`` does not import TensorFlow:
the backend is imported when :func:`compute`, :func:`init`, :func:`plan`, :func:`directional`
or :func:`verify` first needs it.
"""

from jacengine._version import __version__
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
