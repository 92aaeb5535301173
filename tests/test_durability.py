"""Faults injected, not timed: a process killed at each point of the commit protocol, and
power loss simulated on the files, each followed by a resume that must give a store
bit-identical to an uninterrupted run. Uses the numpy test backend (no TensorFlow)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from linear_backend import LinearRecurrence

import jacengine
from jacengine.backends import register_backend
from jacengine.executors.shards import shard_blocks
from jacengine.storage.chunkfiles import FAULT_POINTS, FAULT_VARIABLE, TEMPORARY_SUFFIX
from jacengine.storage.store import MANIFEST

KILLS_PER_POINT = int(os.environ.get("JACENGINE_KILLS", "1"))  # JACENGINE_KILLS=20 for the counts in the notes
RANDOM_KILLS = int(os.environ.get("JACENGINE_RANDOM_KILLS", "3"))  # 10 for the counts in the notes
RUN = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    import numpy as np
    import jacengine
    from jacengine.backends import register_backend
    from linear_backend import LinearRecurrence
    register_backend("linear", "linear_backend:BACKEND")
    x = np.random.default_rng(1).normal(size=(8, 48, 2)).astype("float32")
    jacengine.compute(LinearRecurrence.random(), x, sys.argv[1], budget="2MiB", progress=False)
""").format(tests=str(Path(__file__).parent))


def files_hash(path: Path) -> str:
    """SHA-256 over every chunk file of the jacobian and the manifest, with relative paths (not
    the lock and claim files beside the manifest's chunks)."""
    digest = hashlib.sha256()
    for name in ("jacobian", MANIFEST):
        for chunk in sorted((path / name).rglob("*")):
            if chunk.is_file() and chunk.name != "zarr.json" and chunk.parent.name != "claims" and chunk.suffix != ".lock":
                digest.update(str(chunk.relative_to(path)).encode())
                digest.update(chunk.read_bytes())
    return digest.hexdigest()


def run(path: Path, fault: str | None = None) -> int:
    env = dict(os.environ, **({FAULT_VARIABLE: fault} if fault else {}))
    return subprocess.run([sys.executable, "-c", RUN, str(path)], env=env, capture_output=True, timeout=120).returncode


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("reference") / "j.zarr"
    assert run(path) == 0
    return path, files_hash(path)


@pytest.mark.slow
@pytest.mark.parametrize("point", FAULT_POINTS)
def test_a_kill_at_each_commit_point_resumes_bit_identical(point: str, reference, tmp_path) -> None:
    """after-temp: a chunk's temporary file written; after-rename: the first chunk in place;
    after-data: every chunk in place; after-manifest: the block committed. Each resume must
    leave no temporary file and the same bytes (files_hash covers every file)."""
    blocks = len(jacengine.open_store(reference[0]).plan.blocks)
    for attempt in range(KILLS_PER_POINT):
        path = tmp_path / f"{attempt}.zarr"
        index = (attempt * 3 + 1) % blocks
        assert run(path, f"{point}:{index}") == -9  # killed at that point of that block
        interrupted = jacengine.open_store(path)
        assert (index in interrupted.done_blocks()) == (point == "after-manifest")
        assert bool(list(path.rglob(f"*{TEMPORARY_SUFFIX}"))) == (point == "after-temp")
        assert run(path) == 0
        assert files_hash(path) == reference[1]


@pytest.mark.parametrize("damage", ["delete a chunk", "truncate a chunk", "garble a manifest row",
                                    "garble a manifest row in place"])
def test_simulated_power_loss_is_seen_by_status_and_repaired_by_compute(damage: str, reference, tmp_path) -> None:
    import shutil

    from click.testing import CliRunner

    from jacengine.cli import main

    path = tmp_path / "j.zarr"
    shutil.copytree(reference[0], path)
    store = jacengine.open_store(path)
    block = store.plan.blocks[-1]
    chunk = store.ledger.chunk_files(block)[0]
    if damage == "delete a chunk":
        chunk.unlink()
    elif damage == "truncate a chunk":
        chunk.write_bytes(chunk.read_bytes()[:7])
    elif damage == "garble a manifest row":
        (path / MANIFEST / "c" / str(block.index) / "0").write_bytes(b"\x00garbled")
    else:  # same size, so it decodes: the row check must catch it
        row = path / MANIFEST / "c" / str(block.index) / "0"
        row.write_bytes(bytes(byte ^ 0x5A for byte in row.read_bytes()))
    status = CliRunner().invoke(main, ["status", str(path)])
    assert status.exit_code == 3 and f"blocks {len(store.plan.blocks) - 1}/{len(store.plan.blocks)} done" in status.output
    assert ("recorded done but" in status.output) == damage.endswith("chunk")
    assert run(path) == 0
    assert files_hash(path) == reference[1]


