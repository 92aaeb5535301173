"""This process's memory: what the budget is measured on, on CPU (psutil, any platform).

Current resident memory comes from psutil. The peak ("high-water mark") and its reset need the
operating system: Linux keeps ``VmHWM`` in ``/proc/self/status`` and resets it through
``/proc/self/clear_refs``; Windows reports a peak working set; elsewhere (macOS) the peak is
``getrusage``'s maximum resident size, which cannot be reset, so a peak there covers the
process's whole life and a budget check is conservative.

Freed C heap memory is handed back to the OS where glibc allows it, so that resident memory
tracks what blocks hold rather than what the allocator keeps.
"""

from __future__ import annotations

import ctypes
import sys
from dataclasses import dataclass
from pathlib import Path

_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
MMAP_THRESHOLD_BYTES = 2**20
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _glibc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def return_large_frees_to_the_os() -> None:
    """Serve C heap allocations of 1 MiB and more with mmap, so that freeing them returns the
    memory to the OS; a no-op where glibc is absent.

    glibc raises its mmap threshold (up to 32 MiB) after the first large frees and then keeps
    freed tensors in fragmented heap arenas, so resident memory creeps up from block to block.
    """
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


def release_free_heap() -> None:
    """Return the C heap's free memory to the OS (glibc ``malloc_trim``), so that resident
    memory reflects what is in use; a no-op where glibc is absent."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def resident_bytes() -> int:
    """Resident memory of this process now."""
    import psutil  # imported on use: ``import jacengine`` stays light (psutil on Linux imports resource)

    return int(psutil.Process().memory_info().rss)


def peak_resident_bytes() -> int:
    """The most resident memory this process has held since its start or the last reset."""
    if sys.platform.startswith("linux"):
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import psutil

    info = psutil.Process().memory_info()
    if hasattr(info, "peak_wset"):  # Windows
        return int(info.peak_wset)
    import resource  # POSIX only, hence imported here

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # bytes on macOS


def reset_peak() -> None:
    """Restart the peak from the current resident memory where the OS allows it (Linux)."""
    release_free_heap()
    if sys.platform.startswith("linux"):
        try:
            _CLEAR_REFS.write_text("5")
        except OSError:
            pass


@dataclass
class ProcessMemory:
    """Resident memory of this process above a baseline, and its peak.

    ``set_baseline()`` records the resident memory the budget is measured from (once the model
    and inputs are open); ``reset_peak()`` returns freed heap memory to the OS and restarts the
    high-water mark, so ``peak_above_baseline()`` is the peak of what ran since.
    """

    baseline: int = 0

    def set_baseline(self) -> None:
        reset_peak()
        self.baseline = resident_bytes()

    def reset_peak(self) -> None:
        reset_peak()

    def current_above_baseline(self) -> int:
        """Resident memory now, above the baseline (after returning freed heap to the OS)."""
        release_free_heap()
        return max(0, resident_bytes() - self.baseline)

    def peak_above_baseline(self) -> int:
        return max(0, peak_resident_bytes() - self.baseline)
