"""A long sequence under a small budget: the full Jacobian of the seed LSTM on (4, 2000, 1)
inputs within 128 MiB, then how far back the model looks (the lag profile), out of core.

    python examples/long_sequence.py [--batch 4] [--steps 2000] [--budget 128MiB] [--out long.zarr]

``batch_jacobian`` would hold all of J (and pfor's intermediates) at once; jacengine computes it in
causal blocks planned within the budget, and the last line reports the peak it measured.
"""

import argparse
import os

# before TensorFlow is imported: its oneDNN allocator keeps freed memory, which small budgets pay
# for in speed (docs/memory.md); jacengine sets this itself only where it imports TensorFlow first
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import jacengine  # noqa: E402
from jacengine.analysis.reductions import reduce  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--batch", type=int, default=4)
parser.add_argument("--steps", type=int, default=2000)
parser.add_argument("--budget", default="128MiB")
parser.add_argument("--out", default="long.zarr")
arguments = parser.parse_args()

keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((None, 1)), keras.layers.LSTM(32, return_sequences=True),
                          keras.layers.TimeDistributed(keras.layers.Dense(1))])
x = np.random.default_rng(0).normal(size=(arguments.batch, arguments.steps, 1)).astype("float32")

store = jacengine.compute(model, x, arguments.out, budget=arguments.budget, progress=False)  # rerun to resume
print(store)
profile = reduce(store, "lag-profile", fraction=0.9)  # written into the store too
print(f"90% of the influence lies within lag {int(profile['quantile_lag'].max())}")
print(store.last_run.line())
assert store.is_complete and store.last_run.peak_bytes <= store.last_run.budget_bytes
