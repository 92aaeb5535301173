"""A SLURM job array from a config file: the files a job needs, the config that names them, and
the submission script ``jacengine script slurm`` renders from it (init, N shards, reductions).

    python examples/slurm_job_array.py [--folder job] [--shards 8]

Then, on a SLURM login node: ``bash job/submit.sh``. Here the script is only rendered and checked
(no SLURM): its array size, its requeue on SIGTERM (exit 75), and that bash parses it.
"""

import argparse
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--folder", default="job")
parser.add_argument("--shards", type=int, default=8)
arguments = parser.parse_args()

folder = Path(arguments.folder)
folder.mkdir(exist_ok=True)
keras.utils.set_random_seed(0)
keras.Sequential([keras.Input((None, 1)), keras.layers.LSTM(32, return_sequences=True),
                  keras.layers.TimeDistributed(keras.layers.Dense(1))]).save(folder / "model.keras")
np.save(folder / "inputs.npy", np.random.default_rng(0).normal(size=(64, 1000, 1)).astype("float32"))
(folder / "job.toml").write_text(f"""\
model = "model.keras"          # paths are relative to this file
inputs = "inputs.npy"
store = "jacobian.zarr"
budget = "4GiB"                # per shard

[reduce]                       # run once every shard has finished
ops = ["saliency", "lag-profile"]

[job]
shards = {arguments.shards}
time = "02:00:00"
cpus = 4
memory = "16G"
setup = ["source $HOME/venvs/jacengine/bin/activate"]
""")
script = subprocess.run([sys.executable, "-m", "jacengine", "script", "slurm", str(folder / "job.toml")],
                        capture_output=True, text=True, check=True).stdout
(folder / "submit.sh").write_text(script)
print(script)
assert f"#SBATCH --array=0-{arguments.shards - 1}" in script and "--requeue" in script
subprocess.run(["bash", "-n", str(folder / "submit.sh")], check=True)  # it parses
print(f"wrote {folder / 'submit.sh'}: submit it with `bash {folder / 'submit.sh'}` on a SLURM login node")
