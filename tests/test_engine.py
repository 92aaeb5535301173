"""End-to-end behaviour of compute(): the seed problem, selections, skipped chunks, tracing,
resume and fingerprints, bad input. One small model per module (TensorFlow is slow to start)."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from helpers import compute_with_blocks, reference_jacobian, store_hash  # noqa: E402

import jacengine  # noqa: E402
from jacengine.errors import BudgetError, InputError, ModelError, StoreError, StoreMismatchError  # noqa: E402
from jacengine.storage.chunkfiles import TEMPORARY_SUFFIX  # noqa: E402


@pytest.fixture(scope="module")
def model():
    from jacengine.tf.zoo import seed_model

    return seed_model(units=6, features_in=2, features_out=2, seed=5)


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(6).normal(size=(4, 16, 2)).astype("float32")


@pytest.fixture(scope="module")
def full(model, x):
    return reference_jacobian(model, x)


def test_seed_problem_equals_batch_jacobian(tmp_path) -> None:
    """The seed model (LSTM(32) + TimeDistributed(Dense(1))) at (10, 100, 1), two block sizes."""
    from jacengine.tf.zoo import seed_model

    seed = seed_model()
    x = np.random.default_rng(0).normal(size=(10, 100, 1)).astype("float32")
    expected = reference_jacobian(seed, x)
    default = jacengine.compute(seed, x, tmp_path / "default.zarr", progress=False)
    blocked = compute_with_blocks(seed, x, tmp_path / "blocked.zarr", chunks_per_block=2, t_chunk=10, batch_chunk=5)
    assert len(blocked.plan.blocks) > len(default.plan.blocks) or len(default.plan.blocks) > 1
    for store in (default, blocked):
        assert store.attrs["causal"] is True
        np.testing.assert_allclose(store.to_numpy(), expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_selections_equal_slices_of_the_full_jacobian(model, x, full, tmp_path) -> None:
    store = jacengine.compute(model, x, tmp_path / "s.zarr", t_out=[3, 7, 15], f_out=1, f_in=[0], progress=False)
    assert store.shape == (4, 3, 1, 16, 1)
    expected = full[:, [3, 7, 15]][:, :, [1]][..., [0]]
    np.testing.assert_allclose(store.to_numpy(), expected, rtol=0, atol=1e-5 * np.abs(full).max())
    np.testing.assert_array_equal(store.coordinate("t_out"), [3, 7, 15])
    np.testing.assert_array_equal(store.coordinate("f_out"), [1])


def test_causal_store_has_no_upper_triangle_chunks_and_few_traces(model, x, full, tmp_path) -> None:
    store = compute_with_blocks(model, x, tmp_path / "c.zarr", chunks_per_block=1, t_chunk=2, batch_chunk=2)
    plan = store.plan
    assert len(plan.blocks) == 16
    written = {tuple(int(i) for i in p.relative_to(tmp_path / "c.zarr/jacobian/c").parts)
               for p in (tmp_path / "c.zarr/jacobian/c").rglob("*") if p.is_file()}
    assert written, "no chunk files at all"
    for b, t_out_chunk, _, t_in_chunk, _ in written:
        assert t_in_chunk <= t_out_chunk, f"upper-triangle chunk {(b, t_out_chunk, t_in_chunk)} written"
    np.testing.assert_allclose(store.to_numpy(), full, rtol=0, atol=1e-5 * np.abs(full).max())


@pytest.mark.slow
def test_one_trace_serves_every_block_shape(model, x, tmp_path) -> None:
    """The full layout's polymorphic block function traces once, whatever the prefixes and
    block sizes, and its blocks equal TensorFlow's batch_jacobian."""
    from jacengine.options import RunOptions
    from jacengine.planning.blocks import make_plan
    from jacengine.preparation import prepare

    prepared = prepare(model, x, RunOptions(), calibrate=False)
    plan = make_plan(prepared.spec, batch_chunk=1, t_out_chunk=1, t_in_chunk=1, chunks_per_block=lambda w: 1 + w % 3,
                     prefixes="exact")
    assert len(plan.shape_keys) > 4
    full = reference_jacobian(model, x)
    for block in plan.blocks:
        values = prepared.computation.computer.compute(block, x[block.batch_start : block.batch_stop, : block.forward_steps])
        expected = full[block.batch_start : block.batch_stop, block.row_start : block.row_stop, :, : block.in_stop]
        np.testing.assert_allclose(values, expected, rtol=0, atol=1e-5 * np.abs(full).max())
    assert prepared.computation.computer.polymorphic and prepared.computation.computer.trace_count == 1


