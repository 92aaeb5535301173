"""The seed problem, (B, T, F) = (10, 100, 1): jacengine vs the seed user's eager batch_jacobian.

Each side runs as a whole fresh process (TensorFlow import, model build, Jacobian), which is what a
user waits for. Run one side with ``python benchmarks/seed.py jacengine`` or
``python benchmarks/seed.py eager``; with no argument, both run in fresh subprocesses, in turn,
``--repeats`` times, and the medians, their ratio and each process's peak RSS are printed
(measured by the OS: ru_maxrss from os.wait4).

Both sides use the same weights (seed_model(seed=0)) and inputs, and check their result against
each other's shape; correctness against batch_jacobian is covered by the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

SHAPE = (10, 100, 1)


def run_eager() -> None:
    import numpy as np
    import tensorflow as tf

    from jacengine.tf.zoo import seed_model

    model = seed_model()
    x = tf.constant(np.random.default_rng(0).normal(size=SHAPE).astype("float32"))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = model(x)
    jacobian = tape.batch_jacobian(y, x).numpy()
    assert jacobian.shape == (10, 100, 1, 100, 1)


def run_jacengine() -> None:
    import numpy as np

    import jacengine
    from jacengine.tf.zoo import seed_model

    x = np.random.default_rng(0).normal(size=SHAPE).astype("float32")
    with tempfile.TemporaryDirectory() as directory:
        store = jacengine.compute(seed_model(), x, os.path.join(directory, "j.zarr"), progress=False)
        assert store.shape == (10, 100, 1, 100, 1) and store.is_complete


def time_child(side: str) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one fresh process running ``side``."""
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, __file__, side], env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"{side} failed with status {child.returncode}")
    return seconds, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("side", nargs="?", choices=["jacengine", "eager"])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.side == "eager":
        return run_eager()
    if args.side == "jacengine":
        return run_jacengine()
    times: dict[str, list[float]] = {"jacengine": [], "eager": []}
    peaks: dict[str, list[float]] = {"jacengine": [], "eager": []}
    for _ in range(args.repeats):
        for side in times:
            seconds, peak = time_child(side)
            times[side].append(round(seconds, 2))
            peaks[side].append(round(peak))
    medians = {side: statistics.median(values) for side, values in times.items()}
    report = {
        "shape": SHAPE,
        "repeats": args.repeats,
        "seconds": times,
        "peak_rss_mib": peaks,
        "median_seconds": medians,
        "median_peak_rss_mib": {side: statistics.median(values) for side, values in peaks.items()},
        "eager_over_jacengine": round(medians["eager"] / medians["jacengine"], 2),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
