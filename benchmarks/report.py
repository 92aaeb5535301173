"""Results to readers: Markdown tables, the scaling plots, and the generated section of docs/performance.md."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from benchmarks.cases import SUITES
from jacengine.planning.budget import parse_budget

MIB = 2**20
README_START, README_END = "<!-- benchmarks:start -->", "<!-- benchmarks:end -->"
HEADLINE_SUITES = ("seed", "speed", "scaling-T", "budget", "methods", "scale-out", "model-kinds")


def best_seconds(record: dict[str, Any]) -> float | None:
    return record.get("steady_seconds") or record.get("first_seconds")


def _fmt(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}g}" if abs(value) < 1 else f"{value:.{digits}f}"


def _shape(r: dict[str, Any]) -> str:
    shape = f"{r['batch']}x{r['steps']}x{r['features_in']}"
    return shape if r["features_in"] == r["features_out"] else f"{shape}->{r['features_out']}"


def _jacengine_of(records: list[dict[str, Any]], record: dict[str, Any]) -> dict[str, Any] | None:
    same = [r for r in records if r["method"] == "jacengine" and r["status"] == "ok" and r["model"] == record["model"]
            and _shape(r) == _shape(record) and r["suite"] == record["suite"]]
    return same[0] if same else None


def _method_cell(record: dict[str, Any]) -> str:
    """The method, with jacengine's own method (and what ``auto`` chose) and lag window."""
    cell = record["method"]
    how = record.get("engine_method", "auto")
    chosen = record.get("chosen_method")
    if record["method"] == "jacengine" and (how != "auto" or record.get("suite") == "methods"):
        cell += f" {how}" + (f" → {chosen}" if how == "auto" and chosen else "")
    cell += " (TF imported first)" if record.get("tf_first") else ""
    cell += f" as {record['model_kind']}" if record.get("model_kind", "keras") != "keras" else ""
    cell += " causal=True" if record.get("vouch_causal") else ""
    return cell + (f", lags < {record['max_lag']}" if record.get("max_lag") else "")


def _status_cell(record: dict[str, Any]) -> str:
    """ok / oom / timeout / skipped, or "refused (minimum X)" when jacengine refused the budget."""
    error = record.get("error") or ""
    minimum = re.search(r"BudgetError.*at least ([\d.]+ \w+)|budget of .* at least ([\d.]+ \w+)", error)
    if record["status"] == "refused" or minimum:
        return f"refused (minimum {next(filter(None, minimum.groups()))})" if minimum else "refused"
    return record["status"] if record["status"] == "ok" else f"{record['status']}: {error[:60]}"


def _peak_cell(record: dict[str, Any]) -> str:
    """Peak RSS above baseline in MiB; for multi-process runs also each worker's absolute peak."""
    peak = record.get("peak_rss_bytes")
    cell = _fmt(peak / MIB if peak is not None else None, 0)
    workers = record.get("worker_peak_rss_bytes")
    return f"{cell} (workers: {', '.join(f'{w / MIB:.0f}' for w in workers)} absolute)" if workers else cell


