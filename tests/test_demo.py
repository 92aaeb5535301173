"""The demo finds the structure it was trained on: its lag profile peaks at the true lags."""

from __future__ import annotations

import pytest

pytest.importorskip("keras")


@pytest.mark.slow
def test_demo_is_quiet_and_its_lag_profile_peaks_at_the_true_lags(tmp_path) -> None:
    """`jacengine demo` as a new user runs it: a fresh process with TensorFlow's logging at its
    defaults. No TensorFlow start-up line and no warning; the lag profile finds lags 5 and 20."""
    import os
    import subprocess
    import sys

    env = {name: value for name, value in os.environ.items() if name not in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS")}
    run = subprocess.run([sys.executable, "-m", "jacengine", "demo", "--out", str(tmp_path / "demo.zarr"), "--plot",
                          str(tmp_path / "demo.png")], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stderr == "", run.stderr  # no cuInit, CPU-feature, absl or oneDNN lines, no WARNING
    assert "top lags [5, 20" in run.stdout or "top lags [20, 5" in run.stdout, run.stdout
    assert (tmp_path / "demo.png").stat().st_size > 10_000


def test_reduce_cli_writes_results_and_refuses_incomplete(tmp_path) -> None:
    import numpy as np
    from click.testing import CliRunner
    from helpers import compute_with_blocks

    from jacengine.cli import main
    from jacengine.tf.zoo import seed_model

    x = np.random.default_rng(3).normal(size=(2, 12, 1)).astype("float32")
    store = compute_with_blocks(seed_model(units=4), x, tmp_path / "j.zarr", chunks_per_block=1, t_chunk=4, batch_chunk=2)
    runner = CliRunner()
    result = runner.invoke(main, ["reduce", str(store.path), "--op", "lag-profile", "--op", "top-k", "--k", "2"])
    assert result.exit_code == 0, result.output
    assert (store.path / "reductions" / "lag-profile" / "mean_abs").is_dir()
    assert "of the influence lies within lag" in result.output
    config = tmp_path / "job.toml"
    config.write_text(f'store = "{store.path.name}"\n[reduce]\nops = ["lag-profile", "window-sum"]\nfraction = 0.5\n'
                      'window = "2:5"\n')
    result = runner.invoke(main, ["reduce", "--config", str(config), "-q"])  # the store and the ops from the file
    assert result.exit_code == 0, result.output
    import xarray as xr

    assert xr.open_zarr(store.path, group="reductions/lag-profile").attrs["fraction"] == 0.5
    assert xr.open_zarr(store.path, group="reductions/window-sum").attrs["window_stop"] == 5
    result = runner.invoke(main, ["reduce", "--config", str(config), "--op", "saliency"])  # a flag overrides the file
    assert result.exit_code == 0 and "saliency: wrote" in result.output and "window-sum" not in result.output
    store = type(store)(store.path, mode="r+")
    store.forget_blocks([0])
    result = runner.invoke(main, ["reduce", str(store.path), "--op", "saliency"])
    assert result.exit_code == 2 and "blocks pending (0)" in result.output
    result = runner.invoke(main, ["reduce", str(store.path), "--op", "saliency", "--partial"])
    assert result.exit_code == 0 and "coverage 67%" in result.output
    hash_before = sorted((p.relative_to(store.path), p.stat().st_mtime_ns) for p in store.path.rglob("*"))
    result = runner.invoke(main, ["demo", "--out", str(store.path)])  # refused before training: no --overwrite
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert sorted((p.relative_to(store.path), p.stat().st_mtime_ns) for p in store.path.rglob("*")) == hash_before
