"""Executors map a block task over blocks: ``local`` (this process), ``cluster`` (dask.distributed
tasks), ``shards`` (one shard of a job array, around either). The contract is in :mod:`.base`."""

from jacengine.executors.base import Executor, Task, execution_order
from jacengine.executors.cluster import DaskExecutor
from jacengine.executors.local import LocalExecutor
from jacengine.executors.shards import ShardExecutor

__all__ = ["DaskExecutor", "Executor", "LocalExecutor", "ShardExecutor", "Task", "execution_order"]
