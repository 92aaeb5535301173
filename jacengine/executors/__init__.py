"""Executors map "compute block, write block, mark done" over the pending blocks."""

from jacengine.executors.local import LocalExecutor

__all__ = ["LocalExecutor"]
