"""The benchmark harness runs end to end (``--quick``: every suite at tiny sizes) so it never rots.

Checks the records, not the timings: every case finishes (or is skipped for a stated reason, such
as JAX not being installed), methods of the same problem agree within 1e-4 of the largest sampled
|J|, and the Markdown, plots and README section are produced from the results.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import report
from benchmarks.cases import SUITES, suite_cases
from benchmarks.runner import causal_flops, check_agreement, run_case

ROOT = Path(__file__).resolve().parent.parent




def run_quick(suites: tuple[str, ...], out: Path) -> Path:
    selection = [argument for suite in suites for argument in ("--suite", suite)]
    subprocess.run([sys.executable, "-m", "benchmarks", "run", *selection, "--quick", "--jobs", "2", "--out", str(out)],
                   cwd=ROOT, check=True, capture_output=True, text=True)
    return out


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory) -> Path:
    """Every suite at tiny sizes, run once per session (minutes of subprocesses: slow tests only)."""
    return run_quick(SUITES, tmp_path_factory.mktemp("bench"))


def check_quick_results(directory: Path, suites: tuple[str, ...]) -> dict:
    results = report.load_results(directory)
    assert set(results) == set(suites)
    for suite, result in results.items():
        assert len(result["records"]) == len(suite_cases(suite, quick=True))
        for record in result["records"]:
            assert record["status"] in ("ok", "skipped"), record  # no case refused, failed or ran out
            if record["status"] == "skipped":  # JAX not installed, forward mode on a Keras RNN, a chain method on a CNN
                assert (record["method"] == "jax" or (record["engine_method"] == "forward" and record["model"] == "lstm")
                        or (record["engine_method"] == "recurrent" and record["model"] == "causal-conv1d")), record
            elif "reference" in record:
                assert record["max_abs_diff"] <= 1e-4, record
        assert result["machine"]["cores"] >= 1 and result["machine"]["versions"]["tensorflow"] and result["complete"]
    return results


@pytest.mark.slow
def test_quick_run_covers_every_runner_and_methods_agree(quick_results: Path) -> None:
    results = check_quick_results(quick_results, SUITES)
    seed_methods = {r["method"]: r for r in results["seed"]["records"]}
    assert seed_methods["jacengine"]["reference"] == "tf-eager"
    assert (quick_results / "scaling-T.png").stat().st_size > 0
    seed_table, _, profile = (quick_results / "seed.md").read_text().partition("\n\n")
    assert seed_table.count("\n") == len(suite_cases("seed", quick=True)) + 1
    assert "first call spent its time" in profile and "block compute |" in profile and "| idle |" in profile


@pytest.mark.slow
def test_readme_section_is_generated_between_markers(quick_results: Path, tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\n{report.README_START}\nold\n{report.README_END}\n\ntail\n")
    assert report.update_readme(readme, quick_results)
    text = readme.read_text()
    assert "old" not in text and text.endswith("tail\n") and "| seed | lstm | 2x20x1 | jacengine |" in text
    assert "python -m benchmarks run --suite scaling-T --quick" in text


def test_watchdog_records_out_of_memory_and_timeout_without_raising() -> None:
    from benchmarks.cases import Case

    case = Case("seed", "tf-pfor", "lstm", 2, 10)
    assert run_case(case, memory_cap=1, time_limit=60)["status"] == "oom"
    assert run_case(case, memory_cap=2**40, time_limit=0.5)["status"] == "timeout"


def test_agreement_flags_the_reference_and_relative_difference() -> None:
    base = {"suite": "seed", "model": "lstm", "batch": 1, "steps": 2, "features_in": 1, "features_out": 1,
            "budget": "1GiB", "units": 4, "repeats": 0, "status": "ok"}
    records = [{**base, "method": "jacengine", "sample": [1.0, 2.1]}, {**base, "method": "tf-pfor", "sample": [1.0, 2.0]},
               {**base, "method": "tf-while", "status": "oom"}]
    checked = check_agreement(json.loads(json.dumps(records)))
    assert checked[0]["reference"] == "tf-pfor" and checked[0]["max_abs_diff"] == pytest.approx(0.05)
    assert "reference" not in checked[1] and "max_abs_diff" not in checked[2]


def test_causal_flop_count_matches_hand_count() -> None:
    # B=1, T=2, Fo=1: rows need 1 + 2 steps; an LSTM step with units 4, F_in 1 costs 2 * 4 * 4 * 5 flops
    record = {"model": "lstm", "batch": 1, "steps": 2, "units": 4, "features_in": 1, "features_out": 1}
    assert causal_flops(record) == 3 * 160
    assert causal_flops({**record, "model": "causal-conv1d"}) is None
