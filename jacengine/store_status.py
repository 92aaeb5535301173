"""Where a store stands: :func:`status`, for users, job scripts and ``jacengine status``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from jacengine.executors.shards import assign_blocks, check_shard
from jacengine.storage.store import open_store


@dataclass(frozen=True)
class ShardStatus:
    """One job-array shard's share of the blocks (:func:`~jacengine.executors.shards.assign_blocks`)."""

    shard: int
    blocks_done: int
    blocks_total: int


@dataclass(frozen=True)
class StoreStatus:
    """A store's progress: blocks done of the plan's, blocks recorded done whose chunk files are
    missing or short (``damaged``: pending again, recomputed by the next run), its size on disk,
    and what it was computed from (the fingerprint that guards resumes)."""

    path: Path
    shape: tuple[int, ...]
    dims: tuple[str, ...]
    blocks_done: int
    blocks_total: int
    damaged: tuple[int, ...]
    bytes_on_disk: int
    causal: bool
    fingerprint: dict[str, Any]
    shards: tuple[ShardStatus, ...] = field(default=())

    @property
    def complete(self) -> bool:
        return self.blocks_done == self.blocks_total

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types, with ``complete``."""
        data = asdict(self)
        data.update(path=str(self.path), shape=list(self.shape), dims=list(self.dims), damaged=list(self.damaged),
                    complete=self.complete)
        return data


def status(store: str | Path, shards: int | None = None) -> StoreStatus:
    """The progress of ``store``; with ``shards``, also of each of that many job-array shards.
    Reads the manifest and every done block's chunk files (their CRC-32C); changes nothing."""
    if shards is not None:
        check_shard(0, shards)
    opened = open_store(store)
    done, damaged = opened.completion()
    per_shard: tuple[ShardStatus, ...] = ()
    if shards is not None:
        per_shard = tuple(ShardStatus(i, sum(b.index in done for b in blocks), len(blocks))
                          for i, blocks in enumerate(assign_blocks(opened.spec, opened.plan, shards)))
    return StoreStatus(path=opened.path, shape=tuple(opened.shape), dims=tuple(opened.dims), blocks_done=len(done),
                       blocks_total=len(opened.plan.blocks), damaged=tuple(sorted(damaged)),
                       bytes_on_disk=opened.nbytes_on_disk(), causal=bool(opened.attrs["causal"]),
                       fingerprint=dict(opened.fingerprint), shards=per_shard)
