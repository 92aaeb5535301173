"""Model inputs of shape (B, T, F) from memory, a ``.npy`` file or a zarr array, read lazily.

``.npy`` files are memory-mapped and zarr arrays stay on disk: blocks read one batch range at a
time, so inputs larger than RAM never have to be loaded whole. Validation and hashing stream over
the same batch ranges.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from jacengine.errors import InputError

InputsLike = Any  # numpy array, path to .npy / zarr, or a zarr array

_STREAM_BYTES = 64 * 2**20  # batch ranges of about this size when scanning the whole input


class Inputs:
    """Read-only view on (B, T, F) float inputs with validation and a content hash."""

    def __init__(self, source: InputsLike) -> None:
        self.source_name, self._array = _open(source)
        shape = tuple(self._array.shape)
        if len(shape) != 3:
            raise InputError(
                f"inputs must have rank 3 (batch, time, features), got shape {shape}; "
                "add a feature axis with x[..., None] or a batch axis with x[None]."
            )
        if min(shape) < 1:
            raise InputError(f"inputs must be non-empty in every axis, got shape {shape}.")
        dtype = np.dtype(self._array.dtype)
        if not np.issubdtype(dtype, np.floating):
            raise InputError(
                f"inputs have dtype {dtype}; a Jacobian needs floating-point inputs. "
                "Convert them, e.g. x.astype('float32')."
            )
        self.shape: tuple[int, int, int] = shape  # type: ignore[assignment]
        self.dtype = dtype

    def read(self, batch_start: int, batch_stop: int, steps: int | None = None) -> np.ndarray:
        """x[batch_start:batch_stop, :steps] as an in-memory array."""
        return np.asarray(self._array[batch_start:batch_stop, :steps])

    def batch_ranges(self) -> list[tuple[int, int]]:
        """Consecutive batch ranges of about 64 MiB each, for streaming over the inputs."""
        per_sample = self.shape[1] * self.shape[2] * self.dtype.itemsize
        step = max(1, _STREAM_BYTES // per_sample)
        return [(b, min(self.shape[0], b + step)) for b in range(0, self.shape[0], step)]

    def content_hash(self) -> str:
        """SHA-256 of shape, dtype and values (identifies the inputs in a store's fingerprint).

        The same single pass over the inputs refuses NaN/Inf, naming the first such entry, so
        inputs larger than RAM are read once, one batch range at a time.
        """
        digest = hashlib.sha256(f"{self.shape}|{self.dtype.str}|".encode())
        for start, stop in self.batch_ranges():
            chunk = np.ascontiguousarray(self.read(start, stop))
            bad = ~np.isfinite(chunk)
            if bad.any():
                b, t, f = np.argwhere(bad)[0]
                raise InputError(
                    f"inputs contain a non-finite value ({chunk[b, t, f]}) at index "
                    f"[{start + b}, {t}, {f}] of {self.source_name}; remove or impute it first."
                )
            digest.update(chunk.tobytes())
        return digest.hexdigest()


def _open(source: InputsLike) -> tuple[str, Any]:
    if isinstance(source, np.ndarray):
        return "the input array", source
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise InputError(f"inputs file {path} does not exist.")
        if path.suffix == ".npy":
            try:
                return str(path), np.load(path, mmap_mode="r")
            except ValueError as exc:
                raise InputError(f"cannot memory-map {path}: {exc}") from exc
        import zarr

        try:
            return str(path), zarr.open_array(str(path), mode="r")
        except Exception as exc:
            raise InputError(f"{path} is neither a .npy file nor a zarr array: {exc}") from exc
    if hasattr(source, "shape") and hasattr(source, "dtype") and hasattr(source, "__getitem__"):
        return type(source).__name__, source
    raise InputError(
        f"inputs must be a numpy array, a path to a .npy file or a zarr array; got {type(source).__name__}."
    )
