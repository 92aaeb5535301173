"""``jacengine script slurm|pbs``: a ready-to-submit job-array workflow for one config file.

The printed script, run once with ``bash``, submits three things:

1. ``jacengine init`` (one job): creates the store and calibrates the plan, so the shards
   never race to create it;
2. the array of N shards, after 1: each runs ``jacengine compute --config ... --shard ...``.
   A few minutes before the time limit the scheduler sends SIGTERM; jacengine stops between
   blocks and exits 75 (resumable), and the task requeues itself, so a long run finishes over
   several allocations without losing a block;
3. the reductions (``jacengine reduce``, the config's ``[reduce]`` ops), after every shard.

A config file is often shared, so nothing in it may run as a command on the login node:
every value is checked against a strict pattern (times, memory sizes, counts, names) before it
is written into a scheduler directive, and values that are paths or commands are quoted for
the shell that reads them (``--wrap`` and ``bash -c`` get one single-quoted argument, so nothing
expands at submission). Newlines are refused everywhere, so no value can end a here-document.
The ``setup`` lines are the exception by design: they are shell commands the job runs (e.g.
``module load``), run in the job, never at submission. They do sit inside the here-document that
carries the shard script to ``sbatch``/``qsub``, so its delimiter is a hash of the script's
contents (:func:`_delimiter`): no line of the script can equal it, and one that did is refused.
"""

from __future__ import annotations

import hashlib
import re
import shlex
from pathlib import Path
from typing import Any

from jacengine.errors import InputError, RunInterrupted
from jacengine.jobs.config import Config

DEFAULT_OPS = ("saliency", "lag-profile")
SCHEDULERS = ("slurm", "pbs")
REDUCE_OPS = ("saliency", "lag-profile", "feature-importance", "window-sum", "top-k", "std", "quantiles")

# What each [job] value may look like where it lands in a directive (checked in full).
_PATTERNS: dict[str, tuple[str, str]] = {
    "time": (r"(\d+-)?\d+(:\d{1,2}){0,2}", "a time limit like 04:00:00 or 1-00:00:00"),
    "memory": (r"\d+(\.\d+)?([KMGTP]i?B?)?", "a memory size like 16G or 16GB"),
    "cpus": (r"[1-9]\d*", "a positive integer"),
    "shards": (r"[1-9]\d*", "a positive integer"),
    "requeue_signal_s": (r"[1-9]\d*", "a positive integer (seconds)"),
    "gpus": (r"([A-Za-z0-9_.-]+:)?[1-9]\d*", "a GPU count, optionally typed, like 2 or a100:2"),
    "partition": (r"[A-Za-z0-9_.@-]+", "a partition or queue name (letters, digits, _ . @ -)"),
    "account": (r"[A-Za-z0-9_.@-]+", "an account name (letters, digits, _ . @ -)"),
}
_DIRECTIVE = re.compile(r"[A-Za-z0-9_=:,./@%+ -]+")  # e.g. "--constraint=avx512", "-l place=scatter"


def _check_job(job: dict[str, Any]) -> dict[str, Any]:
    for key, (pattern, what) in _PATTERNS.items():
        if key in job and not re.fullmatch(pattern, str(job[key]), flags=re.IGNORECASE):
            raise InputError(f"[job] {key} = {job[key]!r} is not {what}.")
    for directive in job["directives"]:
        if not _DIRECTIVE.fullmatch(str(directive)):
            raise InputError(f"[job] directive {directive!r} may hold only letters, digits, spaces and _ = : , . / @ % + -.")
    for line in job["setup"]:
        _one_line("[job] setup line", str(line))
    return job


def _one_line(what: str, value: str) -> str:
    if any(ord(c) < 32 for c in value):
        raise InputError(f"{what} {value!r} contains a newline or another control character.")
    return value


