"""Phase timings: nested phases are exclusive, named by their path, and add up to the wall time."""

from __future__ import annotations

import threading
import time

from jacengine import timing


def test_nested_phases_are_exclusive_and_add_up_to_the_wall_time() -> None:
    timing.reset()
    with timing.phase("outer"):
        time.sleep(0.02)
        with timing.phase("inner"):
            time.sleep(0.03)
    rows = {row["phase"]: row for row in timing.snapshot()}
    assert set(rows) == {"outer", "outer / inner", "idle", "wall"}
    assert 0.02 <= rows["outer"]["seconds"] < 0.03 + 0.02  # its own time only, not the inner phase's
    assert rows["outer / inner"]["seconds"] >= 0.03
    covered = rows["outer"]["seconds"] + rows["outer / inner"]["seconds"] + rows["idle"]["seconds"]
    assert abs(covered - rows["wall"]["seconds"]) < 1e-3


def test_other_threads_phases_are_marked_overlapped_and_not_counted_against_idle() -> None:
    def write() -> None:
        with timing.phase("store write"):
            time.sleep(0.03)

    timing.reset()
    writer = threading.Thread(target=write)
    writer.start()
    writer.join()
    rows = {row["phase"]: row for row in timing.snapshot()}
    assert rows["store write"]["overlapped"] and rows["store write"]["seconds"] >= 0.03
    assert abs(rows["idle"]["seconds"] - rows["wall"]["seconds"]) < 1e-3  # the main thread ran no phase
