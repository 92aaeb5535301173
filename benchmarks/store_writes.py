"""What durability and checksums cost: every block of a (32, 1000, 1) causal store written with
and without fsync (no model, no TensorFlow: random block values), alternating, in one run; the
share of the writes spent on the chunks' CRC-32C (store format 3); and what checking a finished
store costs (a fresh handle's completion: one read of every chunk file and its CRC, as status
and every resume do).

    python -m benchmarks.store_writes [--repeats 3]
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import click
import google_crc32c
import numpy as np

from jacengine.planning.blocks import make_plan
from jacengine.planning.spec import JacobianSpec
from jacengine.storage.store import FORMAT_VERSION, JacobianStore

BATCH, STEPS = 32, 1000


def seed_case_spec() -> JacobianSpec:
    return JacobianSpec(batch=BATCH, input_steps=STEPS, input_features=1, output_steps=STEPS, output_features=1,
                        t_out=tuple(range(STEPS)), f_out=(0,), f_in=(0,), causal=True, truncatable=True,
                        sequence_to_one=False, method="reverse", compute_dtype="float32", layout="full", max_lag=None,
                        store_dtype="float32")


def write_all(folder: Path, durable: bool, blocks: dict) -> tuple[float, float, float]:
    """(seconds writing every block, seconds of CRC-32C over the written chunk files, seconds a
    fresh handle takes to check the finished store)."""
    spec = seed_case_spec()
    plan = make_plan(spec, batch_chunk=8, t_out_chunk=32, t_in_chunk=32, chunks_per_block=lambda watch: 1, prefixes=4)
    store = JacobianStore.create(folder / f"{durable}-{time.monotonic_ns()}.zarr", spec, plan, {"format": FORMAT_VERSION},
                                 durable=durable)
    values = blocks.setdefault(len(plan.blocks), {
        b.index: np.random.default_rng(b.index).normal(size=(b.n_batch, b.n_rows, 1, b.in_stop, 1)).astype("float32")
        for b in plan.blocks})
    started = time.perf_counter()
    for block in plan.blocks:
        store.write_block(block, values[block.index])
    writing = time.perf_counter() - started
    chunks = [path.read_bytes()[:-4] for block in plan.blocks for path in store.ledger.chunk_files(block)]
    started = time.perf_counter()
    for chunk in chunks:
        google_crc32c.value(chunk)
    checksums = time.perf_counter() - started
    started = time.perf_counter()
    done, _ = JacobianStore(store.path).completion()
    checking = time.perf_counter() - started
    assert len(done) == len(plan.blocks)
    return writing, checksums, checking


@click.command()
@click.option("--repeats", default=3, show_default=True)
def main(repeats: int) -> None:
    blocks: dict = {}
    seconds: dict[bool, list[tuple[float, float, float]]] = {True: [], False: []}
    with tempfile.TemporaryDirectory(dir=".") as folder:
        for _ in range(repeats):
            for durable in (True, False):
                seconds[durable].append(write_all(Path(folder), durable, blocks))
    (count,) = blocks
    durable, fast = (statistics.median(s[0] for s in seconds[flag]) for flag in (True, False))
    crc = statistics.median(s[1] for s in seconds[False])
    check = statistics.median(s[2] for s in seconds[False])
    click.echo(f"{count} blocks of a ({BATCH}, {STEPS}, 1) causal store, median of {repeats}: durable {durable:.2f} s, "
               f"durable=False {fast:.2f} s, ratio {durable / fast:.2f}, fsync cost {durable - fast:.2f} s; "
               f"CRC-32C of every chunk {crc:.3f} s ({crc / fast:.1%} of the durable=False writes); "
               f"checking the finished store (status, resume) {check:.2f} s")


if __name__ == "__main__":
    main()