def _job_settings(config: Config, overrides: dict[str, Any]) -> dict[str, Any]:
    job = {"cpus": 1, "memory": "8G", "setup": [], "directives": [], "requeue_signal_s": 300, **config.job}
    job.update({k: v for k, v in overrides.items() if v is not None})
    if "shards" not in job or "time" not in job:
        raise InputError("a job script needs the number of shards and the time limit: --shards N --time HH:MM:SS "
                         "(or shards/time in the config's [job] section).")
    if config.store is None:
        raise InputError("the config file must set store (the shards and the reductions share it).")
    return _check_job(job)


def _reduce_command(config: Config) -> str:
    ops = config.reduce.get("ops", DEFAULT_OPS)
    unknown = [op for op in ops if op not in REDUCE_OPS]
    if unknown:
        raise InputError(f"[reduce] ops {unknown} are not among {', '.join(REDUCE_OPS)}.")
    parts = ["jacengine", "reduce", shlex.quote(_one_line("store", config.store or ""))] + [f"--op {op}" for op in ops]
    for key, flag in (("window", "--window"), ("k", "--k"), ("fraction", "--fraction")):
        if key in config.reduce:
            parts.append(f"{flag} {shlex.quote(_one_line(f'[reduce] {key}', str(config.reduce[key])))}")
    return " ".join(parts)


def render_script(scheduler: str, config: Config, **overrides: Any) -> str:
    """The submission script for ``scheduler`` ("slurm" or "pbs"); see the module docstring."""
    if scheduler not in SCHEDULERS:
        raise InputError(f"scheduler {scheduler!r} is not one of {', '.join(SCHEDULERS)}.")
    if config.path is None:
        raise InputError("job scripts are rendered from a config file.")
    job = _job_settings(config, overrides)
    quoted = shlex.quote(_one_line("config path", str(config.path)))
    name = "jacengine-" + re.sub(r"[^A-Za-z0-9_.-]", "_", Path(config.store or "store").stem)
    setup = "\n".join(job["setup"])
    reduce = _reduce_command(config)
    render = _slurm if scheduler == "slurm" else _pbs
    return render(job, name, quoted, setup, reduce)


def _here_document(body: str) -> tuple[str, str]:
    """(opening, closing) of a quoted here-document carrying ``body``. The delimiter holds a
    hash of ``body``, so no line of it can end the document early (a setup line "SHARD" once
    did: the rest of the shard script ran on the login node at submission)."""
    delimiter = "JACENGINE_SHARD_" + hashlib.sha256(body.encode()).hexdigest()[:16].upper()
    if delimiter in body.splitlines():
        raise InputError(f"a line of the job script equals its here-document delimiter {delimiter}; change that line.")
    return f"<<'{delimiter}'", delimiter


def _in_job(setup: str, command: str) -> str:
    """``command`` after the setup lines, as one single-quoted shell word (``--wrap``,
    ``bash -c``): the login node's shell passes it on without expanding anything."""
    lines = [line for line in setup.splitlines() if line.strip()]
    return shlex.quote(" && ".join([*lines, command]))


