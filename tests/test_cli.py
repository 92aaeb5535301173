"""The command line on files: compute, status (exit 3 while incomplete), plan --json."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

keras = pytest.importorskip("keras")

from helpers import reference_jacobian  # noqa: E402

from jacengine.cli import main  # noqa: E402


def test_compute_status_plan_on_files(tmp_path) -> None:
    keras.utils.set_random_seed(7)
    model = keras.Sequential([keras.Input((None, 1)), keras.layers.GRU(4, return_sequences=True), keras.layers.Dense(1)])
    model.save(tmp_path / "model.keras")
    x = np.random.default_rng(8).normal(size=(3, 10, 1)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    runner = CliRunner()
    files = ["--model", str(tmp_path / "model.keras"), "--inputs", str(tmp_path / "x.npy")]

    result = runner.invoke(main, ["plan", *files, "--budget", "512MiB", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["shape"] == [3, 10, 1, 10, 1]
    assert summary["budget_bytes"] == 512 * 2**20 and summary["predicted_peak_bytes"] <= summary["budget_bytes"]
    assert 0 < summary["minimum_budget_bytes"] <= summary["budget_bytes"] and summary["traces"] == 1
    result = runner.invoke(main, ["plan", *files, "--budget", "512MiB"])
    assert result.exit_code == 0 and "minimum for this model and shape" in result.output
    lag_plan = ["plan", *files, "--layout", "lag", "--max-lag", "4", "--method", "reverse-loop", "--json"]
    result = runner.invoke(main, lag_plan)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["shape"] == [3, 10, 1, 4, 1] and summary["method"] == "reverse-loop"
    result = runner.invoke(main, [*lag_plan[:-4], "four", "--json"])
    assert result.exit_code == 2 and "Invalid value for '--max-lag'" in result.output

    out = tmp_path / "j.zarr"
    result = runner.invoke(main, ["compute", *files, "--out", str(out), "--t-out", "2:10:3", "-v", "--progress"])
    assert result.exit_code == 0, result.output
    assert "measured peak" in result.output and "budget" in result.output  # the one-line summary
    assert "jacengine: " in result.output and "blocks pending" in result.output  # -v after the command: INFO lines
    assert "preparing: calibrate" in result.output  # --progress forced the status line on
    import jacengine

    store = jacengine.open_store(out)
    expected = reference_jacobian(model, x)[:, 2:10:3]
    np.testing.assert_allclose(store.to_numpy(), expected, rtol=0, atol=1e-5 * np.abs(expected).max())

    result = runner.invoke(main, ["status", str(out), "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["complete"] is True
    jacengine.open_store(out, mode="r+").forget_blocks([0])
    assert runner.invoke(main, ["status", str(out)]).exit_code == 3

    result = runner.invoke(main, ["compute", *files, "--out", str(out), "--t-out", "1", "--no-progress"])
    assert result.exit_code == 2 and "different run" in result.output


def test_selection_parsing() -> None:
    from jacengine.cli import parse_selection

    assert parse_selection("10") == 10
    assert parse_selection("0:50:2") == slice(0, 50, 2)
    assert parse_selection("1,5,9") == [1, 5, 9]
    assert parse_selection(None) is None


def test_short_help_quiet_and_a_crash_has_its_own_exit_status(monkeypatch, tmp_path) -> None:
    """-h works on every command; -q is accepted; an unexpected exception exits 1 with a
    traceback and a line saying it is a bug, apart from verify's 1 and bad input's 2."""
    runner = CliRunner()
    assert runner.invoke(main, ["-h"]).exit_code == 0
    assert "--out" in runner.invoke(main, ["compute", "-h"]).output
    monkeypatch.setattr("jacengine.store_status.open_store", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    crashed = runner.invoke(main, ["-q", "status", str(tmp_path)])
    assert crashed.exit_code == 1 and "internal error" in crashed.output
    monkeypatch.undo()
    refused = runner.invoke(main, ["status", str(tmp_path)])
    assert refused.exit_code == 2 and "not a jacengine store" in refused.output


def test_a_stop_while_a_cluster_starts_exits_75(monkeypatch, tmp_path) -> None:
    """SIGTERM at any stage of `compute` is resumable, here while a job-queue cluster starts."""
    import os
    import signal

    from jacengine import api

    closed = []

    class StartingCluster:
        def __init__(self, kind: str, section: dict, shared_directory: object) -> None:
            os.kill(os.getpid(), signal.SIGTERM)  # the scheduler stops the job right now

        def close(self) -> None:
            closed.append(True)

    starting_cluster = StartingCluster

    monkeypatch.setattr(api, "jobqueue_cluster", starting_cluster)
    (tmp_path / "model.keras").write_bytes(b"")
    np.save(tmp_path / "x.npy", np.zeros((1, 4, 1), dtype="float32"))
    result = CliRunner().invoke(main, ["compute", "--model", str(tmp_path / "model.keras"), "--inputs",
                                       str(tmp_path / "x.npy"), "--out", str(tmp_path / "j.zarr"), "--cluster", "slurm"])
    assert result.exit_code == 75 and "stopped by SIGTERM before the first block" in result.output
    assert closed == [True] and not (tmp_path / "j.zarr").exists()  # the cluster it started is closed


def test_every_option_of_every_command_has_help() -> None:
    import click

    def options(command: click.Command, path: str):
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                yield from options(sub, f"{path} {name}")
        for parameter in command.params:
            if isinstance(parameter, click.Option) and not parameter.hidden:
                yield path, parameter

    missing = [f"{path} {'/'.join(option.opts)}" for path, option in options(main, "jacengine") if not option.help]
    assert not missing, missing


def test_every_command_shows_an_example_and_takes_v_q_and_progress() -> None:
    runner = CliRunner()
    for name, command in main.commands.items():
        shown = runner.invoke(main, [name, "-h"]).output
        assert f"Example: jacengine {name}" in shown, name
        flags = {flag for parameter in command.params for flag in getattr(parameter, "opts", [])}
        assert {"-v", "-q", "--progress"} <= flags, name


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGINT"])
def test_a_stop_while_the_command_loads_exits_resumable(stop: str, tmp_path) -> None:
    """A signal during the command's imports (a second or more): exit 75 with one line, not 143
    or a KeyboardInterrupt traceback."""
    import os
    import signal
    import subprocess
    import sys
    import time

    for delay in (0.3,):
        process = subprocess.Popen([sys.executable, "-m", "jacengine", "status", str(tmp_path / "none.zarr")],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        os.kill(process.pid, getattr(signal, stop))
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 75 and f"stopped by {stop} while starting" in stderr, (delay, stderr)
        assert "Traceback" not in stderr
