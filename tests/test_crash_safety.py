"""Crash safety: kill -9 and resume, SIGTERM, fingerprints, bad input, verify and repair.

Subprocesses run the real ``jacengine compute`` command on a store created in this process with a
forced plan, so interrupted and uninterrupted runs share one plan and can be compared bit for bit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from helpers import compute_with_blocks, create_with_blocks, store_hash  # noqa: E402

import jacengine  # noqa: E402
from jacengine.errors import BlockError, ModelError, StoreError, StoreMismatchError  # noqa: E402
from jacengine.storage.chunkfiles import TEMPORARY_SUFFIX  # noqa: E402

PLAN = dict(chunks_per_block=1, t_chunk=4, batch_chunk=1, prefixes=1)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A saved model and inputs, and the hash of an uninterrupted run's store."""
    directory = tmp_path_factory.mktemp("files")
    keras.utils.set_random_seed(11)
    model = keras.Sequential([keras.Input((None, 2)), keras.layers.LSTM(16, return_sequences=True), keras.layers.Dense(1)])
    model.save(directory / "model.keras")
    np.save(directory / "x.npy", np.random.default_rng(12).normal(size=(4, 64, 2)).astype("float32"))
    model = keras.saving.load_model(directory / "model.keras")
    reference = compute_with_blocks(model, directory / "x.npy", directory / "reference.zarr", **PLAN)
    return directory, model, store_hash(reference.path), len(reference.plan.blocks)


