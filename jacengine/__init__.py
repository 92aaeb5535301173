"""jacengine: memory-bounded Jacobians of sequence models, stored in zarr, reduced with dask.

The public API is what this module exports. ``import jacengine`` does not import TensorFlow;
:func:`compute`, :func:`init` and :func:`plan` import it when called.
"""

from jacengine._version import __version__
from jacengine.analysis.directional import directional
from jacengine.analysis.verify import VerifyReport, verify
from jacengine.api import compute, init, plan
from jacengine.errors import (
    BlockError,
    BudgetError,
    InputError,
    JacengineError,
    ModelError,
    RunInterrupted,
    StoreError,
    StoreMismatchError,
)
from jacengine.storage.store import JacobianStore, open_store

__all__ = [
    "BlockError",
    "BudgetError",
    "InputError",
    "JacengineError",
    "JacobianStore",
    "ModelError",
    "RunInterrupted",
    "StoreError",
    "StoreMismatchError",
    "__version__",
    "compute",
    "directional",
    "init",
    "open_store",
    "plan",
    "verify",
    "VerifyReport",
]
