"""The ``jacengine`` command line: a thin layer over the Python API."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import click

from jacengine.budget import BUDGET_DEFINITION, format_bytes
from jacengine.errors import JacengineError, RunInterrupted

EXIT_INCOMPLETE = 3


def parse_selection(text: str | None) -> Any:
    """'10' -> 10, '0:50' or '0:50:2' -> slice, '1,5,9' -> [1, 5, 9], None -> None (all)."""
    if text is None:
        return None
    text = text.strip()
    try:
        if ":" in text:
            parts = [int(p) if p else None for p in text.split(":")]
            return slice(*parts)
        if "," in text:
            return [int(p) for p in text.split(",") if p]
        return int(text)
    except ValueError as exc:
        raise click.BadParameter(f"{text!r}: use an index (10), a range (0:50) or a list (1,5,9)") from exc


def selection_options(function: Any) -> Any:
    for name, what in (("--f-in", "input features"), ("--f-out", "output features"), ("--t-out", "output steps")):
        function = click.option(name, default=None, help=f"{what}: 10, 0:50 or 1,5,9 (default all)")(function)
    return function


def model_options(function: Any) -> Any:
    options = [
        click.option("--model", "model_path", required=True, type=click.Path(exists=True, dir_okay=False),
                     help="a .keras model file"),
        click.option("--inputs", "inputs_path", required=True, type=click.Path(exists=True),
                     help="(B, T, F) inputs: a .npy file or a zarr array"),
        click.option("--budget", default="2GiB", show_default=True, help=f"memory budget ({BUDGET_DEFINITION})"),
        click.option("--causal", type=click.Choice(["auto", "true", "false"]), default="auto", show_default=True),
        click.option("--method", type=click.Choice(["auto", "reverse"]), default="auto", show_default=True),
        click.option("--trust-model", is_flag=True, help="allow .keras files that carry Python code (Lambda)"),
        click.option("--gpu-memory-limit", default=None, help="cap TensorFlow's GPU memory, e.g. 8GiB (default: memory growth)"),
    ]
    for option in reversed(options):
        function = option(function)
    return selection_options(function)


def _api_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    causal = {"auto": "auto", "true": True, "false": False}[kwargs.pop("causal")]
    return dict(
        budget=kwargs.pop("budget"),
        t_out=parse_selection(kwargs.pop("t_out")),
        f_out=parse_selection(kwargs.pop("f_out")),
        f_in=parse_selection(kwargs.pop("f_in")),
        causal=causal,
        method=kwargs.pop("method"),
        trust_model=kwargs.pop("trust_model"),
        gpu_memory_limit=kwargs.pop("gpu_memory_limit"),
    )


@click.group()
@click.version_option(package_name="jacengine")
@click.option("-v", "--verbose", is_flag=True, help="log what is decided and why")
def main(verbose: bool) -> None:
    """Memory-bounded Jacobians of sequence models, stored in zarr."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="jacengine: %(message)s")


def run_guarded(action: Any) -> Any:
    """Run ``action``; turn jacengine errors into a one-paragraph message and an exit status."""
    try:
        return action()
    except RunInterrupted as exc:
        click.echo(f"jacengine: {exc}", err=True)
        sys.exit(exc.exit_status)
    except JacengineError as exc:
        click.echo(f"jacengine: error: {exc}", err=True)
        sys.exit(2)


@main.command()
@model_options
@click.option("--out", "store", required=True, type=click.Path(), help="store directory (created or resumed)")
@click.option("--overwrite", is_flag=True, help="replace an existing jacengine store")
@click.option("--no-progress", is_flag=True)
def compute(model_path: str, inputs_path: str, store: str, overwrite: bool, no_progress: bool, **kwargs: Any) -> None:
    """Compute the Jacobian of MODEL at INPUTS into a store (rerun to resume)."""
    from jacengine.api import compute as compute_api

    options = _api_options(kwargs)
    result = run_guarded(
        lambda: compute_api(model_path, inputs_path, store, overwrite=overwrite, progress=not no_progress, **options)
    )
    click.echo(f"wrote {result.path}: jacobian {result.shape} {result.dims}")


@main.command()
@model_options
@click.option("--json", "as_json", is_flag=True, help="print the plan as JSON")
def plan(model_path: str, inputs_path: str, as_json: bool, **kwargs: Any) -> None:
    """Show blocks, predicted peak memory, store size and run time; computes nothing but a probe."""
    from jacengine.api import plan as plan_api

    summary = run_guarded(lambda: plan_api(model_path, inputs_path, **_api_options(kwargs)))
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"jacobian shape      {tuple(summary['shape'])}, chunks {tuple(summary['chunks'])}")
    click.echo(f"causality           {summary['causal_reason']}")
    click.echo(f"blocks              {summary['blocks']} in {len(summary['block_shapes'])} shapes "
               "(batch, rows, watched steps, forward steps): "
               + ", ".join(str(tuple(k)) for k in summary["block_shapes"]))
    click.echo(f"predicted peak      {format_bytes(summary['predicted_peak_bytes'])} "
               f"of a {format_bytes(summary['budget_bytes'])} budget")
    click.echo(f"                    ({BUDGET_DEFINITION})")
    click.echo(f"predicted store     {format_bytes(summary['predicted_store_bytes'])} on disk")
    click.echo(f"predicted run time  {summary['predicted_seconds']:.1f} s")


