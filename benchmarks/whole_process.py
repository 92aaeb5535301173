"""The seed problem as a user runs it, whole processes timed from outside: ``jacengine compute``
on files against a script doing what a TensorFlow user would (load the model, one while-loop
``batch_jacobian`` in a ``tf.function``, save the result), alternating, in one run.

    python -m benchmarks.whole_process [--batch 10 --steps 100 --repeats 3]

Both start from the same ``.keras`` file and ``.npy`` inputs (the seed model of
``jacengine.tf.zoo``, untrained weights) and import TensorFlow, which is most of a small run.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np

from jacengine import open_store


def tf_while_script(model_path: str, inputs_path: str, out_path: str) -> None:
    """What a TensorFlow user writes: the whole J with a while-loop batch_jacobian, saved."""
    import keras
    import tensorflow as tf

    model = keras.saving.load_model(model_path, compile=False)
    x = tf.constant(np.load(inputs_path))

    @tf.function(autograph=False)
    def jacobian() -> tf.Tensor:
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = model(x, training=False)
        return tape.batch_jacobian(y, x, experimental_use_pfor=False)

    np.save(out_path, jacobian().numpy())


def _commands(folder: Path) -> dict[str, list[str]]:
    model, inputs = str(folder / "seed.keras"), str(folder / "x.npy")
    jacengine = str(Path(sys.executable).with_name("jacengine"))
    return {
        "jacengine compute": [jacengine, "compute", "--model", model, "--inputs", inputs, "--out",
                              str(folder / "j.zarr"), "--overwrite", "--budget", "1GiB", "-q"],
        "tf-while script": [sys.executable, "-m", "benchmarks.whole_process", "tf-while", model, inputs,
                            str(folder / "j.npy")],
    }


def _write_problem(folder: Path, batch: int, steps: int) -> None:
    subprocess.run([sys.executable, "-c", "import sys, numpy as np\nfrom jacengine.tf.zoo import seed_model\n"
                    "seed_model().save(sys.argv[1])\n"
                    "np.save(sys.argv[2], np.random.default_rng(0).normal(size=(int(sys.argv[3]), int(sys.argv[4]), 1))"
                    ".astype('float32'))",
                    str(folder / "seed.keras"), str(folder / "x.npy"), str(batch), str(steps)], check=True)


@click.command()
@click.option("--batch", type=int, default=10, show_default=True)
@click.option("--steps", type=int, default=100, show_default=True)
@click.option("--repeats", type=int, default=3, show_default=True, help="Runs of each command, alternating.")
@click.argument("script", required=False, type=click.Choice(["tf-while"]))
@click.argument("arguments", nargs=-1)
def main(batch: int, steps: int, repeats: int, script: str | None, arguments: tuple[str, ...]) -> None:
    if script == "tf-while":  # one run of the baseline, as a process of its own
        tf_while_script(*arguments)
        return
    with tempfile.TemporaryDirectory() as directory:
        folder = Path(directory)
        _write_problem(folder, batch, steps)
        commands = _commands(folder)
        seconds: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(repeats):
            for name, command in commands.items():
                started = time.perf_counter()
                subprocess.run(command, check=True, capture_output=True)
                seconds[name].append(time.perf_counter() - started)
        reference = np.load(folder / "j.npy")
        difference = float(np.max(np.abs(open_store(folder / "j.zarr").to_numpy() - reference)) / np.max(np.abs(reference)))
    click.echo(f"seed problem ({batch}, {steps}, 1), whole processes, {repeats} alternating runs each; "
               f"max |difference| / max |J| = {difference:.1e}")
    click.echo("| command | min s | median s | max s |\n|---|---|---|---|")
    for name, times in seconds.items():
        click.echo(f"| {name} | {min(times):.2f} | {statistics.median(times):.2f} | {max(times):.2f} |")
    names = list(seconds)
    ratio = statistics.median(seconds[names[0]]) / statistics.median(seconds[names[1]])
    click.echo(f"ratio of medians, {names[0]} / {names[1]}: {ratio:.2f}")


if __name__ == "__main__":
    main()
