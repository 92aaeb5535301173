"""Writers that cannot collide (no TensorFlow): the store lock and the generation id. The
other run is a real second process holding the lock, not a timer."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from jacengine.errors import StoreError
from jacengine.planning.blocks import make_plan
from jacengine.planning.spec import JacobianSpec
from jacengine.storage.chunkfiles import TEMPORARY_SUFFIX
from jacengine.storage.locking import LOCK_FILE
from jacengine.storage.store import JacobianStore

SPEC = JacobianSpec(batch=2, input_steps=4, input_features=1, output_steps=4, output_features=1,
                    t_out=tuple(range(4)), f_out=(0,), f_in=(0,), causal=False, truncatable=True)
PLAN = make_plan(SPEC, batch_chunk=1, t_out_chunk=2, t_in_chunk=4, chunks_per_block=lambda w: 1, prefixes=1)


def create(path: Path, overwrite: bool = False) -> JacobianStore:
    return JacobianStore.create(path, SPEC, PLAN, {"format": 1}, overwrite=overwrite)


def block_values(index: int) -> np.ndarray:
    block = PLAN.blocks[index]
    return np.full((block.n_batch, block.n_rows, 1, block.in_stop, 1), index + 1, "float32")


@pytest.fixture
def other_run(tmp_path):
    """Starts a process that holds the store's lock, as a writing run does, until the test ends."""
    processes = []

    def hold(store: Path, exclusive: bool = False) -> None:
        ready = tmp_path / f"held-{len(processes)}"
        script = textwrap.dedent(f"""
            import pathlib, time
            from jacengine.storage.locking import store_lock
            with store_lock(pathlib.Path({str(store)!r}), exclusive={exclusive}) as held:
                assert held
                pathlib.Path({str(ready)!r}).touch()
                time.sleep(60)
        """)
        processes.append(subprocess.Popen([sys.executable, "-c", script]))
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert time.monotonic() < deadline and processes[-1].poll() is None, "the other run did not start"
            time.sleep(0.05)

    yield hold
    for process in processes:
        process.kill()
        process.wait()


def test_overwrite_is_refused_while_another_run_writes(tmp_path, other_run) -> None:
    path = tmp_path / "s.zarr"
    store = create(path)
    store.write_block(PLAN.blocks[0], block_values(0))
    other_run(path)
    with pytest.raises(StoreError, match="another jacengine run is writing"):
        create(path, overwrite=True)
    assert JacobianStore(path).done_blocks() == {0}  # nothing lost


def test_a_writer_of_an_overwritten_store_cannot_commit_into_the_new_one(tmp_path) -> None:
    path = tmp_path / "s.zarr"
    stale = create(path)
    fresh = create(path, overwrite=True)
    with pytest.raises(StoreError, match="was replaced"):
        stale.write_block(PLAN.blocks[1], block_values(1))
    assert fresh.done_blocks() == set() and not np.any(fresh.array[...])  # nothing written into it
    fresh.write_block(PLAN.blocks[1], block_values(1))
    assert fresh.done_blocks() == {1}


def test_cleanup_at_age_zero_waits_for_the_lock(tmp_path, other_run) -> None:
    """What compute does before a local run: with another run holding the store, its in-flight
    temporary files stay (age rule); alone, every leftover goes."""
    from jacengine.api import STALE_TEMPORARY_S
    from jacengine.storage.locking import store_lock

    path = tmp_path / "s.zarr"
    store = create(path)
    leftover = path / "jacobian" / "c" / f".in-flight{TEMPORARY_SUFFIX}"
    leftover.parent.mkdir(parents=True, exist_ok=True)
    leftover.write_bytes(b"x")
    other_run(path)
    with store_lock(path, exclusive=True) as alone:
        assert alone is False
        assert store.remove_temporary_files(min_age_s=0 if alone else STALE_TEMPORARY_S) == 0
    assert leftover.exists() and (path / LOCK_FILE).exists()