def test_a_non_durable_store_is_the_same_store(tmp_path, reference) -> None:
    register_backend("linear", "linear_backend:BACKEND")
    x = np.random.default_rng(1).normal(size=(8, 48, 2)).astype("float32")
    path = tmp_path / "j.zarr"
    jacengine.compute(LinearRecurrence.random(), x, path, budget="2MiB", progress=False, durable=False)
    assert files_hash(path) == reference[1]


@pytest.mark.slow
def test_four_shards_one_killed_and_a_local_resume_meanwhile_end_bit_identical(reference, tmp_path) -> None:
    """Shards 0-3 run at once with slow blocks; shard 1 is killed between a block's data and its
    manifest row and restarted; a plain local resume starts while they run (it must leave their
    temporary files alone). Every process ends well and the store is bit-identical."""
    script = RUN.replace("progress=False)", "progress=False, shard=None if sys.argv[2] == '-' else (int(sys.argv[2]), 4))")
    path = tmp_path / "j.zarr"
    register_backend("linear", "linear_backend:BACKEND")
    x = np.random.default_rng(1).normal(size=(8, 48, 2)).astype("float32")
    jacengine.init(LinearRecurrence.random(), x, path, budget="2MiB")
    env = dict(os.environ, LINEAR_BLOCK_SECONDS="0.4")

    def start(shard: str, fault: str | None = None) -> subprocess.Popen:
        extra = {FAULT_VARIABLE: fault} if fault else {}
        return subprocess.Popen([sys.executable, "-c", script, str(path), shard], env=dict(env, **extra),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    store = jacengine.open_store(path)
    victim_block = shard_blocks(store.spec, store.plan, 1, 4)[0].index  # its first: the others run on meanwhile
    shards = [start(str(i), f"after-data:{victim_block}" if i == 1 else None) for i in range(4)]
    assert shards[1].wait(timeout=120) == -9  # killed mid-commit
    local = start("-")  # a resume while shards 0, 2, 3 still run
    restarted = start("1")
    for process in (*shards[:1], *shards[2:], local, restarted):
        assert process.wait(timeout=120) == 0, process.stderr.read().decode()[-2000:]
    assert files_hash(path) == reference[1]


@pytest.mark.parametrize("checksummed", [False, True], ids=["format-2", "format-3-crc32c"])
def test_chunk_files_are_the_bytes_zarr_writes(checksummed: bool, tmp_path) -> None:
    """jacengine writes chunk files itself; zarr must write (and read) the very same bytes,
    edge chunks (padded with the fill value) included, with and without the crc32c codec."""
    import zarr
    from zarr.codecs import Crc32cCodec

    from jacengine.storage.chunkfiles import check_raw_layout, chunk_path, encode_chunk, write_files

    values = np.random.default_rng(2).normal(size=(5, 7)).astype("float32")
    arrays = {}
    for name in ("zarr", "ours"):
        group = zarr.open_group(str(tmp_path / f"{name}.zarr"), mode="w")
        arrays[name] = group.create_array("a", shape=values.shape, chunks=(2, 3), dtype="float32", fill_value=0,
                                          compressors=[Crc32cCodec()] if checksummed else None)
    arrays["zarr"][:] = values
    assert check_raw_layout(arrays["ours"]) is checksummed
    chunks = [(i, j) for i in range(3) for j in range(3)]
    write_files([(chunk_path(tmp_path / "ours.zarr" / "a", (i, j)),
                  encode_chunk(values[2 * i : 2 * i + 2, 3 * j : 3 * j + 3], (2, 3), np.dtype("float32"),
                               checksummed=checksummed))
                 for i, j in chunks], durable=True, block_index=0)
    for i, j in chunks:
        assert chunk_path(tmp_path / "ours.zarr" / "a", (i, j)).read_bytes() == \
            chunk_path(tmp_path / "zarr.zarr" / "a", (i, j)).read_bytes()
    assert np.array_equal(arrays["ours"][:], values)
    compressed = zarr.open_group(str(tmp_path / "c.zarr"), mode="w").create_array("a", shape=(4,), dtype="float32")
    with pytest.raises(ValueError, match="not uncompressed"):
        check_raw_layout(compressed)


def test_a_format_1_store_is_resumed_as_it_is(reference, tmp_path) -> None:
    """Stores written before format 2 (a zstd manifest of [done, checksum] rows) resume in place."""
    import shutil

    import zarr

    path = tmp_path / "old.zarr"
    shutil.copytree(reference[0], path)
    store = jacengine.open_store(path)
    rows = store.manifest()
    rows[-2:] = 0  # two blocks left to compute
    group = zarr.open_group(str(path), mode="r+")
    del group[MANIFEST]
    group.create_array(MANIFEST, shape=rows.shape, chunks=(1, 2), dtype="uint64", fill_value=0,
                       dimension_names=("block", "field"))[:] = rows
    attributes = dict(group.attrs["jacengine"])
    attributes["format"] = 1
    attributes["fingerprint"] = dict(attributes["fingerprint"], format=1)
    group.attrs["jacengine"] = attributes
    assert len(jacengine.open_store(path).pending_blocks()) == 2
    assert run(path) == 0
    resumed = jacengine.open_store(path)
    assert resumed.is_complete and resumed.manifest().shape == rows.shape
    chunk_bytes = {p.relative_to(path): p.read_bytes() for p in sorted((path / "jacobian").rglob("*")) if p.is_file()}
    expected = {p.relative_to(reference[0]): p.read_bytes() for p in sorted((reference[0] / "jacobian").rglob("*"))
                if p.is_file()}
    assert chunk_bytes == expected


def test_a_run_alone_at_its_end_removes_temporary_files_its_dead_writers_left(tmp_path) -> None:
    """A shard (or a dask run) leaves young temporary files alone when it starts (another writer's
    may be in flight); at its end, holding the store alone, it removes those a dead writer left."""
    register_backend("linear", "linear_backend:BACKEND")
    x = np.random.default_rng(1).normal(size=(8, 48, 2)).astype("float32")
    path = tmp_path / "j.zarr"
    jacengine.init(LinearRecurrence.random(), x, path, budget="2MiB")
    orphan = path / "jacobian" / "c" / f".0.dead-writer{TEMPORARY_SUFFIX}"
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"half a chunk")
    jacengine.compute(LinearRecurrence.random(), x, path, budget="2MiB", progress=False, shard=(0, 1))
    assert jacengine.open_store(path).is_complete and not orphan.exists()


