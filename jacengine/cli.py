"""The ``jacengine`` command line: a thin layer over the Python API."""

from __future__ import annotations

import json
import logging
import sys
import traceback
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource
from dask.utils import format_bytes

from jacengine.analysis.reductions import REDUCTIONS
from jacengine.backends import is_import_path, runs_code_when_loaded, untrusted_model_message
from jacengine.demo import DEFAULTS as DEMO
from jacengine.demo import TRUE_LAGS
from jacengine.errors import InputError, JacengineError, RunInterrupted
from jacengine.jobs.config import CLUSTER_KINDS, Config, load_config
from jacengine.jobs.scripts import SCHEDULERS
from jacengine.logs import log_to_stderr
from jacengine.options import CAUSAL_CHOICES, EXECUTORS, PRECISIONS, RunOptions
from jacengine.planning.budget import BUDGET_DEFINITION
from jacengine.planning.methods import METHOD_CHOICES, describe_methods
from jacengine.planning.selection import parse_selection_text
from jacengine.planning.spec import LAYOUTS, STORE_DTYPES

EXIT_BAD_INPUT = 2  # jacengine refused the input or settings, with a message saying why
EXIT_INCOMPLETE = 3
EXIT_CRASH = 1  # an unexpected exception (a bug), as Python itself exits for one
EXIT_PROBLEMS_FOUND = 4  # verify found corrupt or missing blocks, or wrong entries


def parse_selection(text: str | None) -> Any:
    """A command-line selection ('10', '0:50', '1,5,9'); see :func:`parse_selection_text`."""
    try:
        return parse_selection_text(text)
    except InputError as exc:
        raise click.BadParameter(str(exc)) from exc


def _load_config_defaults(ctx: click.Context, _param: click.Parameter, path: str | None) -> Config | None:
    """--config: its settings become the command's defaults (click's ``default_map``), so flags
    override the file and the file overrides :class:`RunOptions`' defaults."""
    if path is None:
        return None
    config = load_config(path)
    defaults = {name: _as_flag_text(value) for name, value in config.settings.items()}
    defaults.update({name: getattr(config, name) for name in ("model", "inputs", "store", "cluster")
                     if getattr(config, name) is not None})
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return config


def config_option(**names: str) -> Any:
    """--config for a command outside :func:`model_options`: ``names`` maps each parameter to the
    config entry that gives its default: ``store``, ``model``, ``inputs`` or ``reduce.<key>`` (the
    ``[reduce]`` section). Flags and arguments override the file."""

    def apply(ctx: click.Context, _param: click.Parameter, path: str | None) -> None:
        if path is None:
            return
        config = load_config(path)
        defaults = {}
        for parameter, entry in names.items():
            section, _, key = entry.rpartition(".")
            value = config.reduce.get(key) if section == "reduce" else getattr(config, key)
            if value is not None:
                defaults[parameter] = value
        ctx.default_map = {**(ctx.default_map or {}), **defaults}

    described = ", ".join(sorted({entry.replace("reduce.", "[reduce] ") for entry in names.values()}))
    return click.option("--config", type=click.Path(exists=True, dir_okay=False), is_eager=True, expose_value=False,
                        callback=apply, help=f"TOML file giving {described} (flags and arguments override it)")


