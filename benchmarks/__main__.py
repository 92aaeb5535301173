"""Command line: ``python -m benchmarks run --suite NAME``, ``report`` and ``readme``."""

from __future__ import annotations

import datetime
import shlex
import sys
import threading
from pathlib import Path

import click
import psutil

from benchmarks import report
from benchmarks.cases import SUITES, suite_cases
from benchmarks.runner import check_agreement, machine, run_cases
from jacengine.planning.budget import parse_budget

RESULTS = Path(__file__).resolve().parent / "results"
PERFORMANCE_PAGE = Path(__file__).resolve().parent.parent / "docs" / "performance.md"


def _default_memory_cap() -> str:
    total = psutil.virtual_memory().total
    return f"{int(total * 0.75) // 2**20}MiB"


@click.group()
def main() -> None:
    """jacengine's benchmarks: every case in a fresh process, baselines in the same run."""


@main.command()
@click.option("--suite", "suites", multiple=True, required=True, type=click.Choice([*SUITES, "all"]),
              help="Suite to run (repeatable); 'all' runs every suite.")
@click.option("--quick", is_flag=True, help="Tiny sizes and few methods: a smoke run of the whole harness.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Results folder [default: benchmarks/results, or a 'quick' subfolder with --quick].")
@click.option("--memory-cap", default=_default_memory_cap, show_default="75% of RAM",
              help="A case whose resident memory passes this is killed and recorded as out of memory.")
@click.option("--time-limit", type=float, default=600.0, show_default=True, help="Seconds per case before it is killed.")
@click.option("--jobs", type=int, default=1, show_default=True, help="Cases run at once (above 1 the timings interfere).")
@click.option("--gpu-memory-limit", default=None, help="Cap TensorFlow's GPU memory in every case (e.g. 8GiB).")
@click.option("--only", "only", multiple=True,
              help="Run only the cases whose label contains this text (repeatable: any of them), e.g. '8x1000x8'; "
                   "use with --out, since the results replace the suite's files there.")
def run(suites: tuple[str, ...], quick: bool, out: Path | None, memory_cap: str, time_limit: float, jobs: int,
        gpu_memory_limit: str | None, only: tuple[str, ...]) -> None:
    """Run suites; write <suite>.json, <suite>.md (and plots) to the results folder."""
    out = out or (RESULTS / "quick" if quick else RESULTS)
    names = SUITES if "all" in suites else tuple(dict.fromkeys(suites))
    description = machine()
    for name in names:
        command = shlex.join(["python", "-m", "benchmarks", "run", "--suite", name, *(["--quick"] if quick else []),
                              *(f"--only={text}" for text in only)])
        result = {"suite": name, "quick": quick, "command": command, "machine": description, "memory_cap": memory_cap,
                  "time_limit": time_limit}
        cases = [case for case in suite_cases(name, quick) if not only or any(text in case.label for text in only)]
        records = _run_suite(result, cases, out, parse_budget(memory_cap), time_limit, jobs, gpu_memory_limit)
        click.echo(report.markdown_table(records))


def _run_suite(result: dict, cases: list, out: Path, memory_cap: int, time_limit: float, jobs: int,
               gpu_memory_limit: str | None) -> list[dict]:
    """Run one suite's cases, saving the results after every case (an interrupted run keeps
    what finished, marked ``complete: false``) and once more, complete, at the end."""
    click.echo(f"# {result['suite']}: {len(cases)} cases", err=True)
    result.update(started=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), complete=False, records=[])
    saving = threading.Lock()  # cases finish on several threads with --jobs

    def keep(record: dict) -> None:
        with saving:
            _echo(record)
            result["records"] = check_agreement([*result["records"], record])
            report.write_outputs(result, out)

    result["records"] = run_cases(cases, memory_cap, time_limit, jobs, gpu_memory_limit, on_record=keep)
    result["complete"] = True
    for path in report.write_outputs(result, out):
        click.echo(f"wrote {path}", err=True)
    return result["records"]


def _echo(record: dict) -> None:
    seconds = report.best_seconds(record)
    ok = record["status"] == "ok"
    timing = f"{seconds:.2f} s, peak {record['peak_rss_bytes'] / 2**20:.0f} MiB" if ok else record.get("error", "")
    click.echo(f"  {record['label']}: {record['status']} {timing}", err=True)


@main.command("report")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path), default=RESULTS)
def report_command(directory: Path) -> None:
    """Rewrite the Markdown tables and plots of the results in DIRECTORY."""
    for result in report.load_results(directory).values():
        report.write_outputs(result, directory)
        click.echo(report.markdown_table(result["records"]))


@main.command()
@click.option("--results", type=click.Path(exists=True, file_okay=False, path_type=Path), default=RESULTS)
def readme(results: Path) -> None:
    """Regenerate the generated section of docs/performance.md from the committed results."""
    if not report.update_readme(PERFORMANCE_PAGE, results):
        sys.exit(f"{PERFORMANCE_PAGE} has no {report.README_START} ... {report.README_END} markers")
    click.echo(f"updated {PERFORMANCE_PAGE}", err=True)


if __name__ == "__main__":
    main()