def flip_a_bit(path: Path, rng: np.random.Generator) -> None:
    data = bytearray(path.read_bytes())
    bit = int(rng.integers(len(data) * 8))
    data[bit // 8] ^= 1 << (bit % 8)
    path.write_bytes(bytes(data))


def test_a_flipped_bit_in_each_of_10_chunks_is_found_by_every_reader_and_recomputed(reference, tmp_path) -> None:
    """One bit flipped in each of 10 random chunk files of done blocks (data or CRC): status,
    verify, the array readers and reduce all see the 10 blocks as pending (the readers refuse),
    and a resume recomputes them into a store bit-identical to the reference."""
    import shutil

    path = tmp_path / "j.zarr"
    shutil.copytree(reference[0], path)
    store = jacengine.open_store(path)
    block_of = {chunk: block.index for block in store.plan.blocks for chunk in store.ledger.chunk_files(block)}
    rng = np.random.default_rng(7)
    flipped = [Path(p) for p in rng.choice(sorted(map(str, block_of)), size=10, replace=False)]
    for chunk in flipped:
        flip_a_bit(chunk, rng)
    damaged = {block_of[chunk] for chunk in flipped}
    found = jacengine.status(path)
    assert set(found.damaged) == damaged and found.blocks_done == len(store.plan.blocks) - len(damaged)
    assert set(jacengine.verify(path, repair=False, progress=False).corrupt) == damaged
    reopened = jacengine.open_store(path)
    for read in (reopened.to_numpy, reopened.to_dask, reopened.to_xarray,
                 lambda: jacengine.reduce(reopened, "saliency", write=False)):
        with pytest.raises(jacengine.StoreError, match="blocks pending"):
            read()
    assert not np.isnan(reopened.to_numpy(partial=True)[:, :, :, :1]).all()  # partial reads the rest
    assert run(path) == 0
    assert files_hash(path) == reference[1]


KILLED_AT = textwrap.dedent("""
    import os, signal, sys, threading, time
    sys.path.insert(0, {tests!r})
    import numpy as np
    import jacengine
    from jacengine.backends import register_backend
    from linear_backend import LinearRecurrence
    register_backend("linear", "linear_backend:BACKEND")
    x = np.random.default_rng(1).normal(size=(8, 48, 2)).astype("float32")
    step, path, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
    threading.Timer(delay, os.kill, (os.getpid(), signal.SIGKILL)).start()
    started = time.perf_counter()
    if step == "init":
        jacengine.init(LinearRecurrence.random(), x, path, budget="2MiB", overwrite=True)
    else:
        jacengine.reduce(path, "saliency")
    print(time.perf_counter() - started, flush=True)
    time.sleep(30)  # the timer kills it
""").format(tests=str(Path(__file__).parent))


def killed_at(step: str, path: Path, delay: float) -> str:
    """Run ``step`` ("init" with overwrite, or "reduce") in a process SIGKILLed after ``delay``
    seconds (after its imports); returns what it printed: the step's duration, if it finished."""
    done = subprocess.run([sys.executable, "-c", KILLED_AT, step, str(path), str(delay)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == -9, done.stderr[-2000:]
    return done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("existing", [False, True], ids=["new", "overwritten"])
def test_a_creation_killed_at_random_points_always_recovers(reference, tmp_path, existing: bool) -> None:
    """kill -9 at random moments of `init --overwrite` (a new path, or a complete store being
    replaced): every time, rerunning compute finishes a store bit-identical to the reference,
    with no manual step."""
    import shutil

    duration = float(killed_at("init", tmp_path / "timing.zarr", 60))
    rng = np.random.default_rng(11)
    for attempt in range(RANDOM_KILLS):
        path = tmp_path / f"j{attempt}.zarr"
        if existing:
            shutil.copytree(reference[0], path)
        killed_at("init", path, float(rng.uniform(0, duration)))
        assert run(path) == 0, f"attempt {attempt}: no recovery"
        assert files_hash(path) == reference[1]


@pytest.mark.slow
def test_a_reduction_killed_at_random_points_leaves_the_earlier_result_whole(reference, tmp_path) -> None:
    """kill -9 at random moments of `reduce saliency` over an earlier result: the result under
    reductions/saliency always reads whole (equal to the earlier one, coverage 1), and the next
    reduce writes it again."""
    import shutil

    import xarray as xr

    path = tmp_path / "j.zarr"
    shutil.copytree(reference[0], path)
    earlier = jacengine.reduce(path, "saliency").load()
    duration = float(killed_at("reduce", path, 60))
    rng = np.random.default_rng(12)
    for attempt in range(RANDOM_KILLS):
        killed_at("reduce", path, float(rng.uniform(0, duration)))
        result = xr.open_zarr(path, group="reductions/saliency", consolidated=False).load()
        assert result.attrs["coverage"] == 1.0, attempt
        xr.testing.assert_identical(result, earlier)
    xr.testing.assert_identical(jacengine.reduce(path, "saliency").load(), earlier)


DASK_RUN = RUN.replace('budget="2MiB", progress=False)', 'budget="2MiB", progress=False, executor="dask", workers=2)')
STOPPED_CLEANLY = textwrap.dedent("""
    try:
        exec(compile({run!r}, "run", "exec"))
    except jacengine.RunInterrupted as stopped:  # as the command line exits
        raise SystemExit(stopped.exit_status) from None
""")


@pytest.mark.slow
def test_ctrl_c_stops_a_dask_run_within_30_s_and_it_resumes_identically(reference, tmp_path) -> None:
    """SIGINT to the whole process group (Ctrl-C in a terminal: the client and its workers) once
    blocks are being written: the client exits 75 within 30 s every time (workers ignore SIGINT;
    the client polls), and a resume gives a store bit-identical to the reference."""
    import signal
    import time

    assert 'executor="dask"' in DASK_RUN
    script = STOPPED_CLEANLY.format(run=DASK_RUN)
    env = dict(os.environ, LINEAR_BLOCK_SECONDS="0.3")
    for attempt in range(RANDOM_KILLS):
        path = tmp_path / f"j{attempt}.zarr"
        process = subprocess.Popen([sys.executable, "-c", script, str(path)], env=env, start_new_session=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while not (path.exists() and jacengine.status(path).blocks_done >= 1) and time.monotonic() < deadline:
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGINT)
        stopped = time.monotonic()
        _, stderr = process.communicate(timeout=90)
        waited = time.monotonic() - stopped
        assert process.returncode == 75 and waited < 30, (attempt, process.returncode, waited, stderr.decode()[-2000:])
        assert run(path) == 0
        assert files_hash(path) == reference[1]


def test_a_full_disk_stops_the_run_with_its_own_error_and_a_resume_finishes_it(reference, tmp_path, monkeypatch) -> None:
    """The disk fills up after 5 chunk files (the sixth is half written): the run raises
    DiskFullError (exit status 74, not a crash), leaves no temporary file, and once there is
    room a rerun finishes a store bit-identical to the reference."""
    import errno

    from jacengine.storage import chunkfiles

    register_backend("linear", "linear_backend:BACKEND")
    x = np.random.default_rng(1).normal(size=(8, 48, 2)).astype("float32")
    path = tmp_path / "j.zarr"
    original, written = chunkfiles._write_temporary, []

    def filling_up(temporary: Path, data: bytes, durable: bool) -> None:
        if len(written) == 5:
            temporary.write_bytes(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(temporary)
        original(temporary, data, durable)

    monkeypatch.setattr(chunkfiles, "_write_temporary", filling_up)
    with pytest.raises(jacengine.DiskFullError, match="free space .* rerun the same command") as full:
        jacengine.compute(LinearRecurrence.random(), x, path, budget="2MiB", progress=False)
    assert full.value.exit_status == 74 and not list(path.rglob(f"*{TEMPORARY_SUFFIX}"))
    monkeypatch.undo()  # the disk has room again
    assert run(path) == 0
    assert files_hash(path) == reference[1]


def test_the_scratch_folder_of_a_killed_process_is_removed_by_the_next_one() -> None:
    """jacobian() in a process killed with -9 leaves its scratch store (in /dev/shm): the next
    scratch store made on the machine removes it, and leaves those of live processes."""
    import shutil

    from jacengine.storage.scratch import scratch_store_path

    code = ("import os, signal; from jacengine.storage.scratch import scratch_store_path; "
            "print(scratch_store_path(1000).parent, flush=True); os.kill(os.getpid(), signal.SIGKILL)")
    killed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    orphan = Path(killed.stdout.strip())
    assert killed.returncode == -9 and orphan.is_dir()
    mine = scratch_store_path(1000).parent
    try:
        assert not orphan.exists() and mine.is_dir()
    finally:
        shutil.rmtree(mine)


@pytest.mark.slow
def test_two_runs_resuming_one_store_share_its_blocks(reference, tmp_path) -> None:
    """Two runs started together on one initialised store: each block is computed by exactly one
    of them (block claims), both take part, and the store is bit-identical to the reference."""
    path = tmp_path / "j.zarr"
    init = RUN.replace("jacengine.compute(", "jacengine.init(").replace(", progress=False)", ")")
    assert subprocess.run([sys.executable, "-c", init, str(path)], capture_output=True, timeout=120).returncode == 0
    pending = len(jacengine.open_store(path).pending_blocks())
    counting = RUN.replace("jacengine.compute(", "print(jacengine.compute(").replace(
        "progress=False)", "progress=False).last_run.computed)")
    env = dict(os.environ, LINEAR_BLOCK_SECONDS="0.2")
    runs = [subprocess.Popen([sys.executable, "-c", counting, str(path)], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert all(run.returncode == 0 for run in runs), [err[-2000:] for _, err in outputs]
    computed = [int(out.strip()) for out, _ in outputs]
    assert sum(computed) == pending and min(computed) > 0, (computed, pending)
    assert files_hash(path) == reference[1]


def test_a_store_with_a_truncated_root_zarr_json_is_replaced_by_overwrite(reference, tmp_path) -> None:
    """Damaged metadata (a truncated root zarr.json): compute refuses to guess, naming the
    damage and --overwrite; overwrite recovers it into a store bit-identical to the reference."""
    import shutil

    register_backend("linear", "linear_backend:BACKEND")
    path = tmp_path / "j.zarr"
    shutil.copytree(reference[0], path)
    root = path / "zarr.json"
    root.write_bytes(root.read_bytes()[:40])
    x = np.random.default_rng(1).normal(size=(8, 48, 2)).astype("float32")
    with pytest.raises(jacengine.StoreError, match="damaged.*overwrite"):
        jacengine.compute(LinearRecurrence.random(), x, path, budget="2MiB", progress=False)
    jacengine.compute(LinearRecurrence.random(), x, path, budget="2MiB", progress=False, overwrite=True)
    assert files_hash(path) == reference[1] and not list(tmp_path.glob(".*jacengine-*"))