@pytest.mark.slow
def test_a_model_wrong_with_open_shapes_falls_back_to_static_shapes(x) -> None:
    """TimeDistributed(Dense) maps over the wrong axis when the time axis is open (docs/design.md,
    "Known traps"): without jacengine's rewrite the eager check catches it, and the computer
    falls back to one static-shape function per block shape, with correct results."""
    import dataclasses

    from jacengine.options import RunOptions
    from jacengine.preparation import prepare
    from jacengine.tf.block_computer import BlockComputer
    from jacengine.tf.zoo import seed_model

    wrapped = seed_model(units=4, features_in=x.shape[2], features_out=2)
    prepared = prepare(wrapped, x, RunOptions(), calibrate=False)
    computer = BlockComputer(wrapped, prepared.spec)  # the model as given: TimeDistributed kept
    block = dataclasses.replace(prepared.plan.blocks[-1])
    values = computer.compute(block, x[block.batch_start : block.batch_stop, : block.forward_steps])
    full = reference_jacobian(wrapped, x)
    expected = full[block.batch_start : block.batch_stop, block.row_start : block.row_stop, :, : block.in_stop]
    assert not computer.polymorphic
    np.testing.assert_allclose(values, expected, rtol=0, atol=1e-5 * np.abs(full).max())


def test_resume_computes_only_missing_blocks_bit_identically(model, x, tmp_path) -> None:
    path = tmp_path / "r.zarr"
    store = jacengine.compute(model, x, path, budget="2GiB", progress=False)
    reference = store_hash(path)
    forgotten = [b.index for b in store.plan.blocks][-1:]
    store.forget_blocks(forgotten)
    (path / "jacobian" / "c" / f".junk{TEMPORARY_SUFFIX}").write_bytes(b"half a chunk")
    assert not jacengine.open_store(path).is_complete
    resumed = jacengine.compute(model, x, path, budget="2GiB", progress=False)
    assert resumed.is_complete
    assert not list(path.rglob(f"*{TEMPORARY_SUFFIX}"))
    assert store_hash(path) == reference


def test_resume_with_other_inputs_or_settings_is_refused(model, x, tmp_path) -> None:
    path = tmp_path / "f.zarr"
    jacengine.compute(model, x, path, progress=False)
    before = store_hash(path)
    with pytest.raises(StoreMismatchError, match="inputs"):
        jacengine.compute(model, x + 1, path, progress=False)
    with pytest.raises(StoreMismatchError, match="spec"):
        jacengine.compute(model, x, path, t_out=3, progress=False)
    other = keras.models.clone_model(model)
    with pytest.raises(StoreMismatchError, match="model"):
        jacengine.compute(other, x, path, progress=False)
    assert store_hash(path) == before
    jacengine.compute(model, x + 1, path, overwrite=True, progress=False)