def _slurm(job: dict[str, Any], name: str, config: str, setup: str, reduce: str) -> str:
    shards = int(job["shards"])
    common = [f"#SBATCH --cpus-per-task={job['cpus']}", f"#SBATCH --mem={job['memory']}"]
    common += [f"#SBATCH --partition={job['partition']}"] if "partition" in job else []
    common += [f"#SBATCH --account={job['account']}"] if "account" in job else []
    common += [f"#SBATCH --gpus={job['gpus']}"] if "gpus" in job else []
    common += [f"#SBATCH {directive}" for directive in job["directives"]]
    header = "\n".join(common)
    single = f"--time={job['time']} --cpus-per-task={job['cpus']} --mem={job['memory']}" + "".join(
        f" --{key}={job[key]}" for key in ("partition", "account") if key in job)
    shard = f"""#!/bin/bash
#SBATCH --job-name={name}
#SBATCH --array=0-{shards - 1}
#SBATCH --time={job['time']}
{header}
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output={name}-%A_%a.log
#SBATCH --signal=B:TERM@{job['requeue_signal_s']}
{setup}
{_run_shard(config, 'scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"', "before the time limit")}"""
    opening, closing = _here_document(shard)
    return f"""#!/bin/bash
# jacengine job array: submit with `bash THIS_FILE` on a SLURM login node.
# 1. init (creates the store once)  2. {shards} shards  3. reductions after every shard.
set -euo pipefail

init=$(sbatch --parsable --job-name={name}-init {single} \\
  --wrap {_in_job(setup, f"jacengine init --config {config}")})

array=$(sbatch --parsable --dependency=afterok:${{init}} {opening}
{shard}
{closing}
)

sbatch --parsable --dependency=afterok:${{array}} --job-name={name}-reduce {single} \\
  --wrap {_in_job(setup, reduce)}
printf 'submitted init %s, shards %s; progress: jacengine status --config %s --shards %s\\n' "$init" "$array" {config} {shards}
"""


def _run_shard(config: str, requeue: str, when: str) -> str:
    """The shard's command, and its requeue when it exits resumable. It runs in the background
    so that the job's shell can forward the scheduler's SIGTERM to it and still be alive to
    requeue when it exits resumable (a foreground command would leave the shell to die with the
    signal first)."""
    resumable = RunInterrupted.exit_status
    return f"""# SIGTERM {when}: jacengine stops between blocks and exits {resumable} (resumable).
jacengine compute --config {config} --shard-from-env --no-progress &
worker=$!
trap 'kill -TERM "$worker" 2>/dev/null' TERM
status=0; wait "$worker" || status=$?
if [ "$status" -gt 128 ]; then status=0; wait "$worker" || status=$?; fi
if [ "$status" -eq {resumable} ]; then
  {requeue}
fi
exit "$status\""""


def _pbs(job: dict[str, Any], name: str, config: str, setup: str, reduce: str) -> str:
    shards = int(job["shards"])
    select = f"select=1:ncpus={job['cpus']}:mem={job['memory']}" + (f":ngpus={job['gpus']}" if "gpus" in job else "")
    common = [f"#PBS -l {select}", f"#PBS -l walltime={job['time']}"]
    common += [f"#PBS -q {job['partition']}"] if "partition" in job else []
    common += [f"#PBS -A {job['account']}"] if "account" in job else []
    common += [f"#PBS {directive}" for directive in job["directives"]]
    header = "\n".join(common)
    single = f"-l {select} -l walltime={job['time']}" + "".join(
        f" -{flag} {job[key]}" for key, flag in (("partition", "q"), ("account", "A")) if key in job)
    shard = f"""#!/bin/bash
#PBS -N {name}
#PBS -J 0-{shards - 1}
{header}
#PBS -r y
#PBS -j oe
cd "$PBS_O_WORKDIR"
{setup}
export JACENGINE_SHARD_COUNT={shards}
{_run_shard(config, 'qrerun "$PBS_JOBID"', "at the walltime")}"""
    opening, closing = _here_document(shard)
    return f"""#!/bin/bash
# jacengine job array: submit with `bash THIS_FILE` on a PBS Pro login node.
# 1. init (creates the store once)  2. {shards} shards  3. reductions after every shard.
set -euo pipefail

init=$(qsub -N {name}-init {single} -- /bin/bash -c {_in_job(setup, f"jacengine init --config {config}")})

array=$(qsub -W depend=afterok:${{init}} {opening}
{shard}
{closing}
)

qsub -N {name}-reduce -W depend=afterok:${{array}} {single} -- /bin/bash -c {_in_job(setup, reduce)}
printf 'submitted init %s, shards %s; progress: jacengine status --config %s --shards %s\\n' "$init" "$array" {config} {shards}
"""
