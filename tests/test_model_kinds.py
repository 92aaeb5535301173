"""Every model kind jacengine accepts stores the J of TensorFlow's own batch_jacobian.

Kinds: tf_keras (Keras 2) models, directly and from .h5 and SavedModel files; a SavedModel of
a Keras 3 GRU; a tf.Module with a hand-written recurrence; a plain tf.function; import paths.
Tolerance: float32, 1e-5 of max |J|. Blocks are forced small (several per sample range and
output step range) so causal skipping and prefixes are exercised.
"""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
tf_keras = pytest.importorskip("tf_keras")

from helpers import compute_with_blocks, reference_jacobian  # noqa: E402

import jacengine  # noqa: E402
from jacengine.errors import ModelError, StoreMismatchError  # noqa: E402

B, T, F_IN = 3, 12, 2
BLOCKS = {"chunks_per_block": 1, "t_chunk": 4, "batch_chunk": 2}


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(B, T, F_IN)).astype("float32")


def assert_matches(store: jacengine.JacobianStore, reference: np.ndarray) -> None:
    stored = store.to_numpy()
    assert stored.shape == reference.shape
    assert np.max(np.abs(stored - reference)) <= 1e-5 * np.max(np.abs(reference))


def reference(function: object, x: np.ndarray) -> np.ndarray:
    """batch_jacobian of a callable that takes no ``training`` argument."""
    return reference_jacobian(lambda inputs, training=False: function(inputs), x)


def legacy_seed_model() -> object:
    """The seed model in Keras 2: LSTM then TimeDistributed(Dense)."""
    tf_keras.utils.set_random_seed(1)
    return tf_keras.Sequential([tf_keras.Input((None, F_IN)), tf_keras.layers.LSTM(5, return_sequences=True),
                                tf_keras.layers.TimeDistributed(tf_keras.layers.Dense(2))])


class Recurrence(tf.Module):
    """h_t = tanh(h_(t-1) A + x_t B), y_t = h_t C: causal, but opaque to jacengine."""

    def __init__(self, seed: int = 2) -> None:
        rng = np.random.default_rng(seed)
        self.a = tf.Variable(0.4 * rng.normal(size=(4, 4)).astype("float32"))
        self.b = tf.Variable(rng.normal(size=(F_IN, 4)).astype("float32"))
        self.c = tf.Variable(rng.normal(size=(4, 1)).astype("float32"))

    @tf.function(input_signature=[tf.TensorSpec((None, None, F_IN), tf.float32)])
    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        steps = tf.TensorArray(tf.float32, size=tf.shape(x)[1])
        h = tf.zeros((tf.shape(x)[0], 4))
        for t in tf.range(tf.shape(x)[1]):
            h = tf.tanh(h @ self.a + x[:, t] @ self.b)
            steps = steps.write(t, h @ self.c)
        return tf.transpose(steps.stack(), [1, 0, 2])


@pytest.fixture(scope="module")
def legacy_files(tmp_path_factory) -> dict[str, object]:
    folder = tmp_path_factory.mktemp("legacy")
    model = legacy_seed_model()
    model.save(folder / "seed.h5")
    model.save(folder / "seed_savedmodel")
    return {"model": model, "h5": folder / "seed.h5", "savedmodel": folder / "seed_savedmodel"}


def test_tf_keras_time_distributed_rewritten_to_dense(legacy_files, x) -> None:
    from jacengine.tf.adapters import KerasModel

    rewritten = KerasModel(legacy_files["model"]).for_blocks(x[:2, :5])
    assert [type(layer).__name__ for layer in rewritten.model.layers] == ["LSTM", "Dense"]


def test_callable_of_the_wrong_shape_is_refused_clearly(x) -> None:
    with pytest.raises(ModelError, match="maps \\(B, T, F_in\\)"):
        jacengine.plan(lambda inputs: tf.reshape(inputs, (-1, 7)), x)


# the files take the loader's other paths, on the same model: slow
@pytest.mark.parametrize("source", ["object", pytest.param("h5", marks=pytest.mark.slow),
                                    pytest.param("savedmodel", marks=pytest.mark.slow)])
def test_tf_keras_seed_model(legacy_files, x, tmp_path, source) -> None:
    model = legacy_files["model"] if source == "object" else legacy_files[source]
    store = compute_with_blocks(model, x, tmp_path / "j.zarr", trust_model=source == "savedmodel", **BLOCKS)
    assert store.spec.causal  # tf_keras layers share Keras 3's allow-list
    assert_matches(store, reference_jacobian(legacy_files["model"], x))


@pytest.mark.slow
def test_savedmodel_of_keras3_gru(x, tmp_path) -> None:
    keras.utils.set_random_seed(3)
    gru = keras.Sequential([keras.Input((None, F_IN)), keras.layers.GRU(4, return_sequences=True), keras.layers.Dense(2)])
    gru.export(tmp_path / "gru", verbose=False)
    store = compute_with_blocks(str(tmp_path / "gru"), x, tmp_path / "j.zarr", trust_model=True, **BLOCKS)
    assert not store.spec.causal  # a SavedModel has no layer graph to inspect
    assert_matches(store, reference_jacobian(gru, x))


