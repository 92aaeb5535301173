"""jacengine: memory-bounded Jacobians of sequence models, stored in zarr, reduced with dask.

The public API is what this module exports. ``import jacengine`` does not import TensorFlow;
:func:`compute`, :func:`init` and :func:`plan` import it when called.
"""

from jacengine._version import __version__
from jacengine.api import compute, init, plan
from jacengine.directional import directional
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
from jacengine.store import JacobianStore, open_store
from jacengine.verify import VerifyReport, verify

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