def _as_flag_text(value: Any) -> Any:
    """A TOML value as the command line would spell it (booleans, index lists)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return value


def _text_choice(*choices: Any) -> click.Choice:
    return click.Choice([str(c).lower() for c in choices])


class ModelReference(click.ParamType):
    """--model: an existing file or directory, or an import path 'package.module:name'."""

    name = "model"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        if is_import_path(value) or Path(value).exists():
            return str(value)
        self.fail(f"{value!r} is neither an existing file or directory nor an import path 'package.module:name'.",
                  param, ctx)


MODEL = ModelReference()
MODEL_HELP = "a .keras or .h5 file, a SavedModel directory, or an import path package.module:name"
TRUST_MODEL = click.option("--trust-model", is_flag=True, default=RunOptions.default("trust_model"),
                           help="allow models that run their author's code (Lambda layers, SavedModels, import paths "
                                "named by a config file or store): only from authors you trust")


# The run settings as flags: types and choices from RunOptions' vocabularies, defaults from
# RunOptions itself (the only place they live).
_RUN_FLAGS: dict[str, dict[str, Any]] = {
    "budget": dict(help=f"memory budget per process ({BUDGET_DEFINITION})"),
    "t_out": dict(help="output steps: 10, 0:50 or 1,5,9 (default all)"),
    "f_out": dict(help="output features: 10, 0:50 or 1,5,9 (default all)"),
    "f_in": dict(help="input features: 10, 0:50 or 1,5,9 (default all)"),
    "causal": dict(type=_text_choice(*CAUSAL_CHOICES), help="whether outputs depend only on earlier inputs (auto: detect)"),
    "method": dict(type=click.Choice(METHOD_CHOICES), help=f"auto (measure and take the fastest) or: {describe_methods()}"),
    "layout": dict(type=click.Choice(LAYOUTS), help="full (every input step) or lag (lags 0..max-lag-1 behind each output step)"),
    "max_lag": dict(type=click.IntRange(min=1), help="the lag window L of --layout lag"),
    "store_dtype": dict(type=click.Choice(STORE_DTYPES), help="stored dtype (float16: rounding error recorded)"),
    "precision": dict(type=click.Choice(PRECISIONS), help="model (the model's dtype) or float64 (a float64 copy)"),
    "gpu_memory_limit": dict(help="cap the GPU memory, e.g. 8GiB (default: memory growth)"),
    "backend": dict(help="auto (the one that recognises the model) or a backend name"),
    "signature": dict(help="SavedModel: the signature or function to call [default: serving_default, else __call__]"),
    "model_id": dict(help="a model without layers (SavedModel, import path): its identity for resumes, instead of a "
                          "hash of its traced graph"),
    "durable": dict(type=bool, help="fsync every block before recording it done (survives power loss); false: faster"),
}


def model_options(function: Any) -> Any:
    """--config, --model, --inputs and the run settings; every one may come from the config."""
    options = [
        click.option("--config", "config", type=click.Path(exists=True, dir_okay=False), is_eager=True,
                     callback=_load_config_defaults, expose_value=True,
                     help="TOML file with any of these settings (flags override it); see jacengine.jobs.config"),
        click.option("--model", "model", type=MODEL, help=MODEL_HELP),
        click.option("--inputs", "inputs", type=click.Path(exists=True), help="(B, T, F) inputs: a .npy file or a zarr array"),
        *[click.option(f"--{name.replace('_', '-')}", name, default=_as_flag_text(RunOptions.default(name)),
                       show_default=RunOptions.default(name) is not None, **flag)
          for name, flag in _RUN_FLAGS.items()],
        TRUST_MODEL,
    ]
    for option in reversed(options):
        function = option(function)
    return function


def resolve(kwargs: dict[str, Any], *extra: str) -> tuple[dict[str, Any], RunOptions, Config]:
    """Split a command's values into files (model, inputs and the ``extra`` names), the
    :class:`RunOptions` they set, and the config file (empty when none was given)."""
    config = kwargs.pop("config", None) or Config()
    files = {name: kwargs.pop(name, None) for name in ("model", "inputs", *extra)}
    for name in ("model", "inputs"):
        if files[name] is None:
            raise click.UsageError(f"no {name}: pass --{name} or set {name} in a --config file.")
    settings = {name: kwargs.pop(name) for name in list(kwargs) if name in RunOptions.names()}
    settings = {name: value for name, value in settings.items() if value is not None}
    _refuse_untrusted_config_model("model", files["model"], bool(settings.get("trust_model")))
    return files, RunOptions.from_mapping(settings), config


def _refuse_untrusted_config_model(parameter: str, model: Any, trust_model: bool) -> None:
    """A model that runs code when loaded (an import path, a SavedModel), named by a --config file
    rather than on the command line, needs --trust-model: a config file is often shared."""
    from_file = click.get_current_context().get_parameter_source(parameter) is ParameterSource.DEFAULT_MAP
    if from_file and not trust_model and runs_code_when_loaded(model):
        raise InputError(untrusted_model_message(model, "the --config file"))


class _Commands(click.Group):
    """The command group, the one place errors become exit statuses: a stop exits with
    :class:`RunInterrupted`'s status (75: resumable), a full disk with :class:`DiskFullError`'s
    (74), jacengine's other errors with a one-paragraph message and 2, and an unexpected
    exception (a bug, not bad input) with its traceback, a line saying it is a bug, and
    :data:`EXIT_CRASH`."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RunInterrupted as exc:
            click.echo(f"jacengine: {exc}", err=True)
            sys.exit(exc.exit_status)
        except JacengineError as exc:
            click.echo(f"jacengine: error: {exc}", err=True)
            sys.exit(getattr(exc, "exit_status", EXIT_BAD_INPUT))
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit, KeyboardInterrupt):
            raise
        except Exception:
            traceback.print_exc()
            click.echo("jacengine: internal error (the traceback above is a bug in jacengine, not in your input); "
                       "please report it with the command you ran.", err=True)
            sys.exit(EXIT_CRASH)


