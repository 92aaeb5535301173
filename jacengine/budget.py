"""Memory budgets: parsing "2GiB" at the edge, and measuring the peak that the budget bounds.

The budget bounds the measured peak memory of the computation:
- on CPU, the process's resident set size (RSS) above its baseline, the baseline being the RSS
  once the model and inputs are open;
- on a GPU, the device's peak allocation as reported by TensorFlow.
"""

from __future__ import annotations

import ctypes
import re
from dataclasses import dataclass
from pathlib import Path

from dask.utils import parse_bytes

from jacengine.errors import BudgetError

BUDGET_DEFINITION = (
    "budget = peak memory of the computation: on CPU the process's resident memory above its "
    "baseline once the model and inputs are open; on GPU the device's peak allocation"
)


def parse_budget(budget: int | str) -> int:
    """Bytes from an int or a string such as "512MiB", "2GiB", "1.5GB"."""
    if isinstance(budget, bool):
        raise BudgetError(f"budget must be a byte count or a string like '2GiB', got {budget!r}.")
    if isinstance(budget, int):
        value = budget
    elif isinstance(budget, str):
        try:
            value = parse_bytes(budget)
        except (ValueError, TypeError) as exc:
            raise BudgetError(f"cannot read budget {budget!r}; write it like '512MiB' or '2GiB'.") from exc
    else:
        raise BudgetError(f"budget must be a byte count or a string like '2GiB', got {type(budget).__name__}.")
    if value <= 0:
        raise BudgetError(f"budget must be positive, got {budget!r}.")
    return int(value)


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
MMAP_THRESHOLD_BYTES = 2**20


def return_large_frees_to_the_os() -> None:
    """Serve C heap allocations of 1 MiB and more with mmap, so that freeing them returns the
    memory to the OS; a no-op where glibc is absent.

    glibc raises its mmap threshold (up to 32 MiB) after the first large frees and then keeps
    freed tensors in fragmented heap arenas, so resident memory creeps up from block to block.
    Measured on the seed model at (32, 500, 1) with a 1 GiB budget: blocks of the probe's shape
    peaked at 740 MiB alone and at 1035 MiB by the fourth; with a fixed threshold, 835 MiB.
    """
    try:
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    except (OSError, AttributeError):
        pass


def release_free_heap() -> None:
    """Return the C heap's free memory to the OS (glibc ``malloc_trim``), so that resident
    memory reflects what is in use; a no-op where glibc is absent."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@dataclass
class ProcessMemory:
    """Resident memory of this process above a baseline, and its peak (Linux /proc).

    ``set_baseline()`` records the RSS the budget is measured from (once the model and inputs are
    open); ``reset_peak()`` returns freed heap memory to the OS and restarts the kernel's
    high-water mark, so ``peak_above_baseline()`` is the peak of what ran since.
    """

    status_path: Path = Path("/proc/self/status")
    clear_refs_path: Path = Path("/proc/self/clear_refs")
    baseline: int = 0

    def _read(self, field: str) -> int:
        match = re.search(rf"{field}:\s+(\d+)\s+kB", self.status_path.read_text())
        if match is None:
            raise OSError(f"{field} not found in {self.status_path}")
        return int(match.group(1)) * 1024

    def set_baseline(self) -> None:
        self.reset_peak()
        self.baseline = self._read("VmRSS")

    def reset_peak(self) -> None:
        release_free_heap()
        try:
            self.clear_refs_path.write_text("5")
        except OSError:
            pass

    def current_above_baseline(self) -> int:
        """Resident memory now, above the baseline (after returning freed heap to the OS)."""
        release_free_heap()
        return max(0, self._read("VmRSS") - self.baseline)

    def peak_above_baseline(self) -> int:
        return max(0, self._read("VmHWM") - self.baseline)
