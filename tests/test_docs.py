"""Every Python example in README.md and docs/*.md runs, on a tiny seed model, and gives what
its comments say.

The blocks of one page run in order in one namespace (a page's later examples use what its
earlier ones made), in a fresh directory, with ``model`` (LSTM(4), then a per-step Dense) and
``x`` of shape (2, 100, 1) defined as the pages assume. :data:`DOCUMENTED` then checks the
shapes, types and values the examples' comments promise, against TensorFlow's own gradients.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("keras")

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", page.read_text(), flags=re.S | re.M)


# the guide's examples run many computations: slow; the README's run by default
EXAMPLE_PAGES = [pytest.param(p, marks=[pytest.mark.slow] if p.name == "guide.md" else [], id=p.name)
                 for p in PAGES if python_blocks(p)]


@pytest.mark.parametrize("page", EXAMPLE_PAGES)
def test_python_examples_run(page: Path, tmp_path, monkeypatch) -> None:
    from jacengine.tf.zoo import seed_model

    monkeypatch.chdir(tmp_path)
    namespace = {"model": seed_model(units=4), "x": np.random.default_rng(0).normal(size=(2, 100, 1)).astype("float32")}
    for number, block in enumerate(python_blocks(page), start=1):
        exec(compile(block, f"{page.name}, Python block {number}", "exec"), namespace)
    DOCUMENTED[page.name](namespace)


def reference(model, x: np.ndarray) -> np.ndarray:
    """TensorFlow's batch_jacobian of the whole J: (B, T, F_out, T, F_in)."""
    import tensorflow as tf

    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = model(x)
    return tape.batch_jacobian(y, x).numpy()


def check_readme(ns: dict) -> None:
    J = reference(ns["model"], ns["x"])
    assert ns["grads"].shape == (2, 1, 100, 1)  # numpy (B, F_out, T, F_in)
    np.testing.assert_allclose(ns["grads"], J[:, 10], atol=1e-6)
    np.testing.assert_allclose(ns["first_ten"], J[:, 10, 0, :10, 0].sum(axis=1), atol=1e-6)
    assert ns["store"].is_complete and ns["J"].dims == ("batch", "t_out", "f_out", "t_in", "f_in")
    np.testing.assert_allclose(ns["J"].values, J, atol=1e-6)
    assert "mean_abs" in ns["lags"] and (ns["store"].path / "reductions" / "lag-profile").is_dir()  # also stored


def check_guide(ns: dict) -> None:
    J = reference(ns["model"], ns["x"])
    store = ns["store"]
    assert store.shape == (2, 100, 1, 100, 1) and store.dims == ("batch", "t_out", "f_out", "t_in", "f_in")
    assert ns["J"].chunksize == store.array.chunks  # one dask chunk per zarr chunk
    np.testing.assert_allclose(ns["first_ten"].values, J[:, :, :, :10, 0].sum(axis=3), atol=1e-5)
    assert ns["drivers"].dims == ("batch", "t_in", "f_in")
    np.testing.assert_allclose(ns["drivers"].values, J[:, 90:100].sum(axis=(1, 2)), atol=1e-5)
    assert ns["lags"].shape == (2, 100, 1, 20, 1)  # (B, To, Fo, 20, Fi)
    assert ns["recent"].dims == ("t_out", "f_out", "lag", "f_in") and ns["recent"].sizes["lag"] == 5
    assert ns["profile"]["mean_abs"].dims[0] == "lag" and Path("summary.svg").stat().st_size > 0


DOCUMENTED = {"README.md": check_readme, "guide.md": check_guide}


def test_every_page_is_linked_from_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    for page in PAGES[1:]:
        assert f"docs/{page.name}" in readme, page.name
    for target in re.findall(r"\]\(((?:docs/)?[\w./-]+\.(?:md|png))", readme):
        assert (ROOT / target).exists(), target
