"""What to compute: the shapes, selections and structure of one Jacobian, independent of how.

A :class:`JacobianSpec` is plain data (JSON round trip) so that the planner, the store and any
worker process agree on it without importing TensorFlow.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from jacengine.errors import InputError, setting
from jacengine.planning.methods import METHODS
from jacengine.planning.selection import is_strictly_increasing

LAYOUTS = ("full", "lag")  # lag: J[b, i, fo, l, fi] = d y[b, t_out[i], fo] / d x[b, t_out[i] - l, fi]
STORE_DTYPES = ("float32", "float64", "float16")  # float16: half the disk, rounding error recorded


@dataclass(frozen=True)
class JacobianSpec:
    """Shapes and selections of J[b, t_out, f_out, t_in, f_in] = d y[b, t_out, f_out] / d x[b, t_in, f_in].

    Attributes:
        batch: number of samples B.
        input_steps: input sequence length T.
        input_features: total input features F_in of the model.
        output_steps: output sequence length of the model (1 for sequence-to-one models).
        output_features: total output features F_out of the model.
        t_out, f_out, f_in: the selected output steps, output features and input features.
        causal: whether outputs at step t depend only on inputs at steps <= t.
        truncatable: whether the model accepts a shorter input sequence (its input length is
            not fixed), so a causal block can run its forward pass on a prefix only.
        sequence_to_one: the model returns (B, F_out); stored with a t_out axis of length 1.
        layout: "full" stores every input step (axis ``t_in``); "lag" stores lags 0..max_lag-1
            behind each output step (axis ``lag``), zero where the step would precede the input.
        max_lag: the lag window L of the "lag" layout (None for "full").
        method: how blocks are differentiated, one of :data:`jacengine.planning.methods.METHODS` (``auto`` is resolved to
            one of them before a spec exists).
        compute_dtype: the model's float dtype; store_dtype: the stored dtype.
    """

    batch: int
    input_steps: int
    input_features: int
    output_steps: int
    output_features: int
    t_out: tuple[int, ...]
    f_out: tuple[int, ...]
    f_in: tuple[int, ...]
    causal: bool
    truncatable: bool
    sequence_to_one: bool = False
    layout: str = "full"
    max_lag: int | None = None
    method: str = "reverse"
    compute_dtype: str = "float32"
    store_dtype: str = "float32"

    def __post_init__(self) -> None:
        for name in ("t_out", "f_out", "f_in"):
            object.__setattr__(self, name, tuple(int(i) for i in getattr(self, name)))
        for name in ("batch", "input_steps", "input_features", "output_steps", "output_features"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}.")
        checks = (
            ("t_out", self.t_out, self.output_steps),
            ("f_out", self.f_out, self.output_features),
            ("f_in", self.f_in, self.input_features),
        )
        for name, indices, size in checks:
            if not indices or any(not 0 <= i < size for i in indices):
                raise InputError(f"{setting(name, list(indices))} must be non-empty indices into an axis of length {size}.")
            if not is_strictly_increasing(indices):
                raise InputError(f"{setting(name, list(indices))} must be strictly increasing.")
        if self.causal and (self.sequence_to_one or self.output_steps != self.input_steps):
            raise InputError(
                f"{setting('causal', True)} needs one output step per input step; this model maps "
                f"{self.input_steps} input steps to {self.output_steps} output steps."
            )
        if self.layout not in LAYOUTS:
            raise InputError(f"{setting('layout', self.layout)} is not one of {LAYOUTS}.")
        self._check_lag_window()
        if self.method not in METHODS:
            raise InputError(f"{setting('method', self.method)} is not one of {', '.join(METHODS)}.")
        if self.store_dtype not in STORE_DTYPES:
            raise InputError(f"{setting('store_dtype', self.store_dtype)} is not one of {STORE_DTYPES}.")

    def _check_lag_window(self) -> None:
        if self.layout == "full":
            if self.max_lag is not None:
                raise InputError(f"{setting('max_lag')} applies to layout='lag' only; pass {setting('layout', 'lag')} with it.")
            return
        if self.max_lag is None or not 1 <= self.max_lag <= self.input_steps:
            raise InputError(
                f"layout='lag' needs {setting('max_lag')} between 1 and the sequence length {self.input_steps}, got {self.max_lag}."
            )
        if self.sequence_to_one or self.output_steps != self.input_steps:
            raise InputError(
                "layout='lag' needs one output step per input step (lag = t_out - t_in); this model maps "
                f"{self.input_steps} input steps to {'one output' if self.sequence_to_one else self.output_steps}. "
                f"Use {setting('layout', 'full')}."
            )

    @property
    def in_axis(self) -> str:
        """Name of the stored axis of input positions: ``t_in`` (full layout) or ``lag``."""
        return "lag" if self.layout == "lag" else "t_in"

    @property
    def in_axis_length(self) -> int:
        """Length of that axis: the sequence length, or the lag window."""
        return self.max_lag if self.max_lag is not None else self.input_steps

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        """Shape of the stored Jacobian (B, To, Fo, Ti, Fi), or (B, To, Fo, L, Fi) in the lag layout."""
        return (self.batch, len(self.t_out), len(self.f_out), self.in_axis_length, len(self.f_in))

    @property
    def block_dtype(self) -> str:
        """The dtype blocks are handed to the store in: float16 rounding happens in the store,
        which measures and records the error it makes."""
        return "float32" if self.store_dtype == "float16" else self.store_dtype

    @property
    def t_out_coordinate(self) -> tuple[int, ...]:
        """Time labels of the stored t_out axis; a sequence-to-one output sits at the last step."""
        return (self.input_steps - 1,) if self.sequence_to_one else self.t_out

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for name in ("t_out", "f_out", "f_in"):
            data[name] = list(data[name])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JacobianSpec:
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)
