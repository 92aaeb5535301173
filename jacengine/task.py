"""The block task: compute one block of a store and write it, in whatever process runs it.

Every executor maps the same :class:`BlockTask` over blocks. It is frozen, picklable data (the
store's location, the model and inputs as this process or a worker can open them, the run's
options, a token naming the run), so it travels to dask workers and shards unchanged. The
first call in a process loads what it needs once (the backend's model, the inputs, the store)
and keeps it for the run's later blocks; the process that planned the run attaches what it
already has instead (:meth:`BlockTask.attach`).

A block is computed with its out-of-memory split (:mod:`jacengine.executors.splitting`) and
written whole with its manifest entry, so running a block twice stores identical bytes.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from jacengine.executors.splitting import SplittingCompute
from jacengine.memory import peak_resident_bytes
from jacengine.options import RunOptions
from jacengine.planning.blocks import Block, Plan
from jacengine.planning.spec import JacobianSpec
from jacengine.storage.ledger import BlockClaim
from jacengine.storage.store import JacobianStore


@dataclass
class _Loaded:
    store: JacobianStore
    compute: SplittingCompute


_LOADED: dict[str, _Loaded] = {}  # by task token: one run's model and store per process


@dataclass(frozen=True)
class BlockTask:
    """Compute and write blocks of the store at ``store`` with ``options`` (see the module docstring)."""

    store: str
    model: Any  # a path (any process) or the model object (this process)
    inputs: Any  # a path (any process) or an array (this process)
    options: RunOptions
    token: str

    def attach(self, store: JacobianStore, compute: Any) -> None:
        """Use this process's open ``store`` and block computation instead of loading them."""
        _LOADED.clear()  # one run per process at a time: free the previous model
        _LOADED[self.token] = _Loaded(store, SplittingCompute(compute))

    def detach(self) -> None:
        """Drop this process's model and store of the run (the run is over)."""
        _LOADED.pop(self.token, None)

    def _loaded(self) -> _Loaded:
        if self.token not in _LOADED:
            from jacengine.preparation import prepare_for_store  # the backend, on first use in a worker

            store = JacobianStore(self.store, mode="r+", durable=self.options.durable)
            prepared = prepare_for_store(self.model, self.inputs, store, self.options)
            self.attach(store, prepared.computation)
        return _LOADED[self.token]

    @property
    def spec(self) -> JacobianSpec:
        return self._loaded().store.spec

    @property
    def plan(self) -> Plan:
        return self._loaded().store.plan

    def compute(self, block: Block) -> np.ndarray:
        return self._loaded().compute(block)

    def write(self, block: Block, values: np.ndarray) -> None:
        self._loaded().store.write_block(block, values)

    def claim(self, block: Block, *, wait: bool) -> BlockClaim | None:
        return self._loaded().store.ledger.claim(block, wait=wait)

    def is_done(self, block: Block) -> bool:
        return self._loaded().store.ledger.is_done(block)

    def __call__(self, index: int) -> dict[str, Any]:
        """Compute block ``index`` and write it, unless another run resuming the same store did
        meanwhile (its claim is waited for); return the timing and the process's peak memory."""
        block = self.plan.blocks[index]
        started = time.perf_counter()
        claim = self.claim(block, wait=True)
        try:
            if not self.is_done(block):
                self.write(block, self.compute(block))
        finally:
            if claim is not None:
                claim.release()
        return {"index": index, "seconds": time.perf_counter() - started, "pid": os.getpid(),
                "peak_rss_bytes": peak_resident_bytes()}
