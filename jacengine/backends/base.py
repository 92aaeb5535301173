"""The contract between the engine and a differentiation framework: :class:`Backend`.

The engine (planning, storage, executors, the API) knows blocks, budgets and stores; a backend
knows a framework's models. TensorFlow (:mod:`jacengine.tf.backend`) is the one shipped; a
second framework is one new package implementing this protocol plus one registry entry in
:mod:`jacengine.backends`. ``tests/linear_backend.py`` is a complete example in plain numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from jacengine.planning.calibration import BlockComputer  # noqa: F401 (part of the contract: backends import it here)
from jacengine.planning.method_choice import Probing
from jacengine.planning.spec import JacobianSpec

if TYPE_CHECKING:
    from jacengine.options import RunOptions
    from jacengine.storage.inputs import Inputs


@dataclass
class Description:
    """A model described for the planner: its spec, why it is (not) causal, and the model the
    block computer differentiates (the backend may have rewritten it, e.g. for speed)."""

    spec: JacobianSpec
    causal_reason: str
    block_model: Any


class Meter(Protocol):
    """Reads the budgeted quantity (resident memory on CPU, the device's peak on a GPU)."""

    def peak(self) -> int | None:
        """Its peak above the baseline since the last reset (the last calibration probe)."""
        ...


class References(Protocol):
    """Entries of J computed the simplest independent way, for verification: one gradient row
    per call, and central finite differences of a float64 copy of the model."""

    # why finite differences cannot be taken (e.g. no float64 copy of a custom layer); None: they can
    finite_differences_unavailable: str | None

    def gradient_row(self, sample: np.ndarray, step: int | None, feature: int) -> np.ndarray:
        """d y[0, step, feature] / d x[0] for one sample (1, T, F): (T, F); step None: sequence-to-one."""
        ...

    def central_difference(self, sample: np.ndarray, step: int | None, f_out: int, t_in: int, f_in: int) -> float:
        """One entry of J by central finite differences of the float64 model."""
        ...


class DirectionalProducts(Protocol):
    """Sums of J against weights without J: one JVP (over inputs) or VJP (over outputs) per call."""

    forward_mode_works: bool

    def jvp(self, x: np.ndarray, weights: np.ndarray) -> np.ndarray: ...

    def vjp(self, x: np.ndarray, weights: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class Backend(Protocol):
    """What the engine asks of a framework. Methods take the backend's own model objects (what
    :meth:`load` returns) and jacengine's framework-neutral types."""

    name: str

    def recognises(self, model: Any) -> bool:
        """Whether ``model`` (an object or a path) is this backend's, without importing the
        framework unless it is already imported."""
        ...

    def worker_environment(self) -> dict[str, str]:
        """Environment variables for worker processes jacengine starts (threads, kernels, logs)."""
        ...

    def configure(self, options: RunOptions) -> None:
        """Set up devices before the first model is loaded (e.g. a GPU memory limit)."""
        ...

    def load(self, model: Any, options: RunOptions) -> Any:
        """The model, loaded (safely: code in model files only with ``options.trust_model``),
        vetted, and in float64 with ``options.precision == "float64"``."""
        ...

    def model_hash(self, model: Any, input_features: int) -> str:
        """A hash of what the model computes (architecture and weights), for inputs with
        ``input_features`` features: resumes are refused when it changes."""
        ...

    def save(self, model: Any, folder: Path) -> str:
        """What worker processes load for ``model`` (as the user passed it, not a file path):
        a reference they can load (e.g. an import path), or the model written into ``folder``."""
        ...

    def start_budget(self) -> Meter:
        """Start measuring the budget (the baseline is now); the meter goes to :meth:`probing`."""
        ...

    def describe(self, model: Any, inputs: Inputs, options: RunOptions) -> Description:
        """The spec of J for ``model`` at ``inputs`` with the selections, layout and method of
        ``options`` (method "auto" gives a provisional one), and the causality decision."""
        ...

    def probing(self, description: Description, inputs: Inputs, meter: Any) -> Probing:
        """Calibration's view of the described model (probers that run its blocks under
        ``meter``, the one :meth:`start_budget` returned; the methods it cannot use; a prior)."""
        ...

    def references(self, model: Any) -> References:
        """Verification's independent references for ``model``."""
        ...

    def directional_products(self, model: Any) -> DirectionalProducts: ...


@runtime_checkable
class ExampleBackend(Backend, Protocol):
    """A backend with a built-in example model, for ``jacengine demo``."""

    def example_model(self, x_train: np.ndarray, y_train: np.ndarray, epochs: int) -> tuple[Any, float | None]:
        """The seed problem's model, trained for ``epochs`` on (x_train, y_train) (0: untrained);
        returns it and its final training loss (None when untrained)."""
        ...