@pytest.mark.slow
def test_tf_module_default_non_causal_and_vouched_causal(x, tmp_path) -> None:
    module = Recurrence()
    reference_j = reference(module, x)
    default = compute_with_blocks(module, x, tmp_path / "default.zarr", **BLOCKS)
    assert not default.spec.causal
    assert_matches(default, reference_j)
    vouched = compute_with_blocks(module, x, tmp_path / "causal.zarr", causal=True, **BLOCKS)
    assert vouched.spec.causal and vouched.spec.truncatable  # its signature leaves the time axis open
    assert_matches(vouched, reference_j)


def test_plain_tf_function(x, tmp_path) -> None:
    weights = tf.constant(np.random.default_rng(4).normal(size=(F_IN, 3)).astype("float32"))

    @tf.function
    def model(inputs: tf.Tensor) -> tf.Tensor:
        return tf.tanh(tf.cumsum(inputs, axis=1) @ weights)  # causal: a running sum

    store = compute_with_blocks(model, x, tmp_path / "j.zarr", **BLOCKS)
    assert not store.spec.causal
    assert_matches(store, reference(model, x))


def test_causal_true_on_a_non_causal_callable_is_refused(x, tmp_path) -> None:
    def reversed_sum(inputs: tf.Tensor) -> tf.Tensor:
        return tf.cumsum(inputs, axis=1, reverse=True)

    with pytest.raises(ModelError, match="not causal"):
        jacengine.plan(reversed_sum, x, causal=True)


def test_resume_with_changed_callable_is_refused(x, tmp_path) -> None:
    module = Recurrence()
    path = tmp_path / "j.zarr"
    jacengine.compute(module, x, path, progress=False, budget="256MiB")
    jacengine.compute(module, x, path, progress=False, budget="256MiB")  # same model: a no-op resume
    module.a.assign(module.a + 1.0)
    with pytest.raises(StoreMismatchError, match="model"):
        jacengine.compute(module, x, path, progress=False, budget="256MiB")


def test_lambda_layer_in_h5_refused_without_trust(x, tmp_path) -> None:
    model = tf_keras.Sequential([tf_keras.Input((None, F_IN)), tf_keras.layers.Lambda(lambda v: 2.0 * v)])
    model.save(tmp_path / "lambda.h5")
    with pytest.raises(ModelError, match="trust_model"):
        jacengine.plan(str(tmp_path / "lambda.h5"), x)


def test_callable_object_cannot_go_to_dask_workers(x, tmp_path) -> None:
    with pytest.raises(ModelError, match="import path"):
        jacengine.compute(Recurrence(), x, tmp_path / "j.zarr", executor="dask", workers=1, progress=False)


@pytest.fixture()
def model_module(tmp_path, monkeypatch) -> str:
    """A module in the current directory defining a tf.Module instance ``model``."""
    (tmp_path / "my_models.py").write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(__import__("pathlib").Path(__file__).parent)!r})
        from test_model_kinds import Recurrence
        model = Recurrence()
    """))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # the current directory is not searched: PYTHONPATH=. does this
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    return "my_models:model"


@pytest.mark.slow
def test_import_path(model_module, x, tmp_path) -> None:
    store = compute_with_blocks(model_module, x, tmp_path / "j.zarr", **BLOCKS)
    assert_matches(store, reference(Recurrence(), x))


@pytest.mark.slow
def test_cli_with_import_path_and_savedmodel_directory(model_module, x, tmp_path) -> None:
    from click.testing import CliRunner

    from jacengine.cli import main

    np.save(tmp_path / "x.npy", x)
    tf.saved_model.save(Recurrence(seed=5), str(tmp_path / "module_savedmodel"))
    runner = CliRunner()
    for model, expected in ((model_module, Recurrence()), (str(tmp_path / "module_savedmodel"), Recurrence(seed=5))):
        out = tmp_path / f"{len(str(model))}.zarr"
        arguments = ["compute", "--model", model, "--inputs", str(tmp_path / "x.npy"), "--out", str(out), "--no-progress",
                     "--budget", "256MiB", "--causal", "true", "--method", "reverse", "--trust-model"]
        result = runner.invoke(main, arguments)
        assert result.exit_code == 0, result.output
        assert_matches(jacengine.open_store(out), reference(expected, x))
        result = runner.invoke(main, ["verify", str(out), "--trust-model"])  # the model recorded in the store, loaded again
        assert result.exit_code == 0 and "rows" in result.output, result.output
    result = runner.invoke(main, ["plan", "--model", "no_such_module_here.py", "--inputs", str(tmp_path / "x.npy")])
    assert result.exit_code == 2 and "neither an existing file" in result.output


@pytest.mark.slow
def test_signature_names_the_function_of_a_savedmodel(x, tmp_path) -> None:
    module = Recurrence()
    doubled = tf.function(lambda inputs: 2.0 * module(inputs), input_signature=module.__call__.input_signature)
    signatures = {"serving_default": module.__call__.get_concrete_function(), "doubled": doubled.get_concrete_function()}
    tf.saved_model.save(module, str(tmp_path / "two"), signatures=signatures)
    store = jacengine.compute(str(tmp_path / "two"), x, tmp_path / "j.zarr", signature="doubled", progress=False,
                              budget="256MiB", trust_model=True)
    assert_matches(store, 2.0 * reference(module, x))
    with pytest.raises(ModelError, match="no signature or function 'tripled'"):
        jacengine.plan(str(tmp_path / "two"), x, signature="tripled", trust_model=True)


def test_model_id_stands_for_the_model_and_misplaced_settings_are_refused(legacy_files, x, tmp_path) -> None:
    module, path = Recurrence(), tmp_path / "j.zarr"
    jacengine.compute(module, x, path, progress=False, budget="256MiB", model_id="v1")
    module.a.assign(module.a + 1.0)
    jacengine.compute(module, x, path, progress=False, budget="256MiB", model_id="v1")  # the user's word: resumed
    with pytest.raises(StoreMismatchError, match="model"):
        jacengine.compute(module, x, path, progress=False, budget="256MiB", model_id="v2")
    with pytest.raises(ModelError, match="signature"):
        jacengine.plan(legacy_files["model"], x, signature="serve")
    with pytest.raises(ModelError, match="model_id"):
        jacengine.plan(legacy_files["model"], x, model_id="v1")


@pytest.mark.slow
def test_an_import_path_hashes_alike_in_another_process(model_module, x, tmp_path) -> None:
    """A shard process loads the model from its import path and must find the fingerprint that
    `init` recorded from the traced graph here (TensorFlow's generated names left out)."""
    import os
    import subprocess
    import sys

    np.save(tmp_path / "x.npy", x)
    jacengine.init(model_module, str(tmp_path / "x.npy"), tmp_path / "j.zarr", budget="256MiB")
    shard = subprocess.run([sys.executable, "-m", "jacengine", "compute", "--model", model_module, "--inputs",
                            str(tmp_path / "x.npy"), "--out", str(tmp_path / "j.zarr"), "--shard", "0/1", "--no-progress"],
                           cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(tmp_path)), capture_output=True, text=True,
                           timeout=300)
    assert shard.returncode == 0, shard.stderr
    assert_matches(jacengine.open_store(tmp_path / "j.zarr"), reference(Recurrence(), x))


