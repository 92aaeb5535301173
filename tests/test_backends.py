"""A second backend through the whole engine, without TensorFlow (``tests/linear_backend.py``):
the Backend protocol is all the engine needs. References are independent of the backend's
closed form: finite differences of the model's step-by-step forward pass, in float64."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from linear_backend import BACKEND, LinearRecurrence

import jacengine
from jacengine.backends import backend_for, backend_names, register_backend
from jacengine.backends.base import Backend
from jacengine.errors import StoreMismatchError

B, T = 3, 12
TOLERANCE = 1e-5  # float32 storage of float64 values, relative to max |J|


@pytest.fixture(scope="module", autouse=True)
def _registered():
    register_backend("linear", "linear_backend:BACKEND", "it lives in tests/")
    yield


@pytest.fixture(scope="module")
def model() -> LinearRecurrence:
    return LinearRecurrence.random(hidden=3, f_in=2, f_out=2)


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return np.random.default_rng(1).normal(size=(B, T, 2)).astype("float32")


def finite_difference_jacobian(model: LinearRecurrence, x: np.ndarray, h: float = 1e-3) -> np.ndarray:
    """J[b, t, fo, s, fi] by central differences of the forward pass (exact up to rounding: linear)."""
    x = x.astype("float64")
    batch, steps, features = x.shape
    out = np.zeros((batch, steps, model.c.shape[0], steps, features))
    for s in range(steps):
        for f in range(features):
            step = np.zeros_like(x)
            step[:, s, f] = h
            out[:, :, :, s, f] = (model(x + step) - model(x - step)) / (2 * h)
    return out


def assert_close(actual: np.ndarray, expected: np.ndarray) -> None:
    scale = np.abs(expected).max()
    assert np.abs(actual - expected).max() <= TOLERANCE * scale


def test_the_linear_backend_implements_the_protocol_and_is_found_by_its_model(model) -> None:
    assert isinstance(BACKEND, Backend)
    assert "linear" in backend_names()
    assert backend_for(model) is BACKEND


def test_store_matches_finite_differences_blocked_and_causal(model, x, tmp_path) -> None:
    store = jacengine.compute(model, x, tmp_path / "j.zarr", budget="2MiB", progress=False)
    assert store.spec.causal and len(store.plan.blocks) > 1  # the budget forces several blocks
    assert_close(store.to_numpy(), finite_difference_jacobian(model, x))


def test_resume_verify_and_a_changed_model_refused(model, x, tmp_path) -> None:
    path = tmp_path / "j.zarr"
    jacengine.compute(model, x, path, budget="2MiB", progress=False)
    again = jacengine.compute(model, x, path, budget="2MiB", progress=False)  # resumes: nothing pending
    assert again.is_complete
    report = jacengine.verify(path, model, x, samples=4)
    assert report.ok and report.max_gradient_error is not None and report.max_finite_difference_error is not None
    with pytest.raises(StoreMismatchError):
        jacengine.compute(LinearRecurrence.random(seed=5), x, path, budget="2MiB", progress=False)


def test_lag_layout_and_selections(model, x, tmp_path) -> None:
    store = jacengine.compute(model, x, tmp_path / "lag.zarr", layout="lag", max_lag=4, t_out=[2, 7, 11], f_in=1,
                              progress=False)
    full = finite_difference_jacobian(model, x)
    for i, t in enumerate([2, 7, 11]):
        for lag in range(4):
            expected = full[:, t, :, t - lag, 1] if t - lag >= 0 else 0
            assert_close(store.to_numpy()[:, i, :, lag, 0], np.broadcast_to(expected, (B, 2)))


def test_dask_and_shards_write_the_same_bytes_as_local(model, x, tmp_path) -> None:
    distributed = pytest.importorskip("distributed")
    local = jacengine.compute(model, x, tmp_path / "local.zarr", budget="2MiB", progress=False)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        dask = jacengine.compute(model, x, tmp_path / "dask.zarr", budget="2MiB", executor="dask", cluster=cluster,
                                 progress=False)
    path = tmp_path / "shards.zarr"
    jacengine.init(model, x, path, budget="2MiB")
    for index in range(2):
        sharded = jacengine.compute(model, x, path, budget="2MiB", shard=(index, 2), progress=False)
    assert sharded.is_complete
    for other in (dask, sharded):
        np.testing.assert_array_equal(other.to_numpy(), local.to_numpy())


def test_directional_sums_match_the_jacobian(model, x) -> None:
    result = jacengine.directional(model, x, over="inputs", t_in=slice(0, 5), f_in=[1])
    expected = finite_difference_jacobian(model, x)[:, :, :, 0:5, 1].sum(axis=3)
    assert_close(result["sum"], expected)


def test_the_engine_runs_without_tensorflow(tmp_path) -> None:
    """In a fresh process: the whole run imports neither TensorFlow nor Keras."""
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import numpy as np
        import jacengine
        from jacengine.backends import register_backend
        from linear_backend import LinearRecurrence
        register_backend("linear", "linear_backend:BACKEND")
        x = np.ones((2, 8, 2), "float32")
        store = jacengine.compute(LinearRecurrence.random(), x, {str(tmp_path / "j.zarr")!r}, progress=False)
        assert store.is_complete and jacengine.verify(store.path, LinearRecurrence.random(), x).ok
        leaked = sorted(name for name in ("tensorflow", "keras") if name in sys.modules)
        assert not leaked, leaked
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_a_stop_while_preparing_is_resumable_and_leaves_nothing_half_made(model, x, tmp_path, monkeypatch) -> None:
    """SIGTERM during calibration: the handler is installed when compute starts, so the run
    raises RunInterrupted (exit status 75, requeued by the job scripts) instead of dying with 143."""
    import os
    import signal

    original = BACKEND.probing

    def probing_then_signal(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return original(*args, **kwargs)

    monkeypatch.setattr(BACKEND, "probing", probing_then_signal)
    with pytest.raises(jacengine.RunInterrupted, match="SIGTERM before the first block") as stopped:
        jacengine.compute(model, x, tmp_path / "j.zarr", progress=False)
    assert stopped.value.exit_status == 75 and not (tmp_path / "j.zarr").exists()


def test_remote_store_urls_are_refused_without_creating_a_local_folder(model, x, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    for call in (lambda: jacengine.compute(model, x, "s3://bucket/j.zarr", progress=False),
                 lambda: jacengine.init(model, x, "memory://j.zarr")):
        with pytest.raises(jacengine.InputError, match="is a URL"):
            call()
    assert not list(tmp_path.iterdir())


def test_to_xarray_labels_the_jacobian_and_leaves_the_bookkeeping_out(model, x, tmp_path) -> None:
    pytest.importorskip("xarray")
    store = jacengine.compute(model, x, tmp_path / "j.zarr", t_out=[3, 7], progress=False)
    array = store.to_xarray()
    assert array.dims == ("batch", "t_out", "f_out", "t_in", "f_in")
    assert list(array["t_out"].values) == [3, 7] and array.sizes["t_in"] == T
    np.testing.assert_array_equal(array.values, store.to_numpy())


def test_the_numpy_backend_calibrates_and_stores_the_closed_form(tmp_path) -> None:
    """The numpy backend's run goes through calibration (auto picks a generic method, with a
    reason); its plan fits the budget by the cost it fitted, in several blocks; the store holds
    the closed form's J."""
    x = np.random.default_rng(0).normal(size=(6, 40, 2))
    model = LinearRecurrence.random()
    MiB = 2**20
    summary = jacengine.plan(model, x, budget="3MiB")
    assert summary["method"] in ("reverse", "reverse-loop", "forward")
    assert summary["method_reason"].startswith(f"method {summary['method']} (auto: ")
    assert summary["predicted_peak_bytes"] <= 3 * MiB and summary["blocks"] > 1
    store = jacengine.compute(model, x, tmp_path / "j.zarr", budget="3MiB", progress=False)
    lags = np.array([model.lag_matrix(lag) for lag in range(40)])  # (lag, F_out, F_in)
    t = np.arange(40)
    expected = np.where((t[:, None] >= t[None, :])[:, None, :, None], lags[np.clip(t[:, None] - t[None, :], 0, None)]
                        .transpose(0, 2, 1, 3), 0)
    np.testing.assert_allclose(store.to_numpy(), np.broadcast_to(expected, (6, *expected.shape)), atol=1e-12)


