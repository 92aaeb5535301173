"""Scale-out: dask executor and job-array shards give the same store, bit for bit, as one process.

References: a store computed by the local executor from a copy of the same initialised store
(same plan, same model and inputs files); equality is a SHA-256 over every chunk file.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")
distributed = pytest.importorskip("distributed")

from helpers import create_with_blocks, store_hash  # noqa: E402

import jacengine  # noqa: E402
from jacengine.tf.backend import WORKER_ENV  # noqa: E402
from jacengine.tf.model import load_keras_file  # noqa: E402

BLOCKS = dict(chunks_per_block=1, t_chunk=4, batch_chunk=2)  # 4 samples x 16 steps: 8 blocks


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A model file, an inputs file, an initialised store of 8 blocks and its local reference."""
    folder = tmp_path_factory.mktemp("scale")
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((None, 2)), keras.layers.LSTM(5, return_sequences=True), keras.layers.Dense(2)])
    model.save(folder / "model.keras")
    np.save(folder / "x.npy", np.random.default_rng(4).normal(size=(4, 16, 2)).astype("float32"))
    paths = {"model": folder / "model.keras", "inputs": folder / "x.npy", "init": folder / "init.zarr",
             "local": folder / "local.zarr"}
    loaded = load_keras_file(paths["model"])  # the file's model, as workers see it
    create_with_blocks(loaded, np.load(paths["inputs"]), paths["init"], **BLOCKS)
    shutil.copytree(paths["init"], paths["local"])
    jacengine.compute(str(paths["model"]), str(paths["inputs"]), paths["local"], progress=False)
    return paths


def fresh_copy(files: dict[str, Path], name: str) -> Path:
    target = files["init"].parent / name
    shutil.copytree(files["init"], target)
    return target


@pytest.mark.slow
def test_dask_local_cluster_store_is_bit_identical_to_local(files) -> None:
    store = fresh_copy(files, "dask.zarr")
    result = jacengine.compute(str(files["model"]), str(files["inputs"]), store, executor="dask", workers=2, progress=False)
    assert result.is_complete and len(result.plan.blocks) == 8
    assert store_hash(store) == store_hash(files["local"])
    assert not list(store.parent.glob(".dask.zarr.staging-*"))


@pytest.mark.slow
def test_dask_stages_in_memory_model_and_inputs(files, tmp_path) -> None:
    store = fresh_copy(files, "staged.zarr")
    model = load_keras_file(files["model"])
    jacengine.compute(model, np.load(files["inputs"]), store, executor="dask", workers=1, progress=False)
    assert store_hash(store) == store_hash(files["local"])
    assert not list(store.parent.glob(".staged.zarr.staging-*"))  # staging folder removed


@pytest.mark.slow
def test_killed_dask_worker_is_replaced_and_store_is_identical(files) -> None:
    store = fresh_copy(files, "killed.zarr")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None, env=WORKER_ENV) as cluster, distributed.Client(cluster) as client:
        client.run(lambda: __import__("tensorflow"))  # both workers warm, so the kill lands mid-run
        victim = next(iter(client.run(os.getpid).values()))
        errors: list[BaseException] = []

        def run() -> None:
            try:
                jacengine.compute(str(files["model"]), str(files["inputs"]), store, executor="dask",
                                  scheduler=cluster.scheduler_address, progress=False)
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                errors.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        opened = jacengine.open_store(store)
        deadline = time.monotonic() + 120
        while len(opened.done_blocks()) < 2 and time.monotonic() < deadline:  # the probe block counts as 1
            time.sleep(0.05)
        os.kill(victim, signal.SIGKILL)
        thread.join(timeout=300)
    assert not errors, errors
    assert jacengine.open_store(store).is_complete
    assert store_hash(store) == store_hash(files["local"])


@pytest.mark.slow  # by default shards run in-process (test_executor, test_backends); processes: test_durability
def test_four_concurrent_shard_processes_match_one_process(files) -> None:
    store = fresh_copy(files, "shards.zarr")
    config = store.parent / "shards.toml"  # the job-array way: everything in a config file
    config.write_text(f'model = "{files["model"].name}"\ninputs = "{files["inputs"].name}"\nstore = "{store.name}"\n')
    command = [sys.executable, "-m", "jacengine", "compute", "--config", str(config), "--no-progress"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TF_NUM_INTRAOP_THREADS="1")
    shards = [subprocess.Popen([*command, "--shard", f"{i}/4"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True) for i in range(4)]
    outcomes = [(shard.wait(timeout=300), *shard.communicate()) for shard in shards]
    assert [code for code, _, _ in outcomes] == [0, 0, 0, 0], outcomes
    assert store_hash(store) == store_hash(files["local"])
    status = subprocess.run([sys.executable, "-m", "jacengine", "status", "--config", str(config), "--shards", "4"],
                            capture_output=True, text=True, env=env)
    assert status.returncode == 0 and "shard 3/4: 2/2 blocks" in status.stdout, status.stdout


@pytest.mark.slow
def test_shards_need_an_initialised_store_and_a_valid_index(files, tmp_path) -> None:
    with pytest.raises(jacengine.InputError, match="jacengine init"):
        jacengine.compute(str(files["model"]), str(files["inputs"]), tmp_path / "none.zarr", shard=(0, 2), progress=False)
    with pytest.raises(jacengine.InputError, match="shard index 4 is out of range for 4 shards; use 0 to 3"):
        jacengine.compute(str(files["model"]), str(files["inputs"]), files["local"], shard=(4, 4), progress=False)