class FileWriter(tf.Module):
    """A SavedModel's graph may write files: this one writes ``marker`` whenever it is called."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker

    @tf.function(input_signature=[tf.TensorSpec((None, None, F_IN), tf.float32)])
    def __call__(self, inputs: tf.Tensor) -> tf.Tensor:
        tf.io.write_file(self.marker, "ran")
        return 2.0 * inputs


def test_a_savedmodel_runs_nothing_without_trust(x, tmp_path) -> None:
    marker = tmp_path / "MARK"
    tf.saved_model.save(FileWriter(str(marker)), str(tmp_path / "writer"))
    for run in (lambda: jacengine.plan(str(tmp_path / "writer"), x),
                lambda: jacengine.compute(str(tmp_path / "writer"), x, tmp_path / "j.zarr", progress=False)):
        with pytest.raises(ModelError, match="SavedModel.*trust_model=True"):
            run()
    assert not marker.exists() and not (tmp_path / "j.zarr").exists()
    jacengine.plan(str(tmp_path / "writer"), x, trust_model=True)
    assert marker.exists()  # trusted, it runs: the refusal above was what kept it from running


@pytest.fixture()
def hostile_module(tmp_path, monkeypatch):
    """A module that writes a marker file when imported, importable from sys.path."""
    folder = tmp_path / "modules"
    folder.mkdir()
    marker = tmp_path / "MARK"
    (folder / "evilmod.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\nmodel = None\n")
    monkeypatch.syspath_prepend(str(folder))
    return marker


def test_a_store_named_import_path_runs_only_with_trust(hostile_module, x, tmp_path) -> None:
    path = tmp_path / "j.zarr"
    jacengine.compute(Recurrence(), x, path, progress=False, budget="256MiB")
    np.save(tmp_path / "x.npy", x)
    store = jacengine.open_store(path, mode="r+")
    store._group.attrs["jacengine"] = dict(store.attrs, sources={"model": "evilmod:model", "inputs": str(tmp_path / "x.npy")})
    report = jacengine.verify(path, progress=False)
    assert not hostile_module.exists()
    assert report.ok and report.rows_checked == 0 and any("trust_model=True" in note for note in report.notes)
    with pytest.raises(ModelError):  # trusted, the store's model is imported (and is no model)
        jacengine.verify(path, progress=False, trust_model=True)
    assert hostile_module.exists()


def test_a_module_in_the_current_directory_is_not_imported_silently(x, tmp_path, monkeypatch) -> None:
    (tmp_path / "herebymod.py").write_text(f"import pathlib\npathlib.Path({str(tmp_path / 'MARK')!r}).write_text('ran')\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError, match="PYTHONPATH=."):
        jacengine.plan("herebymod:model", x)
    assert not (tmp_path / "MARK").exists()