def start_compute(directory: Path, store: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "jacengine", "compute", "--model", str(directory / "model.keras"),
               "--inputs", str(directory / "x.npy"), "--out", str(store), "--no-progress"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_for_done_blocks(store: Path, count: int, process: subprocess.Popen, timeout: float = 120) -> bool:
    """Poll the manifest until ``count`` blocks are done; False if the process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(jacengine.open_store(store).done_blocks()) >= count:
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.005)
    raise TimeoutError("no progress")


TRIALS = [pytest.param(i, marks=pytest.mark.slow) if i >= 1 else i for i in range(15)]


@pytest.mark.slow  # timing luck; the deterministic kill points of test_durability run by default
@pytest.mark.parametrize("trial", TRIALS)
def test_kill_9_at_random_points_then_resume_is_bit_identical(files, tmp_path, trial) -> None:
    directory, model, reference, n_blocks = files
    store = tmp_path / "killed.zarr"
    create_with_blocks(model, directory / "x.npy", store, **PLAN)
    process = start_compute(directory, store)
    # kill within the first half: on a loaded machine the poll below can lag the run by a dozen
    # blocks, and a kill after the last block would test nothing
    target = int(np.random.default_rng(trial).integers(1, n_blocks // 2))
    wait_for_done_blocks(store, target, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_at_kill = len(jacengine.open_store(store).done_blocks())
    assert done_at_kill < n_blocks, "the run finished before the kill: make it longer"
    resumed = jacengine.compute(model, directory / "x.npy", store, progress=False)
    assert resumed.is_complete and not list(store.rglob(f"*{TEMPORARY_SUFFIX}"))
    assert store_hash(store) == reference


@pytest.mark.slow
def test_kill_between_data_write_and_manifest_then_resume(files, tmp_path) -> None:
    """The state a kill leaves just after a block's chunks are written but before it is recorded."""
    directory, model, reference, _ = files
    store = compute_with_blocks(model, directory / "x.npy", tmp_path / "torn.zarr", **PLAN)
    block = store.plan.blocks[5]
    store.forget_blocks([block.index])
    garbage = np.full(store.read_block(block).shape, 123.0, dtype="float32")
    store.array[block.batch_start : block.batch_stop, block.row_start : block.row_stop, :, : block.in_stop, :] = garbage
    (tmp_path / "torn.zarr" / "jacobian" / "c" / f".0.torn{TEMPORARY_SUFFIX}").write_bytes(b"torn")
    jacengine.compute(model, directory / "x.npy", tmp_path / "torn.zarr", progress=False)
    assert store_hash(tmp_path / "torn.zarr") == reference


@pytest.mark.slow
def test_sigterm_exits_75_promptly_and_resumes(files, tmp_path) -> None:
    directory, model, reference, n_blocks = files
    store = tmp_path / "term.zarr"
    create_with_blocks(model, directory / "x.npy", store, **PLAN)
    process = start_compute(directory, store)
    assert wait_for_done_blocks(store, 2, process)
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    latency = time.monotonic() - sent
    assert process.returncode == 75, stderr
    assert "Rerun the same command to resume" in stderr and "SIGTERM" in stderr
    assert latency < 5, f"SIGTERM took {latency:.1f} s to stop the run"
    assert not jacengine.open_store(store).is_complete
    jacengine.compute(model, directory / "x.npy", store, progress=False)
    assert store_hash(store) == reference


@pytest.mark.slow
def test_verify_catches_a_corrupt_chunk_and_resume_repairs_it(files, tmp_path) -> None:
    directory, model, reference, _ = files
    path = tmp_path / "v.zarr"
    jacengine.compute(directory / "model.keras", directory / "x.npy", path, progress=False)
    clean = jacengine.verify(path, samples=6)
    assert clean.ok and clean.rows_checked == 6 and clean.entries_checked == 4, clean
    assert clean.max_gradient_error <= 1e-4 and clean.max_finite_difference_error <= 1e-4
    chunk = next(p for p in sorted((path / "jacobian" / "c").rglob("*")) if p.is_file())
    data = bytearray(chunk.read_bytes())
    data[8:12] = b"\xff\xff\x7f\x7f"
    chunk.write_bytes(bytes(data))
    before = store_hash(path)
    broken = jacengine.verify(path, samples=2)
    assert not broken.ok and len(broken.corrupt) == 1
    assert not jacengine.open_store(path).is_complete
    jacengine.compute(directory / "model.keras", directory / "x.npy", path, progress=False)
    assert store_hash(path) != before and jacengine.verify(path, samples=2).ok


def test_changed_dtype_or_format_is_refused(files, tmp_path) -> None:
    directory, model, _, _ = files
    path = tmp_path / "d.zarr"
    jacengine.compute(model, directory / "x.npy", path, progress=False)
    with pytest.raises(StoreMismatchError, match="dtypes"):
        jacengine.compute(model, directory / "x.npy", path, store_dtype="float64", progress=False)
    store = jacengine.open_store(path, mode="r+")
    attributes = store.attrs
    attributes["fingerprint"]["format"] = 0
    store._group.attrs["jacengine"] = attributes
    with pytest.raises(StoreMismatchError, match="format"):
        jacengine.compute(model, directory / "x.npy", path, progress=False)


class StopGradient(keras.layers.Layer):
    def call(self, inputs):
        return keras.ops.stop_gradient(inputs)


def test_disconnected_outputs_and_non_finite_blocks_are_refused(tmp_path) -> None:
    x = np.random.default_rng(0).normal(size=(2, 8, 1)).astype("float32")
    cut = keras.Sequential([keras.Input((None, 1)), keras.layers.Dense(2), StopGradient()])
    with pytest.raises(ModelError, match="not connected"):
        jacengine.compute(cut, x, tmp_path / "cut.zarr", progress=False)
    assert not (tmp_path / "cut.zarr").exists()

    explode = keras.Sequential([keras.Input((None, 1)), keras.layers.SimpleRNN(2, return_sequences=True),
                                keras.layers.Dense(1, kernel_initializer=keras.initializers.Constant(50.0)),
                                keras.layers.Activation("exponential"), keras.layers.Activation("exponential")])
    with pytest.raises(BlockError, match=r"block \d+ produced a non-finite derivative for sample \d+, output step \d+"):
        compute_with_blocks(explode, x * 30 + 30, tmp_path / "nan.zarr", chunks_per_block=1, t_chunk=2, batch_chunk=1)
    store = jacengine.open_store(tmp_path / "nan.zarr")
    assert not store.is_complete


def test_foreign_and_unwritable_targets_are_refused(files, tmp_path) -> None:
    import zarr

    directory, model, _, _ = files
    foreign = tmp_path / "foreign.zarr"
    zarr.open_group(str(foreign), mode="w").create_array("data", shape=(2,), dtype="f4")
    with pytest.raises(StoreError, match="zarr store that jacengine did not write"):
        jacengine.compute(model, directory / "x.npy", foreign, overwrite=True, progress=False)
    assert (foreign / "data").exists()
    with pytest.raises(StoreError, match="cannot write"):
        jacengine.compute(model, directory / "x.npy", "/proc/jacengine-test.zarr", progress=False)
    with pytest.raises(StoreError, match="is a file"):
        jacengine.compute(model, directory / "x.npy", directory / "x.npy" / "inner.zarr", progress=False)


def test_lambda_models_need_trust(tmp_path) -> None:
    model = keras.Sequential([keras.Input((None, 1)), keras.layers.Dense(2), keras.layers.Lambda(lambda t: t * 2.0)])
    model.save(tmp_path / "lambda.keras")
    x = np.ones((1, 4, 1), dtype="float32")
    with pytest.raises(ModelError, match="trust_model=True"):
        jacengine.compute(tmp_path / "lambda.keras", x, tmp_path / "l.zarr", progress=False)
    assert not (tmp_path / "l.zarr").exists()
    store = jacengine.compute(tmp_path / "lambda.keras", x, tmp_path / "l.zarr", trust_model=True, progress=False)
    assert store.is_complete
