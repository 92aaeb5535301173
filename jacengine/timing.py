"""Where a run's time goes: exclusive seconds and counts per phase, for profiles and benchmarks.

Phases are named where the work happens (``with phase("trace"): ...``) and add up across a
process until :func:`reset`. A phase opened inside another is recorded under both names
(``"calibrate reverse / trace"``) and its time is taken out of the outer phase's, so the phases of
one thread add up to no more than the wall time: :func:`snapshot` reports the rest as ``idle``.
Phases of the writer thread (``store write``) overlap with the main thread's and are listed
apart (``overlapped``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

_lock = threading.Lock()
_seconds: dict[str, float] = {}
_counts: dict[str, int] = {}
_overlapped: set[str] = set()
_started = time.perf_counter()
_stack = threading.local()
_listeners: list[Callable[[str], None]] = []  # told the full name of each phase the main thread enters


def reset() -> None:
    """Forget every phase and restart the wall clock."""
    global _started
    with _lock:
        _seconds.clear()
        _counts.clear()
        _overlapped.clear()
        _started = time.perf_counter()


@dataclass
class _Frame:
    name: str
    inner_seconds: float = 0.0  # spent in phases opened inside this one


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Add the time spent inside the block, less that of phases opened inside it, to ``name``."""
    frames: list[_Frame] = _stack.__dict__.setdefault("frames", [])
    frame = _Frame(" / ".join([*(outer.name for outer in frames), name]))
    full_name = frame.name
    frames.append(frame)
    if threading.current_thread() is threading.main_thread():
        for listener in list(_listeners):
            listener(full_name)
    started = time.perf_counter()
    try:
        yield
    finally:
        elapsed = time.perf_counter() - started
        frames.pop()
        if frames:
            frames[-1].inner_seconds += elapsed
        with _lock:
            _seconds[full_name] = _seconds.get(full_name, 0.0) + elapsed - frame.inner_seconds
            _counts[full_name] = _counts.get(full_name, 0) + 1
            if threading.current_thread() is not threading.main_thread():
                _overlapped.add(full_name)


@contextmanager
def on_phase(listener: Callable[[str], None]) -> Iterator[None]:
    """Call ``listener(name)`` whenever the main thread enters a phase, while inside the block
    (progress displays name the phase in progress)."""
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)


def snapshot() -> list[dict[str, object]]:
    """Every phase as ``{"phase", "seconds", "count", "overlapped"}`` in first-use order, then
    ``idle`` (wall time no main-thread phase covers) and ``wall`` (since :func:`reset`)."""
    with _lock:
        wall = time.perf_counter() - _started
        rows: list[dict[str, object]] = [
            {"phase": name, "seconds": seconds, "count": _counts[name], "overlapped": name in _overlapped}
            for name, seconds in _seconds.items()
        ]
        covered = sum(seconds for name, seconds in _seconds.items() if name not in _overlapped)
    rows.append({"phase": "idle", "seconds": max(0.0, wall - covered), "count": 1, "overlapped": False})
    rows.append({"phase": "wall", "seconds": wall, "count": 1, "overlapped": False})
    return rows
