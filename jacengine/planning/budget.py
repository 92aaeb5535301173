"""The memory budget: what it bounds, how a run holds it, and parsing "2GiB" at the edge.

What it bounds (:data:`BUDGET_DEFINITION`): the measured peak memory of the computation, per
process (each dask worker and each shard has the whole budget):

- on CPU, the process's resident memory above its baseline, the baseline being the resident
  memory once the model and inputs are open (:mod:`jacengine.memory`);
- on a GPU, the device's peak allocation as the backend reports it.

How a run holds it, in four steps, each in one place:

1. **Prediction** (:mod:`jacengine.planning.costmodel`). A block's peak is predicted from its
   work (samples x rows x watched steps, by the method's work formula in
   :mod:`jacengine.planning.methods`) with a line ``fixed + bytes_per_work * work``;
   :func:`~jacengine.planning.costmodel.choose_plan` takes the fastest chunk grid whose every
   block is predicted within the budget, and refuses a budget below
   :func:`~jacengine.planning.costmodel.minimum_budget` with the minimum in the message.
2. **Calibration** (:mod:`jacengine.planning.calibration`, the fits in
   :mod:`jacengine.planning.fitting`). The line is measured on probe blocks of the actual model
   on this machine, run and read by the backend's prober (e.g. :mod:`jacengine.tf.probes`).
3. **Trust region** (``max_work`` of ``choose_plan``). A plan never holds blocks more than a
   fixed factor larger than the largest block measured; calibration probes larger blocks until
   the plan's blocks are within it.
4. **Out-of-memory split** (:mod:`jacengine.executors.splitting`). A block that runs out of
   memory anyway is computed in halves, and later blocks of its shape too.
"""

from __future__ import annotations

from dask.utils import parse_bytes

from jacengine.errors import BudgetError, setting

BUDGET_DEFINITION = (
    "budget = peak memory of the computation: on CPU the process's resident memory above its "
    "baseline once the model and inputs are open; on GPU the device's peak allocation"
)


def parse_budget(budget: int | str) -> int:
    """Bytes from an int or a string such as "512MiB", "2GiB", "1.5GB"."""
    if isinstance(budget, bool):
        raise BudgetError(f"{setting('budget')} must be a byte count or a string like '2GiB', got {budget!r}.")
    if isinstance(budget, int):
        value = budget
    elif isinstance(budget, str):
        try:
            value = parse_bytes(budget)
        except (ValueError, TypeError) as exc:
            raise BudgetError(f"cannot read {setting('budget', budget)}; write it like '512MiB' or '2GiB'.") from exc
    else:
        raise BudgetError(f"{setting('budget')} must be a byte count or a string like '2GiB', got {type(budget).__name__}.")
    if value <= 0:
        raise BudgetError(f"{setting('budget')} must be positive, got {budget!r}.")
    return int(value)