def markdown_table(records: list[dict[str, Any]]) -> str:
    """One row per case; a baseline's time and memory also as a ratio to jacengine's on the same problem."""
    lines = [
        "| suite | model | B x T x F | method | budget | peak / budget | status | first call s | steady s | peak RSS MiB "
        "| entries/s | GFLOP/s | rel. diff | time / jacengine | peak / jacengine |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        ok = r["status"] == "ok"
        # baselines against jacengine; in the methods and model-kinds suites every variant against the
        # first (method reverse; the Keras 3 model)
        variants = r["suite"] in ("methods", "model-kinds")
        ours = _jacengine_of(records, r) if ok and (r["method"] != "jacengine" or variants) else None
        ours = None if ours is r else ours
        time_ratio = best_seconds(r) / best_seconds(ours) if ours else None
        memory_ratio = r["peak_rss_bytes"] / max(ours["peak_rss_bytes"], 1) if ours else None
        budget = r["budget"] if r["method"].startswith("jacengine") else ""
        peak = r.get("peak_rss_bytes")
        over_budget = peak / parse_budget(budget) if budget and peak and r["method"] == "jacengine" else None
        status = _status_cell(r)
        lines.append(
            f"| {r['suite']} | {r['model']} | {_shape(r)} | {_method_cell(r)} | {budget} | {_fmt(over_budget)} | {status} "
            f"| {_fmt(r.get('first_seconds'))} | {_fmt(r.get('steady_seconds'))} | {_peak_cell(r)} "
            f"| {_fmt(r.get('entries_per_second'), 3)} | {_fmt(r.get('gflops'))} | {_fmt(r.get('max_abs_diff'), 1)} "
            f"| {_fmt(time_ratio)} | {_fmt(memory_ratio)} |"
        )
    return "\n".join(lines)


def profile_table(records: list[dict[str, Any]]) -> str:
    """Where jacengine's first call spent its time, one column per case that recorded a profile
    (seconds, with the count of calls where there was more than one)."""
    profiled = [r for r in records if r.get("profile")]
    if not profiled:
        return ""
    phases = list(dict.fromkeys(row["phase"] for r in profiled for row in r["profile"]))
    header = "| phase | " + " | ".join(f"{_shape(r)} @ {r['budget']}" for r in profiled) + " |"
    lines = [header, "|---|" + "---|" * len(profiled)]
    for name in phases:
        cells = []
        for r in profiled:
            row = next((row for row in r["profile"] if row["phase"] == name), None)
            count = f" ({row['count']}x)" if row and row["count"] > 1 else ""
            cells.append(f"{row['seconds']:.2f}{count}" if row else "")
        overlapped = any(row.get("overlapped") for r in profiled for row in r["profile"] if row["phase"] == name)
        lines.append(f"| {name}{' (writer thread)' if overlapped else ''} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_scaling(records: list[dict[str, Any]], axis: str, path: Path) -> Path | None:
    """Time and peak memory against ``axis`` ("steps" or "batch"), log scales, one line per method;
    cases that ran out of memory or time are marked with a cross at the top of the panel."""
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, panels = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    methods = list(dict.fromkeys(r["method"] for r in records))
    for method in methods:
        mine = sorted((r for r in records if r["method"] == method), key=lambda r: r[axis])
        for panel, value in zip(panels, (best_seconds, lambda r: r["peak_rss_bytes"] / MIB), strict=True):
            done = [(r[axis], value(r)) for r in mine if r["status"] == "ok" and value(r)]
            line, = panel.plot(*zip(*done, strict=True), marker="o", label=method) if done else panel.plot([], [], label=method)
            failed = [r[axis] for r in mine if r["status"] in ("oom", "timeout")]
            if failed:
                panel.scatter(failed, [1.0] * len(failed), marker="x", s=60, color=line.get_color(),
                              transform=panel.get_xaxis_transform(), clip_on=False)
    for panel, ylabel in zip(panels, ("time s (steady state, else first call)", "peak RSS above baseline, MiB"), strict=True):
        panel.set(xscale="log", yscale="log", xlabel={"steps": "T (time steps)", "batch": "B (batch)"}[axis], ylabel=ylabel)
        panel.grid(True, which="both", alpha=0.3)
    panels[0].legend(fontsize=8, title="x at top: out of memory / time")
    figure.suptitle(f"{records[0]['suite']}: {', '.join(sorted({_shape(r) for r in records}))[:90]}")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def load_results(directory: Path) -> dict[str, dict[str, Any]]:
    """Committed results per suite: ``<directory>/<suite>.json``."""
    return {suite: json.loads((directory / f"{suite}.json").read_text()) for suite in SUITES
            if (directory / f"{suite}.json").exists()}


def write_outputs(result: dict[str, Any], directory: Path) -> list[Path]:
    """JSON, Markdown and (for the scaling suites) plots of one suite's run."""
    directory.mkdir(parents=True, exist_ok=True)
    suite = result["suite"]
    written = [directory / f"{suite}.json", directory / f"{suite}.md"]
    written[0].write_text(json.dumps(result, indent=1))
    profile = profile_table(result["records"])
    profile_section = f"\nWhere jacengine's first call spent its time (seconds):\n\n{profile}\n" if profile else ""
    written[1].write_text(markdown_table(result["records"]) + "\n" + profile_section)
    axes = {"scaling-T": "steps", "scaling-B": "batch"}
    if suite in axes:
        plotted = plot_scaling(result["records"], axes[suite], directory / f"{suite}.png")
        written += [plotted] if plotted else []
    return written


def readme_section(results: dict[str, dict[str, Any]], directory: Path, readme: Path) -> str:
    """The generated section of docs/performance.md: machine, headline tables, plots and the reproducing commands."""
    headline = [results[s] for s in HEADLINE_SUITES if s in results]
    if not headline:
        return ""
    machine = headline[0]["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items() if v)
    parts = [
        README_START,
        f"Generated by `python -m benchmarks readme` from the committed runs in `{_relative(directory, readme)}/`; "
        f"machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_bytes'] / 2**30:.0f} GiB RAM, "
        f"GPU: {machine['gpu'] or 'none'}; {versions}. Reproduce a suite with "
        "`python -m benchmarks run --suite NAME` (each case in a fresh process; times in seconds, "
        "peak = resident memory above the baseline with the model and inputs loaded).",
        "",
    ]
    for result in headline:
        done = "" if result.get("complete", True) else f"; interrupted after {len(result['records'])} cases"
        commit = result["machine"].get("commit")
        limits = f"memory cap {result.get('memory_cap')}, time limit {result.get('time_limit'):.0f} s"
        parts += [f"**{result['suite']}** (`{result['command']}`; {limits}; jacengine commit {commit}{done})", "",
                  markdown_table(result["records"]), ""]
        if result["suite"] == "speed" and profile_table(result["records"]):
            parts += ["Where jacengine's first call spent its time (seconds; `python -m benchmarks run --suite speed`):", "",
                      profile_table(result["records"]), ""]
        plot = directory / f"{result['suite']}.png"
        if plot.exists():
            parts += [f"![{result['suite']}]({_relative(plot, readme)})", ""]
    parts.append(README_END)
    return "\n".join(parts)


def _relative(path: Path, readme: Path) -> str:
    return os.path.relpath(path, readme.parent)


def update_readme(readme: Path, directory: Path) -> bool:
    """Replace the section between the markers in ``readme``; False when there are no markers."""
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        return False
    section = readme_section(load_results(directory), directory, readme)
    pattern = re.compile(re.escape(README_START) + ".*?" + re.escape(README_END), re.S)
    readme.write_text(pattern.sub(lambda _: section or README_START + "\n" + README_END, text))
    return True
