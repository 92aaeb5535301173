"""What to compute: the shapes, selections and structure of one Jacobian, independent of how.

A :class:`JacobianSpec` is plain data (JSON round trip) so that the planner, the store and any
worker process agree on it without importing TensorFlow.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from jacengine.errors import InputError
from jacengine.selection import is_strictly_increasing

LAYOUTS = ("full",)
# reverse: pfor-vectorised VJPs; reverse-loop: a while loop over rows; forward: vectorised JVPs
METHODS = ("reverse", "reverse-loop", "forward")
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
        layout: "full" stores every input step.
        method: how blocks are differentiated, one of :data:`METHODS` (``auto`` is resolved to
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
                raise InputError(f"{name}={indices} must be non-empty indices into an axis of length {size}.")
            if not is_strictly_increasing(indices):
                raise InputError(f"{name}={indices} must be strictly increasing.")
        if self.causal and (self.sequence_to_one or self.output_steps != self.input_steps):
            raise InputError(
                "causal=True needs one output step per input step; this model maps "
                f"{self.input_steps} input steps to {self.output_steps} output steps."
            )
        if self.layout not in LAYOUTS:
            raise InputError(f"layout={self.layout!r} is not one of {LAYOUTS}.")
        if self.method not in METHODS:
            raise InputError(f"method={self.method!r} is not one of {METHODS}.")
        if self.store_dtype not in STORE_DTYPES:
            raise InputError(f"store_dtype={self.store_dtype!r} is not one of {STORE_DTYPES}.")

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        """Shape of the stored Jacobian (B, To, Fo, Ti, Fi)."""
        return (self.batch, len(self.t_out), len(self.f_out), self.input_steps, len(self.f_in))

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
