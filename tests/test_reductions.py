"""Every reduction equals numpy on the materialised J (full layout, with selections); an
incomplete store is refused unless partial; results open in xarray with labels."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from helpers import compute_with_blocks  # noqa: E402

from jacengine.analysis.reductions import custom, reduce, reduce_many, write_reductions  # noqa: E402
from jacengine.errors import StoreError  # noqa: E402

B, T = 5, 14


@pytest.fixture(scope="module", params=["causal", "noncausal_selected"])
def store(request, tmp_path_factory):
    keras.utils.set_random_seed(21)
    path = tmp_path_factory.mktemp("r") / "j.zarr"
    x = np.random.default_rng(22).normal(size=(B, T, 3)).astype("float32")
    if request.param == "causal":
        model = keras.Sequential([keras.Input((None, 3)), keras.layers.GRU(5, return_sequences=True), keras.layers.Dense(2)])
        return compute_with_blocks(model, x, path, chunks_per_block=1, t_chunk=3, batch_chunk=2)
    model = keras.Sequential([keras.Input((None, 3)), keras.layers.Conv1D(4, 5, padding="same"), keras.layers.Dense(2)])
    return compute_with_blocks(model, x, path, chunks_per_block=2, t_chunk=2, batch_chunk=3,
                               t_out=[1, 4, 5, 9, 13], f_out=[1], f_in=[0, 2])


def close(actual, expected) -> None:
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())


def test_saliency_feature_importance_window_sum(store) -> None:
    J = store.to_numpy().astype("float64")
    close(reduce(store, "saliency")["mean_abs"], np.abs(J).mean(axis=0))
    close(reduce(store, "saliency")["mean"], J.mean(axis=0))
    close(reduce(store, "feature-importance")["sum_abs"], np.abs(J).sum(axis=3).mean(axis=0))
    close(reduce(store, "window-sum", start=0, stop=10)["sum"], J[:, :, :, :10].sum(axis=3))


def test_lag_profile(store) -> None:
    J = store.to_numpy().astype("float64")
    mean_abs = np.abs(J).mean(axis=0)
    t_out, t_in = store.coordinate("t_out"), store.coordinate("t_in")
    result = reduce(store, "lag-profile", fraction=0.9)
    lags = result["lag"].values
    for j, lag in enumerate(lags):
        entries = [mean_abs[i, :, step - lag, :] for i, step in enumerate(t_out) if 0 <= step - lag < t_in.size]
        expected = np.mean(entries, axis=0) if entries else np.zeros(mean_abs[0, :, 0, :].shape)
        close(result["mean_abs"][j], expected)
    past = result["total_abs"].values[lags >= 0]
    share = np.cumsum(past, axis=0) / past.sum(axis=0)
    quantile = result["quantile_lag"].values
    for fo in range(quantile.shape[0]):
        for fi in range(quantile.shape[1]):
            q = quantile[fo, fi]
            assert share[q, fo, fi] >= 0.9 - 1e-9 and (q == 0 or share[q - 1, fo, fi] < 0.9)
    if store.attrs["causal"]:
        assert lags.min() == 0


def test_top_k_std_quantiles(store) -> None:
    J = store.to_numpy().astype("float64")
    mean_abs = np.abs(J).mean(axis=0)
    result = reduce(store, "top-k", k=3)
    fi = mean_abs.shape[3]
    for i in range(mean_abs.shape[0]):
        for fo in range(mean_abs.shape[1]):
            flat = mean_abs[i, fo].reshape(-1)
            best = np.sort(flat)[::-1][:3]
            close(result["mean_abs"][i, fo], best)
            positions = np.searchsorted(store.coordinate("t_in"), result["t_in"][i, fo]) * fi + np.searchsorted(
                store.coordinate("f_in"), result["f_in"][i, fo])
            close(flat[positions], best)
    close(reduce(store, "std")["std"], J.std(axis=0))
    close(reduce(store, "quantiles")["quantile_values"], np.quantile(J, [0.1, 0.5, 0.9], axis=0))


def test_custom_reduction_and_xarray(store) -> None:
    import warnings

    import xarray as xr

    J = store.to_numpy()
    result = custom(store, "max-abs-per-sample", lambda j: abs(j).max(axis=(1, 2, 3, 4)), ("batch",))
    write_reductions(store, [result])
    close(result["values"], np.abs(J).max(axis=(1, 2, 3, 4)))
    reduce(store, "saliency")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # consolidated metadata: xarray opens the store without a fallback warning
        dataset = xr.open_zarr(store.path, group="reductions/saliency")
        whole = xr.open_zarr(store.path)
    assert dataset["mean_abs"].dims == ("t_out", "f_out", "t_in", "f_in")
    np.testing.assert_array_equal(dataset["t_out"].values, store.coordinate("t_out"))
    np.testing.assert_array_equal(dataset["f_in"].values, store.coordinate("f_in"))
    assert "jacobian" in whole and {"t_out", "f_out", "f_in"} <= set(whole.coords)
    labelled = store.to_xarray()  # lazy, dask-backed, with coordinates and no bookkeeping arrays
    assert labelled.chunks is not None and labelled.name == "jacobian"
    np.testing.assert_array_equal(labelled.sel(t_out=store.coordinate("t_out")[-1]).values, J[:, -1])
    np.testing.assert_array_equal(xr.open_zarr(store.path, group="reductions/max-abs-per-sample")["values"], result["values"])


def test_several_reductions_read_the_store_once_and_keep_the_rest_of_it(store, monkeypatch) -> None:
    import zarr

    J = store.to_numpy().astype("float64")
    before = {name: np.asarray(zarr.open_group(str(store.path), mode="r")[name]) for name in ("jacobian", "block_manifest")}
    reads: list[object] = []
    original = zarr.Array.__getitem__

    def counting(array, selection):
        parts = selection if isinstance(selection, tuple) else (selection,)
        empty_probe = any(isinstance(part, slice) and part.start == part.stop for part in parts)  # dask's meta
        if array.path == "jacobian" and not empty_probe:
            reads.append(selection)
        return original(array, selection)

    monkeypatch.setattr(zarr.Array, "__getitem__", counting)
    results = reduce_many(store, {"saliency": {}, "lag-profile": {}, "top-k": {"k": 2}, "feature-importance": {},
                                  "std": {}, "window-sum": {"start": 0, "stop": 3}})
    chunks = int(np.prod([len(c) for c in store.to_dask().chunks]))
    assert len(reads) == chunks  # every chunk once for six reductions (each alone would read it again)
    monkeypatch.undo()
    close(results["saliency"]["mean_abs"], np.abs(J).mean(axis=0))
    close(results["std"]["std"], J.std(axis=0))
    close(results["window-sum"]["sum"], J[:, :, :, :3].sum(axis=3))
    close(results["top-k"]["mean_abs"][..., 0], np.abs(J).mean(axis=0).max(axis=(2, 3)))
    for name, values in before.items():  # the reductions' groups were added; nothing else changed
        np.testing.assert_array_equal(np.asarray(zarr.open_group(str(store.path), mode="r")[name]), values)


def test_incomplete_store_is_refused_unless_partial(store, tmp_path) -> None:
    import shutil

    from jacengine.storage.store import JacobianStore

    copy = tmp_path / "copy.zarr"
    shutil.copytree(store.path, copy)
    incomplete = JacobianStore(copy, mode="r+")
    missing = incomplete.plan.blocks[1]
    incomplete.forget_blocks([missing.index])
    with pytest.raises(StoreError, match=rf"1 of {len(incomplete.plan.blocks)} blocks pending \({missing.index}\)"):
        reduce(incomplete, "saliency")
    for read in (incomplete.to_numpy, incomplete.to_dask, incomplete.to_xarray):
        with pytest.raises(StoreError, match="partial=True"):
            read()
    J = incomplete.to_numpy(partial=True).astype("float64")
    present = np.ones(J.shape[:2], dtype=bool)
    present[missing.batch_start : missing.batch_stop, missing.row_start : missing.row_stop] = False
    pending = np.zeros(J.shape, dtype=bool)  # the chunks of the pending block (not those a causal model skips)
    for _, local in incomplete.ledger.chunks(missing):
        at = (slice(missing.batch_start, missing.batch_stop), slice(missing.row_start, missing.row_stop))
        pending[at][local] = True
    assert pending.any() and np.isnan(J[pending]).all()  # NaN, not zeros
    assert np.array_equal(J[~pending], store.to_numpy()[~pending])
    assert np.array_equal(incomplete.to_xarray(partial=True).values, J, equal_nan=True)
    masked = np.where(present[:, :, None, None, None], np.abs(J), np.nan)
    result = reduce(incomplete, "saliency", partial=True)
    close(np.nan_to_num(result["mean_abs"]), np.nan_to_num(np.nanmean(masked, axis=0)))
    assert result.attrs["coverage"] == pytest.approx(present.mean())
    import warnings

    same_rows = [b for b in incomplete.plan.blocks if b.row_start == missing.row_start]
    incomplete.forget_blocks([b.index for b in same_rows])  # rows of no computed sample
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no division warnings where no sample was computed
        std = reduce(incomplete, "std", partial=True, write=False)["std"].values
    signed = incomplete.to_numpy(partial=True).astype("float64")  # NaN where pending
    unsampled = np.isnan(signed).all(axis=0)
    assert unsampled.any() and np.isnan(std[unsampled]).all() and not np.isnan(std[~unsampled]).any()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        close(np.nan_to_num(std), np.nan_to_num(np.nanstd(signed, axis=0)))


@pytest.mark.slow
def test_plots_place_uneven_selections_by_their_coordinates_and_draw_into_a_given_ax(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    from helpers import compute_with_blocks
    from matplotlib.figure import Figure

    from jacengine.analysis.plots import plot_saliency, summary_figure
    from jacengine.tf.zoo import seed_model

    x = np.random.default_rng(5).normal(size=(2, 12, 1)).astype("float32")
    store = compute_with_blocks(seed_model(units=3), x, tmp_path / "u.zarr", t_out=[1, 5, 11], chunks_per_block=1,
                                t_chunk=4, batch_chunk=2)
    results = reduce_many(store, ["saliency", "lag-profile"], write=False)
    figure = summary_figure(results["saliency"], results["lag-profile"])
    heat = figure.axes[0].collections[0]  # the saliency mesh: one row per selected output step
    rows = heat.get_coordinates()[:, 0, 1]  # the y edges
    assert len(rows) == 4 and rows[0] < 1 < rows[1] < 5 < rows[2] < 11 < rows[3]
    ax = Figure().subplots()
    assert plot_saliency(results["saliency"], ax=ax) is ax and ax.get_ylabel() == "output step t_out"
    figure.savefig(tmp_path / "summary.svg")
    assert (tmp_path / "summary.svg").read_text().lstrip().startswith("<?xml")


def test_a_missing_matplotlib_is_reported_before_any_work(monkeypatch) -> None:
    import sys

    from jacengine.analysis.plots import check_matplotlib
    from jacengine.errors import InputError

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    with pytest.raises(InputError, match=r"pip install 'jacengine\[plot\]'"):
        check_matplotlib()
