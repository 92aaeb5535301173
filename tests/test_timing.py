"""Phase timings: nested phases are exclusive, named by their path, and add up to the wall time.

The module's clock is replaced by a fake one that the tests advance by hand, so the figures are
exact whatever the machine's load."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from jacengine import timing


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def perf_counter(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(timing, "time", SimpleNamespace(perf_counter=fake.perf_counter))
    timing.reset()
    yield fake
    timing.reset()


def test_nested_phases_are_exclusive_and_add_up_to_the_wall_time(clock) -> None:
    clock.advance(1.0)  # idle before any phase
    with timing.phase("outer"):
        clock.advance(2.0)
        with timing.phase("inner"):
            clock.advance(3.0)
        clock.advance(0.5)
    with timing.phase("outer"):  # a second entry adds up and counts
        clock.advance(0.25)
    rows = {row["phase"]: row for row in timing.snapshot()}
    assert set(rows) == {"outer", "outer / inner", "idle", "wall"}
    assert rows["outer"]["seconds"] == 2.75 and rows["outer"]["count"] == 2  # its own time only, not the inner phase's
    assert rows["outer / inner"]["seconds"] == 3.0
    assert rows["idle"]["seconds"] == 1.0 and rows["wall"]["seconds"] == 6.75


def test_other_threads_phases_are_marked_overlapped_and_not_counted_against_idle(clock) -> None:
    def write() -> None:
        with timing.phase("store write"):
            clock.advance(3.0)

    writer = threading.Thread(target=write)
    writer.start()
    writer.join()
    rows = {row["phase"]: row for row in timing.snapshot()}
    assert rows["store write"]["overlapped"] and rows["store write"]["seconds"] == 3.0
    assert rows["idle"]["seconds"] == rows["wall"]["seconds"] == 3.0  # the main thread ran no phase