def _set_level(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """-v / -q, before or after the command's name: the level of jacengine's logger on stderr."""
    if not value:
        return
    chosen = ctx.meta.setdefault("jacengine.verbosity", set())
    chosen.add(param.name)
    if len(chosen) > 1:
        raise click.UsageError("pass either -v or -q, not both.")
    log_to_stderr(logging.INFO if param.name == "verbose" else logging.ERROR)


def _set_progress(ctx: click.Context, _param: click.Parameter, value: bool | None) -> None:
    if value is not None:
        ctx.meta["jacengine.progress"] = value


def _progress() -> bool | None:
    """The --progress / --no-progress choice (None: bars when stderr is a terminal)."""
    return click.get_current_context().meta.get("jacengine.progress")


def common_options(function: Any) -> Any:
    """-v, -q, --progress/--no-progress and -h on the group and on every command."""
    options = [
        click.option("-v", "--verbose", is_flag=True, expose_value=False, callback=_set_level,
                     help="log what is decided and why"),
        click.option("-q", "--quiet", is_flag=True, expose_value=False, callback=_set_level, help="log errors only"),
        click.option("--progress/--no-progress", default=None, expose_value=False, callback=_set_progress,
                     help="progress bars on or off [default: on when stderr is a terminal]"),
    ]
    for option in reversed(options):
        function = option(function)
    return function


CONTEXT = {"help_option_names": ["-h", "--help"]}


@click.group(cls=_Commands, context_settings=CONTEXT)
@click.version_option(package_name="jacengine")
@common_options
def main() -> None:
    """Memory-bounded Jacobians of sequence models, stored in zarr."""
    if not click.get_current_context().meta.get("jacengine.verbosity"):
        log_to_stderr(logging.WARNING)


@main.command()
@common_options
@model_options
@click.option("--out", "store", type=click.Path(), help="store directory (created or resumed)")
@click.option("--overwrite", is_flag=True, help="replace an existing jacengine store")
@click.option("--executor", type=click.Choice(EXECUTORS), default=None,
              help="where blocks run [default: local, or dask with --scheduler or --cluster]")
@click.option("--scheduler", default=None, help="dask: address of an existing scheduler (default: a LocalCluster here)")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="dask LocalCluster: worker processes [default: one per core]")
@click.option("--cluster", type=click.Choice(CLUSTER_KINDS), default=None,
              help="dask: start a dask-jobqueue cluster from the config's [jobqueue] section")
@click.option("--shard", default=None, help="compute only shard I of N (I/N, e.g. 0/4) of an initialised store")
@click.option("--shard-from-env", is_flag=True, help="take the shard from SLURM/PBS job-array variables")
def compute(overwrite: bool, shard: str | None, shard_from_env: bool, cluster: str | None,
            executor: str | None, **kwargs: Any) -> None:
    """Compute the Jacobian of --model at --inputs into the store --out (rerun to resume).

    \b
    Example: jacengine compute --model model.keras --inputs x.npy --out j.zarr --budget 1GiB
    """
    from jacengine.api import compute as compute_api

    # a scheduler or a cluster means dask even where --executor was left out
    kwargs["executor"] = executor or ("dask" if kwargs.get("scheduler") or cluster else "local")
    files, options, config = resolve(kwargs, "store")
    store = _required(files, "store", "--out")
    if shard and shard_from_env:
        raise click.UsageError("pass either --shard or --shard-from-env, not both.")
    result = compute_api(files["model"], files["inputs"], store, options=options, overwrite=overwrite,
                         progress=_progress(), cluster=cluster, jobqueue=config.jobqueue,
                         shard=shard or ("env" if shard_from_env else None))
    if (shard or shard_from_env) and not result.is_complete:
        click.echo(f"shard done; {len(result.pending_blocks())} blocks left to other shards (jacengine status {result.path})")
    else:
        click.echo(f"wrote {result.path}: jacobian {result.shape} {result.dims}")
    if result.last_run is not None:
        click.echo(result.last_run.line())


