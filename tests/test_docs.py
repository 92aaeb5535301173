"""Every Python example in README.md and docs/*.md runs, on a tiny seed model.

The blocks of one page run in order in one namespace (a page's later examples use what its
earlier ones made), in a fresh directory, with ``model`` (LSTM(4), then a per-step Dense) and
``x`` of shape (2, 100, 1) defined as the pages assume.
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


def test_every_page_is_linked_from_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    for page in PAGES[1:]:
        assert f"docs/{page.name}" in readme, page.name
    for target in re.findall(r"\]\(((?:docs/)?[\w./-]+\.(?:md|png))", readme):
        assert (ROOT / target).exists(), target