@main.command()
@click.argument("store", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True)
def status(store: str, as_json: bool) -> None:
    """Blocks done/total and bytes on disk; exits 3 while the store is incomplete."""
    from jacengine.store import open_store

    opened = run_guarded(lambda: open_store(store))
    done, total = len(opened.done_blocks()), len(opened.plan.blocks)
    report = {
        "path": str(opened.path),
        "shape": list(opened.shape),
        "dims": list(opened.dims),
        "blocks_done": done,
        "blocks_total": total,
        "complete": done == total,
        "bytes_on_disk": opened.nbytes_on_disk(),
        "causal": opened.attrs["causal"],
        "fingerprint": opened.fingerprint,
    }
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(f"{report['path']}: jacobian {tuple(report['shape'])} {tuple(report['dims'])}")
        click.echo(f"blocks {done}/{total} done, {format_bytes(report['bytes_on_disk'])} on disk, causal={report['causal']}")
        fingerprint = report["fingerprint"]
        click.echo("fingerprint " + ", ".join(f"{k}={str(v)[:12]}" for k, v in sorted(fingerprint.items())))
    if done != total:
        sys.exit(EXIT_INCOMPLETE)


@main.command()
@click.argument("store", type=click.Path(exists=True, file_okay=False))
@click.option("--model", "model_path", type=click.Path(exists=True, dir_okay=False), help="default: the path recorded in the store")
@click.option("--inputs", "inputs_path", type=click.Path(exists=True), help="default: the path recorded in the store")
@click.option("--samples", default=16, show_default=True, help="random rows recomputed independently")
@click.option("--seed", default=0, show_default=True)
@click.option("--no-repair", is_flag=True, help="only report; do not mark corrupt blocks pending")
@click.option("--trust-model", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
def verify(store: str, model_path: str | None, inputs_path: str | None, samples: int, seed: int, no_repair: bool,
           trust_model: bool, as_json: bool) -> None:
    """Check block checksums and recompute sampled entries; exits 1 on any problem.

    Corrupt blocks are marked pending (unless --no-repair): rerun compute to recompute them.
    """
    from jacengine.verify import verify as verify_api

    report = run_guarded(lambda: verify_api(store, model_path, inputs_path, samples=samples, seed=seed,
                                            repair=not no_repair, trust_model=trust_model))
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(f"blocks: {report.blocks_total - len(report.missing)}/{report.blocks_total} done, "
                   f"missing {report.missing or 'none'}, corrupt {report.corrupt or 'none'}")
        if report.max_gradient_error is not None:
            click.echo(f"{report.rows_checked} rows vs eager gradients: max error {report.max_gradient_error:.2e} of max |J|")
        if report.max_finite_difference_error is not None:
            click.echo(f"{report.entries_checked} entries vs float64 finite differences: "
                       f"max error {report.max_finite_difference_error:.2e} of max |J|")
        for note in report.notes:
            click.echo(note)
        click.echo("OK" if report.ok else f"PROBLEMS FOUND (tolerance {report.tolerance:g})")
    if not report.ok:
        sys.exit(1)


@main.command()
@click.argument("store", type=click.Path(exists=True, file_okay=False))
@click.option("--op", "ops", multiple=True, required=True,
              type=click.Choice(["saliency", "lag-profile", "feature-importance", "window-sum", "top-k", "std", "quantiles"]),
              help="reduction to run (repeatable); results go to STORE/reductions/<op>")
@click.option("--window", default="0:10", show_default=True, help="window-sum: input steps start:stop")
@click.option("--k", default=5, show_default=True, help="top-k: entries per output step")
@click.option("--fraction", default=0.9, show_default=True, help="lag-profile: share of influence for the quantile lag")
@click.option("--partial", is_flag=True, help="reduce the completed blocks of an incomplete store")
@click.option("--plot", type=click.Path(dir_okay=False), help="also write a summary figure (PNG)")
def reduce(store: str, ops: tuple[str, ...], window: str, k: int, fraction: float, partial: bool, plot: str | None) -> None:
    """Reduce a store out of core and write the results into it."""
    from jacengine.reductions import reduce as reduce_api
    from jacengine.store import open_store

    window_slice = parse_selection(window)
    if not isinstance(window_slice, slice):
        raise click.BadParameter("--window takes start:stop")
    options = {"window-sum": {"start": window_slice.start or 0, "stop": window_slice.stop},
               "top-k": {"k": k}, "lag-profile": {"fraction": fraction}}
    opened = run_guarded(lambda: open_store(store, mode="r+"))
    for op in ops:
        result = run_guarded(lambda op=op: reduce_api(opened, op, partial=partial, **options.get(op, {})))
        coverage = result.attrs.get("coverage", 1.0)
        click.echo(f"{op}: wrote reductions/{result.name} ({', '.join(result.arrays)}), coverage {coverage:.0%}")
        if op == "lag-profile":
            click.echo(f"  {fraction:.0%} of the influence lies within lag {int(result['quantile_lag'].max())}")
    if plot:
        from jacengine.plots import plot_summary

        click.echo(f"figure: {run_guarded(lambda: plot_summary(opened, plot, partial=partial))}")


@main.command()
@click.option("--out", "store", default="jacengine-demo.zarr", show_default=True, type=click.Path())
@click.option("--batch", default=10, show_default=True)
@click.option("--steps", default=100, show_default=True)
@click.option("--budget", default="2GiB", show_default=True)
@click.option("--epochs", default=40, show_default=True, help="training epochs before the Jacobian (0: untrained)")
@click.option("--plot", type=click.Path(dir_okay=False), help="write a summary figure (PNG; needs matplotlib)")
def demo(store: str, batch: int, steps: int, budget: str, epochs: int, plot: str | None) -> None:
    """The seed problem on a built-in LSTM trained on data with known lags; no files needed."""
    from jacengine.demo import run_demo

    run_guarded(lambda: run_demo(store, batch=batch, steps=steps, budget=budget, epochs=epochs, plot=plot, echo=click.echo))