def test_foreign_directories_are_never_touched(model, x, tmp_path) -> None:
    foreign = tmp_path / "data"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("precious")
    with pytest.raises(StoreError, match="not a jacengine store"):
        jacengine.compute(model, x, foreign, overwrite=True, progress=False)
    assert (foreign / "keep.txt").read_text() == "precious"


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (lambda x: np.where(np.arange(x.size).reshape(x.shape) == 37, np.nan, x), r"non-finite.*\[1, 2, 1\]"),
        (lambda x: x.astype("int32"), "floating-point"),
        (lambda x: x[0], "rank 3"),
        (lambda x: x[..., :1], "input features"),
    ],
)
def test_bad_inputs_are_refused_before_anything_is_written(model, x, tmp_path, bad, message) -> None:
    with pytest.raises(InputError, match=message):
        jacengine.compute(model, bad(x), tmp_path / "bad.zarr", progress=False)
    assert not (tmp_path / "bad.zarr").exists()


@pytest.mark.slow
def test_stateful_rnn_and_tiny_budget_are_refused(x, model, tmp_path) -> None:
    stateful = keras.Sequential([keras.Input((16, 2), batch_size=4), keras.layers.LSTM(3, stateful=True, return_sequences=True)])
    with pytest.raises(ModelError, match="stateful"):
        jacengine.compute(stateful, x, tmp_path / "s.zarr", progress=False)
    with pytest.raises(BudgetError, match=r"below the minimum .* Raise budget \(--budget\) to at least [\d.]+ MiB"):
        jacengine.compute(model, x, tmp_path / "b.zarr", budget="1MiB", progress=False)
    assert not (tmp_path / "s.zarr").exists() and not (tmp_path / "b.zarr").exists()


def test_store_opens_in_xarray_with_labels(model, x, tmp_path) -> None:
    xr = pytest.importorskip("xarray")
    jacengine.compute(model, x, tmp_path / "x.zarr", t_out=slice(2, 10, 4), progress=False)
    dataset = xr.open_zarr(tmp_path / "x.zarr", consolidated=False)
    jacobian = dataset["jacobian"]
    assert jacobian.dims == ("batch", "t_out", "f_out", "t_in", "f_in")
    np.testing.assert_array_equal(jacobian["t_out"].values, [2, 6])
    np.testing.assert_array_equal(jacobian["t_in"].values, np.arange(16))


def test_time_distributed_dense_is_rewritten_and_equivalent() -> None:
    from jacengine.tf.rewrite import without_time_distributed_dense
    from jacengine.tf.zoo import seed_model

    x = np.random.default_rng(1).normal(size=(2, 9, 1)).astype("float32")
    inputs = keras.Input((None, 1))
    hidden = keras.layers.GRU(3, return_sequences=True)(inputs)
    functional = keras.Model(inputs, keras.layers.TimeDistributed(keras.layers.Dense(2))(hidden))
    for model in (seed_model(units=4), functional):
        rewritten = without_time_distributed_dense(model, x)
        kinds = [type(layer).__name__ for layer in rewritten.layers]
        assert "TimeDistributed" not in kinds and "Dense" in kinds
        np.testing.assert_allclose(np.asarray(rewritten(x)), np.asarray(model(x)), rtol=0, atol=1e-6)


def test_compiled_forward_that_disagrees_with_eager_is_refused(model, x) -> None:
    import tensorflow as tf

    from jacengine.options import RunOptions
    from jacengine.preparation import prepare

    computer = prepare(model, x, RunOptions(), calibrate=False).computation.computer
    rows = tf.constant([0, 1], dtype=tf.int32)
    eager = tf.gather(tf.gather(model(x), rows, axis=1), [0, 1], axis=2)
    assert computer._agrees_with_eager(tf.constant(x), rows, eager)
    assert not computer._agrees_with_eager(tf.constant(x), rows, eager + 1e-3)
    assert not computer._agrees_with_eager(tf.constant(x), rows, eager[:1])  # a wrong batch size


def test_model_hash_survives_save_and_load(tmp_path) -> None:
    """Dask workers load the model from a file: it must hash like the in-memory model it came from."""
    from jacengine.tf.model import model_hash
    from jacengine.tf.zoo import seed_model

    model = seed_model(units=4)
    model.save(tmp_path / "m.keras")
    assert model_hash(keras.saving.load_model(tmp_path / "m.keras")) == model_hash(model)
