"""The scripts in examples/ run as a user runs them (``python examples/NAME.py``), at small sizes:
each checks its own result (against ``batch_jacobian``, the budget, the rendered job script)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

pytest.importorskip("keras")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SMALL = {
    "seed_question.py": ["--batch", "4", "--steps", "30"],
    "long_sequence.py": ["--batch", "2", "--steps", "300", "--budget", "128MiB"],
    "slurm_job_array.py": ["--shards", "3"],
}


def test_every_example_is_run_here() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(SMALL)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_example_runs(name: str, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [name, *SMALL[name]])
    runpy.run_path(str(EXAMPLES / name), run_name="__main__")  # each example asserts its own result
    assert capsys.readouterr().out.strip()
