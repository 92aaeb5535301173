"""A dask worker preload for the LocalCluster jacengine starts: its workers ignore SIGINT.

Ctrl-C in a terminal sends SIGINT to the whole process group, workers included. A worker that
died of it left the client waiting on tasks that never finished; the client alone decides to
stop (between blocks, :mod:`jacengine.interrupt`), and closes its workers when it does.
"""

from __future__ import annotations

import signal
from typing import Any


def dask_setup(worker: Any) -> None:
    """Called by dask in each worker process at start-up, in its main thread."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
