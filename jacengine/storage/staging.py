"""Hand a model and inputs to worker processes: as files, since workers load their own copies.

Files given by the user are used as they are. Other models go through the backend's ``save``
(which may hand back a reference such as an import path); an in-memory array, or a model the
backend writes, goes next to the store (workers must be able to reach the store anyway, so the folder is on
a file system they share) and removed when the run ends.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from jacengine.storage.inputs import Inputs


@contextlib.contextmanager
def staged_for_workers(model: Any, inputs: Any, store: Path, save_model: Callable[[Any, Path], str]) -> Iterator[tuple[str, str]]:
    """Yields (model path, inputs path) that worker processes can open; ``save_model(model,
    folder)`` writes an in-memory model (the backend's :meth:`~jacengine.backends.base.Backend.save`)."""
    if _is_file(model) and isinstance(inputs, (str, Path)):
        yield str(Path(model).resolve()), str(Path(inputs).resolve())
        return
    store.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{store.name}.staging-", dir=store.parent))
    try:
        model_path = str(Path(model).resolve()) if _is_file(model) else save_model(model, folder)
        inputs_path = str(Path(inputs).resolve()) if isinstance(inputs, (str, Path)) else _save_inputs(inputs, folder)
        yield model_path, inputs_path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _is_file(model: Any) -> bool:
    """A model given as a path that exists (a file or a directory such as a SavedModel)."""
    return isinstance(model, (str, Path)) and Path(model).exists()


def _save_inputs(inputs: Any, folder: Path) -> str:
    """Stream the inputs into a .npy file, one batch range at a time (never whole in memory)."""
    source = Inputs(inputs)
    path = folder / "inputs.npy"
    target = np.lib.format.open_memmap(path, mode="w+", dtype=source.dtype, shape=source.shape)
    for start, stop in source.batch_ranges():
        target[start:stop] = source.read(start, stop)
    target.flush()
    return str(path)
