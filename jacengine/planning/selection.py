"""Normalise user selections (int, slice, sequence) of time steps and features to index tuples."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import numpy as np

from jacengine.errors import InputError, setting

Selection = int | slice | Sequence[int] | None


def is_strictly_increasing(indices: Sequence[int]) -> bool:
    return all(a < b for a, b in pairwise(indices))


def normalise_selection(selection: Selection, size: int, name: str) -> tuple[int, ...]:
    """Return the selected indices of an axis of length ``size`` as a strictly increasing tuple.

    ``None`` selects everything; negative integers count from the end as in numpy. The result is
    sorted because blocks are contiguous runs of the selection: an unsorted or repeated selection
    is refused rather than silently reordered, so stored coordinates always match the request.
    """
    if selection is None:
        return tuple(range(size))
    if isinstance(selection, slice):
        indices = tuple(range(size)[selection])
        if not indices:
            raise InputError(f"{setting(name, selection)} selects nothing from an axis of length {size}.")
        if not is_strictly_increasing(indices):
            raise InputError(f"{setting(name, selection)} must select increasing indices (use a positive step).")
        return indices
    if isinstance(selection, str):
        raise InputError(f"{setting(name)} must be an int, a slice or a sequence of ints, got {selection!r}.")
    if isinstance(selection, (int, np.integer)):
        selection = [int(selection)]
    try:
        raw = [int(i) for i in selection]  # type: ignore[union-attr]
    except (TypeError, ValueError) as exc:
        raise InputError(f"{setting(name)} must be an int, a slice or a sequence of ints, got {selection!r}.") from exc
    if not raw:
        raise InputError(f"{setting(name)} is an empty selection; pass None (leave the flag out) to select all {size} indices.")
    for i in raw:
        if not -size <= i < size:
            raise InputError(f"{setting(name)} index {i} is out of range for an axis of length {size}.")
    indices = tuple(i % size for i in raw)
    if not is_strictly_increasing(indices):
        raise InputError(
            f"{setting(name, list(raw))} must be strictly increasing without repeats "
            f"(write it as sorted(set(...)), or 1,5,9 on the command line)."
        )
    return indices


def parse_selection_text(text: str | None) -> Selection:
    """'10' -> 10, '0:50' or '0:50:2' -> slice, '1,5,9' -> [1, 5, 9], None -> None (all)."""
    if text is None:
        return None
    text = text.strip()
    try:
        if ":" in text:
            return slice(*[int(p) if p else None for p in text.split(":")])
        if "," in text:
            return [int(p) for p in text.split(",") if p]
        return int(text)
    except (ValueError, TypeError) as exc:
        raise InputError(f"selection {text!r}: use an index (10), a range (0:50) or a list (1,5,9)") from exc