def _required(files: dict[str, Any], name: str, flag: str) -> str:
    if files.get(name) is None:
        raise click.UsageError(f"no {name}: pass {flag} or set {name} in a --config file.")
    return str(files[name])


@main.command()
@common_options
@model_options
@click.option("--out", "store", type=click.Path(), help="store directory to create")
@click.option("--overwrite", is_flag=True, help="replace an existing jacengine store")
def init(overwrite: bool, **kwargs: Any) -> None:
    """Create the store and its calibrated plan without computing it (run before job-array shards).

    \b
    Example: jacengine init --config job.toml
    """
    from jacengine.api import init as init_api

    files, options, _ = resolve(kwargs, "store")
    store = _required(files, "store", "--out")
    result = init_api(files["model"], files["inputs"], store, overwrite=overwrite, options=options, progress=_progress())
    click.echo(f"initialised {result.path}: {len(result.plan.blocks)} blocks, {len(result.done_blocks())} done")


@main.command()
@common_options
@model_options
@click.option("--json", "as_json", is_flag=True, help="print the plan as JSON")
def plan(as_json: bool, **kwargs: Any) -> None:
    """Show blocks, predicted peak memory, store size and run time; computes nothing but probes.

    \b
    Example: jacengine plan --model model.keras --inputs x.npy --budget 512MiB
    """
    from jacengine.api import plan as plan_api

    files, options, _ = resolve(kwargs)
    summary = plan_api(files["model"], files["inputs"], options=options, progress=_progress())
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"jacobian shape      {tuple(summary['shape'])}, chunks {tuple(summary['chunks'])}")
    click.echo(f"causality           {summary['causal_reason']}")
    click.echo(f"method              {summary['method_reason']}")
    click.echo(f"blocks              {summary['blocks']} in {len(summary['block_shapes'])} shapes "
               f"(batch, rows, watched steps, forward steps), {summary['traces']} trace(s): "
               + ", ".join(str(tuple(k)) for k in summary["block_shapes"]))
    click.echo(f"predicted peak      {format_bytes(summary['predicted_peak_bytes'])} "
               f"of a {format_bytes(summary['budget_bytes'])} budget "
               f"(minimum for this model and shape: {format_bytes(summary['minimum_budget_bytes'])})")
    click.echo(f"                    ({BUDGET_DEFINITION})")
    click.echo(f"predicted store     {format_bytes(summary['predicted_store_bytes'])} on disk")
    click.echo(f"predicted run time  {summary['predicted_seconds']:.1f} s")


@main.command()
@common_options
@click.argument("store", required=False, type=click.Path(exists=True, file_okay=False))
@config_option(store="store")
@click.option("--shards", type=int, default=None, help="also show the progress of each of N job-array shards")
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
def status(store: str | None, shards: int | None, as_json: bool) -> None:
    """Blocks done/total and bytes on disk (all shards together); exits 3 while incomplete.

    \b
    Example: jacengine status j.zarr --shards 8
    """
    from jacengine import status as status_api

    if store is None:
        raise click.UsageError("no store: pass STORE or a --config file that sets store.")
    report = status_api(store, shards=shards)
    if report.damaged:
        click.echo(f"blocks {list(report.damaged)} are recorded done but their chunk files are missing or short (an "
                   "interrupted write, or a power loss): they count as pending; rerun compute to recompute them", err=True)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(f"{report.path}: jacobian {report.shape} {report.dims}")
        click.echo(f"blocks {report.blocks_done}/{report.blocks_total} done, {format_bytes(report.bytes_on_disk)} on disk, "
                   f"{'causal' if report.causal else 'not causal'}")
        for entry in report.shards:
            click.echo(f"  shard {entry.shard}/{shards}: {entry.blocks_done}/{entry.blocks_total} blocks")
        click.echo(_fingerprint_in_words(report.fingerprint))
    if not report.complete:
        sys.exit(EXIT_INCOMPLETE)


def _fingerprint_in_words(fingerprint: dict[str, Any]) -> str:
    """What a resume must match, as a sentence: hashes shortened to 12 hex digits."""
    parts = [f"{name} sha256 {str(fingerprint[name])[:12]}" for name in ("model", "inputs", "spec") if name in fingerprint]
    if "grid" in fingerprint:
        parts.append(f"chunk grid {tuple(fingerprint['grid'])}")
    if "dtypes" in fingerprint:
        computed, _, stored = str(fingerprint["dtypes"]).partition("->")
        parts.append(f"computed in {computed}, stored as {stored}")
    if "format" in fingerprint:
        parts.append(f"store format {fingerprint['format']}")
    return "resumes must match: " + "; ".join(parts)


