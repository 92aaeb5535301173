"""Small questions without a store: compute(store=None) and jacengine.jacobian, checked against
TensorFlow's batch_jacobian (float32: 1e-5 of max |J|) and against the stored result."""

from __future__ import annotations

import gc

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from helpers import reference_jacobian  # noqa: E402

import jacengine  # noqa: E402
from jacengine.errors import BudgetError, InputError  # noqa: E402

B, T = 4, 16


@pytest.fixture(scope="module")
def seed() -> tuple[object, np.ndarray, np.ndarray]:
    from jacengine.tf.zoo import seed_model

    model = seed_model(units=6, features_in=2, features_out=2)
    x = np.random.default_rng(0).normal(size=(B, T, 2)).astype("float32")
    return model, x, reference_jacobian(model, x)


def close(actual: np.ndarray, expected: np.ndarray) -> bool:
    return actual.shape == expected.shape and np.max(np.abs(actual - expected)) <= 1e-5 * np.max(np.abs(expected))


def test_jacobian_of_one_output_step_drops_its_axis(seed) -> None:
    model, x, reference = seed
    gradient = jacengine.jacobian(model, x, t_out=10, budget="256MiB")
    assert close(gradient, reference[:, 10])  # (B, F_out, T, F_in): the seed user's question
    assert np.all(gradient[:, :, 11:] == 0)  # causal: later input steps do not reach step 10
    assert close(jacengine.jacobian(model, x, t_out=[3, 10], f_in=1, budget="256MiB"), reference[:, [3, 10]][..., 1])


def test_in_memory_store_equals_stored_result_and_is_removed(seed, tmp_path) -> None:
    model, x, reference = seed
    in_memory = jacengine.compute(model, x, None, progress=False, budget="256MiB")
    on_disk = jacengine.compute(model, x, tmp_path / "j.zarr", progress=False, budget="256MiB")
    assert close(in_memory.to_numpy(), reference)
    summary = in_memory.last_run
    assert summary.blocks == len(in_memory.plan.blocks) and 0 <= summary.computed <= summary.blocks
    assert summary.peak_bytes is not None and summary.peak_bytes <= summary.budget_bytes
    assert np.array_equal(in_memory.to_numpy(), on_disk.to_numpy())
    scratch = in_memory.path.parent
    assert scratch.exists()
    del in_memory
    gc.collect()
    assert not scratch.exists()


def test_result_over_the_budget_is_refused_with_the_store_as_the_way_out(seed) -> None:
    model, _, _ = seed
    x = np.zeros((64, 2048, 2), dtype="float32")  # J: 64 * 2048 * 2 * 2048 * 2 * 4 bytes = 4 GiB
    with pytest.raises(BudgetError, match="store on disk"):
        jacengine.jacobian(model, x, budget="1GiB")


def test_in_memory_refuses_options_that_need_a_store(seed) -> None:
    model, x, _ = seed
    with pytest.raises(InputError, match="store path"):
        jacengine.compute(model, x, None, executor="dask")