def test_status_is_a_typed_result_that_the_cli_prints_in_words(model, x, tmp_path) -> None:
    import json

    from click.testing import CliRunner

    from jacengine.cli import main

    path = tmp_path / "j.zarr"
    store = jacengine.compute(model, x, path, budget="2MiB", progress=False)
    report = jacengine.status(path, shards=2)
    total = len(store.plan.blocks)
    assert report.complete and report.blocks_done == report.blocks_total == total and not report.damaged
    assert sum(s.blocks_total for s in report.shards) == total and report.bytes_on_disk == store.nbytes_on_disk()
    assert json.loads(json.dumps(report.to_dict()))["complete"] is True
    jacengine.open_store(path, mode="r+").forget_blocks([0])
    assert jacengine.status(path).blocks_done == total - 1
    printed = CliRunner().invoke(main, ["status", str(path)])
    assert printed.exit_code == 3 and f"blocks {total - 1}/{total} done" in printed.output
    fingerprint = store.fingerprint
    assert f"model sha256 {fingerprint['model'][:12]}" in printed.output
    assert "computed in float64, stored as float32" in printed.output
    assert "dtypes=" not in printed.output



def test_a_stop_as_the_last_block_finishes_is_a_success(model, x, tmp_path, monkeypatch) -> None:
    """SIGTERM arriving while the last block is written: nothing is left to resume, so the run
    succeeds (a job array must not requeue a finished shard), and a stop with blocks left does not."""
    import os
    import signal

    from jacengine.executors import LocalExecutor

    original = LocalExecutor.run

    def run_then_signal(self, task, blocks, should_stop=lambda: False):
        done = original(self, task, blocks, should_stop)
        os.kill(os.getpid(), signal.SIGTERM)  # after the last block, before the run ends
        return done

    longer = np.random.default_rng(1).normal(size=(8, 48, 2)).astype("float32")  # many blocks under 2 MiB
    monkeypatch.setattr(LocalExecutor, "run", run_then_signal)
    store = jacengine.compute(model, longer, tmp_path / "j.zarr", progress=False, budget="2MiB")
    assert store.is_complete and store.last_run.computed > 1
    monkeypatch.setattr(LocalExecutor, "run", lambda self, task, blocks, should_stop=None: (
        os.kill(os.getpid(), signal.SIGTERM), 0)[1])  # stopped before any block
    with pytest.raises(jacengine.RunInterrupted, match="blocks left"):
        jacengine.compute(model, longer, tmp_path / "k.zarr", progress=False, budget="2MiB")
