"""Hashes of the stores the seed model gives, per method: for changes that must not change a byte.

    python -m benchmarks.store_hashes [--batch 16 --steps 200]

Run it before and after a refactor (``git stash``, or two checkouts) and compare the lines. Each
line hashes the Jacobian's values (``to_numpy``) and its chunk files (names and bytes), and
names the chunk grid, which the hashes depend on. The seed model's weights and the inputs are
seeded, so the lines are the same on every run of the same code, versions and machine.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import click
import numpy as np


def chunk_files_hash(root: Path) -> str:
    """sha256 over the Jacobian's chunk files, in name order: each file's path, then its bytes."""
    digest = hashlib.sha256()
    for path in sorted(p for p in (root / "jacobian" / "c").rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


@click.command()
@click.option("--batch", default=16, show_default=True)
@click.option("--steps", default=200, show_default=True)
@click.option("--methods", default="reverse,reverse-loop,recurrent", show_default=True)
def main(batch: int, steps: int, methods: str) -> None:
    """Print one line per method: values hash, chunk files hash, chunk grid."""
    import keras

    import jacengine
    from jacengine.tf.zoo import seed_model

    keras.utils.set_random_seed(0)
    model = seed_model()
    x = np.random.default_rng(0).normal(size=(batch, steps, 1)).astype("float32")
    for method in methods.split(","):
        with tempfile.TemporaryDirectory() as folder:
            root = Path(folder) / "j.zarr"
            store = jacengine.compute(model, x, root, method=method, budget="1GiB", progress=False)
            values = hashlib.sha256(np.ascontiguousarray(store.to_numpy()).tobytes()).hexdigest()[:16]
            click.echo(f"{method}: values {values}, chunk files {chunk_files_hash(root)}, grid {store.plan.grid}")


if __name__ == "__main__":
    main()