@main.command()
@common_options
@click.argument("scheduler", type=click.Choice(SCHEDULERS))
@click.argument("config_path", metavar="CONFIG", type=click.Path(exists=True, dir_okay=False))
@click.option("--shards", type=int, default=None, help="job-array size [config: job.shards]")
@click.option("--time", default=None, help="time limit per job, e.g. 04:00:00 [config: job.time]")
@click.option("--cpus", type=int, default=None, help="cores per job [config: job.cpus, default 1]")
@click.option("--memory", default=None, help="memory per job, e.g. 16G [config: job.memory, default 8G]")
@click.option("--partition", default=None, help="partition (SLURM) or queue (PBS) [config: job.partition]")
@click.option("--account", default=None, help="account to charge [config: job.account]")
def script(scheduler: str, config_path: str, **overrides: Any) -> None:
    """Print a job-array workflow for CONFIG: init, N resumable shards, then the reductions.

    Save it and run it once with bash on the login node: it submits the three steps with
    dependencies between them. Shards that hit the time limit exit 75 and requeue themselves.

    \b
    Example: jacengine script slurm job.toml --shards 16 > submit.sh && bash submit.sh
    """
    from jacengine.jobs.scripts import render_script

    click.echo(render_script(scheduler, load_config(config_path), **overrides), nl=False)


@main.command()
@common_options
@click.argument("store", type=click.Path(exists=True, file_okay=False))
@config_option(store="store", model_path="model", inputs_path="inputs")
@click.option("--model", "model_path", type=MODEL, help="default: the model recorded in the store")
@click.option("--inputs", "inputs_path", type=click.Path(exists=True), help="default: the path recorded in the store")
@click.option("--samples", default=16, show_default=True, help="random rows recomputed independently")
@click.option("--seed", default=0, show_default=True, help="random seed of the sampled rows (the same seed checks the same rows)")
@click.option("--no-repair", is_flag=True, help="only report; do not mark corrupt blocks pending")
@TRUST_MODEL
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
def verify(store: str, model_path: str | None, inputs_path: str | None, samples: int, seed: int, no_repair: bool,
           trust_model: bool, as_json: bool) -> None:
    """Check block checksums and recompute sampled entries; exits 4 on any problem.

    Corrupt blocks are marked pending (unless --no-repair): rerun compute to recompute them.

    \b
    Example: jacengine verify j.zarr --samples 32
    """
    from jacengine.analysis.verify import verify as verify_api

    _refuse_untrusted_config_model("model_path", model_path, trust_model)
    report = verify_api(store, model_path, inputs_path, samples=samples, seed=seed, repair=not no_repair,
                        trust_model=trust_model, progress=_progress())
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
        sys.exit(EXIT_PROBLEMS_FOUND)


@main.command()
@common_options
@click.argument("store", type=click.Path(exists=True, file_okay=False))
@config_option(store="store", ops="reduce.ops", window="reduce.window", k="reduce.k", fraction="reduce.fraction")
@click.option("--op", "ops", multiple=True, required=True,
              type=click.Choice(list(REDUCTIONS)),
              help="reduction to run (repeatable); results go to STORE/reductions/<op>")
@click.option("--window", default="0:10", show_default=True, help="window-sum: input steps start:stop")
@click.option("--k", default=5, show_default=True, help="top-k: entries per output step")
@click.option("--fraction", default=0.9, show_default=True, help="lag-profile: share of influence for the quantile lag")
@click.option("--partial", is_flag=True, help="reduce the completed blocks of an incomplete store")
@click.option("--plot", type=click.Path(dir_okay=False),
              help="also write a summary figure (.png, .svg or .pdf); runs saliency and lag-profile too, in the same pass")
