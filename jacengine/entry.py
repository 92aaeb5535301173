"""The ``jacengine`` command's entry point: it catches stop signals before its slow imports.

Loading the command line imports dask, xarray and zarr (seconds on a busy node). A job
scheduler's SIGTERM, or a Ctrl-C, in that time would otherwise kill the process with status
143, or print a KeyboardInterrupt traceback; caught here, it exits 75 (resumable) like a stop
during a run. Once the command line is loaded the default handlers are back, and the commands
that compute install their own (:mod:`jacengine.interrupt`).
"""

from __future__ import annotations

import signal
import sys

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def main() -> None:
    caught: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: caught.append(signum)) for sig in STOP_SIGNALS}
    from jacengine.cli import main as command_line
    from jacengine.errors import RunInterrupted

    for sig, handler in previous.items():
        signal.signal(sig, handler)
    if caught:
        print(f"jacengine: stopped by {signal.Signals(caught[0]).name} while starting, before any work; rerun the same "
              "command.", file=sys.stderr)
        sys.exit(RunInterrupted.exit_status)
    command_line()
