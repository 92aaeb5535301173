"""Does the budget hold? Peak memory above baseline of jacengine.compute under several budgets.

Each case runs in a fresh subprocess: build the seed model (LSTM(32) + per-step Dense) and the
inputs, take the baseline RSS (model and inputs open, TensorFlow imported), reset the kernel's
high-water mark (/proc/self/clear_refs), run ``jacengine.compute``, and report the peak RSS above
the baseline (VmHWM - baseline) against the budget, with the wall time.

    python benchmarks/budget.py                       # the full grid (several minutes)
    python benchmarks/budget.py --cases 32x500x1 --budgets 256MiB 1GiB
Results: JSON on stdout and benchmarks/results/budget.json, plus a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = ["32x500x1", "32x1000x1", "8x1000x8"]
BUDGETS = ["256MiB", "512MiB", "1GiB", "4GiB"]


def child(case: str, budget: str) -> dict:
    import numpy as np

    import jacengine
    from jacengine.budget import ProcessMemory, parse_budget
    from jacengine.tf.zoo import seed_model

    batch, steps, features = (int(v) for v in case.split("x"))
    model = seed_model(features_in=features, features_out=features)
    x = np.random.default_rng(0).normal(size=(batch, steps, features)).astype("float32")
    memory = ProcessMemory()
    memory.set_baseline()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as directory:
        try:
            store = jacengine.compute(model, x, os.path.join(directory, "j.zarr"), budget=budget, progress=False)
            blocks, error = len(store.plan.blocks), None
        except jacengine.BudgetError as exc:
            blocks, error = 0, str(exc).split(";")[0]
    seconds = time.perf_counter() - started
    peak = memory.peak_above_baseline()
    return {"case": case, "budget": budget, "budget_bytes": parse_budget(budget), "peak_bytes": peak,
            "peak_over_budget": round(peak / parse_budget(budget), 3), "seconds": round(seconds, 2),
            "blocks": blocks, "error": error}


def markdown(rows: list[dict]) -> str:
    lines = ["| case (B x T x F) | budget | blocks | peak above baseline | peak / budget | wall s |", "|---|---|---|---|---|---|"]
    for r in rows:
        peak, blocks = f"{r['peak_bytes'] / 2**20:.0f} MiB", r["blocks"] or r["error"]
        lines.append(f"| {r['case']} | {r['budget']} | {blocks} | {peak} | {r['peak_over_budget']} | {r['seconds']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs=2, metavar=("CASE", "BUDGET"), help=argparse.SUPPRESS)
    parser.add_argument("--cases", nargs="+", default=CASES)
    parser.add_argument("--budgets", nargs="+", default=BUDGETS)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "budget.json"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    rows = []
    for case in args.cases:
        for budget in args.budgets:
            env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
            output = subprocess.run([sys.executable, __file__, "--child", case, budget], capture_output=True, text=True,
                                    env=env, check=True).stdout
            rows.append(json.loads(output.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2))
    print(markdown(rows))


if __name__ == "__main__":
    main()