def reduce(store: str, ops: tuple[str, ...], window: str, k: int, fraction: float, partial: bool, plot: str | None) -> None:
    """Reduce a store out of core, all ops in one pass over it, and write the results into it.

    \b
    Example: jacengine reduce j.zarr --op lag-profile --op window-sum --window 0:10 --plot summary.png
    """
    from jacengine import open_store
    from jacengine.analysis.reductions import reduce_many

    window_slice = parse_selection(window)
    if not isinstance(window_slice, slice):
        raise click.BadParameter("--window takes start:stop")
    options = {"window-sum": {"start": window_slice.start or 0, "stop": window_slice.stop},
               "top-k": {"k": k}, "lag-profile": {"fraction": fraction}}
    if plot:  # before any work, not after the reductions
        from jacengine.analysis.plots import SUMMARY_OPS, check_matplotlib

        check_matplotlib()
        ops = tuple(dict.fromkeys([*ops, *SUMMARY_OPS]))
    opened = open_store(store, mode="r+")
    results = reduce_many(opened, {op: options.get(op, {}) for op in ops}, partial=partial, progress=_progress())
    for op, result in results.items():
        coverage = result.attrs.get("coverage", 1.0)
        click.echo(f"{op}: wrote reductions/{op} ({', '.join(map(str, result.data_vars))}), coverage {coverage:.0%}")
        if op == "lag-profile":
            click.echo(f"  {fraction:.0%} of the influence lies within lag {int(result['quantile_lag'].max())}")
    if plot:
        from jacengine.analysis.plots import save_summary

        click.echo(f"figure: {save_summary(opened, results, plot)}")


@main.command()
@common_options
@config_option(model_path="model", inputs_path="inputs")
@click.option("--model", "model_path", required=True, type=MODEL, help=MODEL_HELP)
@click.option("--inputs", "inputs_path", required=True, type=click.Path(exists=True), help="(B, T, F) inputs: .npy or zarr")
@click.option("--over", type=click.Choice(["inputs", "outputs"]), required=True,
              help="inputs: sum J over --t-in/--f-in for every output (one JVP); "
                   "outputs: over --t-out/--f-out for every input (one VJP)")
@click.option("--t-in", default=None, help="input steps summed over (with --over inputs): 0:10, 1,5,9 (default all)")
@click.option("--f-in", default=None, help="input features summed over (with --over inputs; default all)")
@click.option("--t-out", default=None, help="output steps summed over (with --over outputs; default all)")
@click.option("--f-out", default=None, help="output features summed over (with --over outputs; default all)")
@click.option("--batch-size", default=64, show_default=True, help="samples per product (memory: one backward pass of them)")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="result file (.npy)")
@TRUST_MODEL
def directional(model_path: str, inputs_path: str, over: str, t_in: str | None, f_in: str | None, t_out: str | None,
                f_out: str | None, batch_size: int, out_path: str, trust_model: bool) -> None:
    """Sum J over a set of inputs (for every output) or outputs (for every input), without J.

    \b
    Example: jacengine directional --model model.keras --inputs x.npy --over inputs --t-in 0:10 --out sums.npy
    """
    import numpy as np

    from jacengine.analysis.directional import directional as directional_api

    result = directional_api(model_path, inputs_path, over=over, t_in=parse_selection(t_in), f_in=parse_selection(f_in),
                             t_out=parse_selection(t_out), f_out=parse_selection(f_out), batch_size=batch_size,
                             trust_model=trust_model, progress=_progress())
    values = result["sum"]
    np.save(out_path, values.values)
    click.echo(f"{result.attrs['jacengine_reduction']}: wrote {out_path}, shape {values.shape} {values.dims}")


@main.command()
@common_options
@click.option("--out", "store", default="jacengine-demo.zarr", show_default=True, type=click.Path(),
              help="store directory for the demo's Jacobian")
@click.option("--overwrite", is_flag=True, help="replace a jacengine store already at --out")
@click.option("--batch", default=DEMO.batch, show_default=True, type=click.IntRange(min=1), help="sequences (B)")
@click.option("--steps", default=DEMO.steps, show_default=True, type=click.IntRange(min=max(TRUE_LAGS) + 1),
              help=f"time steps per sequence (T; above the longest true lag, {max(TRUE_LAGS)})")
@click.option("--budget", default=RunOptions.default("budget"), show_default=True,
              help=f"memory budget ({BUDGET_DEFINITION})")
@click.option("--epochs", default=DEMO.epochs, show_default=True, help="training epochs before the Jacobian (0: untrained)")
@click.option("--plot", type=click.Path(dir_okay=False), help="write a summary figure (PNG; needs matplotlib)")
def demo(store: str, overwrite: bool, batch: int, steps: int, budget: str, epochs: int, plot: str | None) -> None:
    """The seed problem on a built-in LSTM trained on data with known lags; no files needed.

    \b
    Example: jacengine demo --plot demo.png
    """
    from jacengine.demo import run_demo

    run_demo(store, batch=batch, steps=steps, budget=budget, epochs=epochs, plot=plot, overwrite=overwrite, echo=click.echo)
