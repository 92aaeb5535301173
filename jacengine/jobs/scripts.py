"""``jacengine script slurm|pbs``: a ready-to-submit job-array workflow for one config file.

The printed script, run once with ``bash``, submits three things:

1. ``jacengine init`` (one job): creates the store and calibrates the plan, so the shards
   never race to create it;
2. the array of N shards, after 1: each runs ``jacengine compute --config ... --shard ...``.
   A few minutes before the time limit the scheduler sends SIGTERM; jacengine stops between
   blocks and exits 75 (resumable), and the task requeues itself, so a long run finishes over
   several allocations without losing a block;
3. the reductions (``jacengine reduce``, the config's ``[reduce]`` ops), after every shard.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from jacengine.errors import InputError, RunInterrupted
from jacengine.jobs.config import Config

DEFAULT_OPS = ("saliency", "lag-profile")
SCHEDULERS = ("slurm", "pbs")


def _job_settings(config: Config, overrides: dict[str, Any]) -> dict[str, Any]:
    job = {"cpus": 1, "memory": "8G", "setup": [], "directives": [], "requeue_signal_s": 300, **config.job}
    job.update({k: v for k, v in overrides.items() if v is not None})
    if "shards" not in job or "time" not in job:
        raise InputError("a job script needs the number of shards and the time limit: --shards N --time HH:MM:SS "
                         "(or shards/time in the config's [job] section).")
    if int(job["shards"]) < 1:
        raise InputError(f"shards must be at least 1, got {job['shards']}.")
    if config.store is None:
        raise InputError("the config file must set store (the shards and the reductions share it).")
    return job


def _reduce_command(config: Config) -> str:
    ops = config.reduce.get("ops", DEFAULT_OPS)
    parts = ["jacengine", "reduce", shlex.quote(config.store or "")] + [f"--op {shlex.quote(op)}" for op in ops]
    for key, flag in (("window", "--window"), ("k", "--k"), ("fraction", "--fraction")):
        if key in config.reduce:
            parts.append(f"{flag} {shlex.quote(str(config.reduce[key]))}")
    return " ".join(parts)


def render_script(scheduler: str, config: Config, **overrides: Any) -> str:
    """The submission script for ``scheduler`` ("slurm" or "pbs"); see the module docstring."""
    if scheduler not in SCHEDULERS:
        raise InputError(f"scheduler {scheduler!r} is not one of {', '.join(SCHEDULERS)}.")
    if config.path is None:
        raise InputError("job scripts are rendered from a config file.")
    job = _job_settings(config, overrides)
    quoted = shlex.quote(str(config.path))
    name = "jacengine-" + Path(config.store or "store").stem
    setup = "\n".join(job["setup"])
    reduce = _reduce_command(config)
    render = _slurm if scheduler == "slurm" else _pbs
    return render(job, name, quoted, setup, reduce)


def _slurm(job: dict[str, Any], name: str, config: str, setup: str, reduce: str) -> str:
    shards, resumable = int(job["shards"]), RunInterrupted.exit_status
    common = [f"#SBATCH --cpus-per-task={job['cpus']}", f"#SBATCH --mem={job['memory']}"]
    common += [f"#SBATCH --partition={job['partition']}"] if "partition" in job else []
    common += [f"#SBATCH --account={job['account']}"] if "account" in job else []
    common += [f"#SBATCH --gpus={job['gpus']}"] if "gpus" in job else []
    common += [f"#SBATCH {directive}" for directive in job["directives"]]
    header = "\n".join(common)
    single = f"--time={job['time']} --cpus-per-task={job['cpus']} --mem={job['memory']}" + "".join(
        f" --{key}={job[key]}" for key in ("partition", "account") if key in job)
    return f"""#!/bin/bash
# jacengine job array: submit with `bash THIS_FILE` on a SLURM login node.
# 1. init (creates the store once)  2. {shards} shards  3. reductions after every shard.
set -euo pipefail

init=$(sbatch --parsable --job-name={name}-init {single} \\
  --wrap "{_wrap(setup)}jacengine init --config {config}")

array=$(sbatch --parsable --dependency=afterok:${{init}} <<'SHARD'
#!/bin/bash
#SBATCH --job-name={name}
#SBATCH --array=0-{shards - 1}
#SBATCH --time={job['time']}
{header}
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output={name}-%A_%a.log
#SBATCH --signal=B:TERM@{job['requeue_signal_s']}
{setup}
# SIGTERM before the time limit: jacengine stops between blocks and exits {resumable} (resumable).
jacengine compute --config {config} --shard-from-env --no-progress &
worker=$!
trap 'kill -TERM "$worker" 2>/dev/null' TERM
status=0; wait "$worker" || status=$?
if [ "$status" -gt 128 ]; then status=0; wait "$worker" || status=$?; fi
if [ "$status" -eq {resumable} ]; then
  scontrol requeue "${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}"
fi
exit "$status"
SHARD
)

sbatch --parsable --dependency=afterok:${{array}} --job-name={name}-reduce {single} \\
  --wrap "{_wrap(setup)}{reduce}"
echo "submitted init ${{init}}, shards ${{array}}; progress: jacengine status --config {config} --shards {shards}"
"""


def _pbs(job: dict[str, Any], name: str, config: str, setup: str, reduce: str) -> str:
    shards, resumable = int(job["shards"]), RunInterrupted.exit_status
    select = f"select=1:ncpus={job['cpus']}:mem={job['memory']}" + (f":ngpus={job['gpus']}" if "gpus" in job else "")
    common = [f"#PBS -l {select}", f"#PBS -l walltime={job['time']}"]
    common += [f"#PBS -q {job['partition']}"] if "partition" in job else []
    common += [f"#PBS -A {job['account']}"] if "account" in job else []
    common += [f"#PBS {directive}" for directive in job["directives"]]
    header = "\n".join(common)
    single = f"-l {select} -l walltime={job['time']}" + "".join(
        f" -{flag} {job[key]}" for key, flag in (("partition", "q"), ("account", "A")) if key in job)
    return f"""#!/bin/bash
# jacengine job array: submit with `bash THIS_FILE` on a PBS Pro login node.
# 1. init (creates the store once)  2. {shards} shards  3. reductions after every shard.
set -euo pipefail

init=$(qsub -N {name}-init {single} -- /bin/bash -c "{_wrap(setup)}jacengine init --config {config}")

array=$(qsub -W depend=afterok:${{init}} <<'SHARD'
#!/bin/bash
#PBS -N {name}
#PBS -J 0-{shards - 1}
{header}
#PBS -r y
#PBS -j oe
cd "$PBS_O_WORKDIR"
{setup}
export JACENGINE_SHARD_COUNT={shards}
# PBS sends SIGTERM at the walltime: jacengine stops between blocks and exits {resumable} (resumable).
status=0; jacengine compute --config {config} --shard-from-env --no-progress || status=$?
if [ "$status" -eq {resumable} ]; then
  qrerun "$PBS_JOBID"
fi
exit "$status"
SHARD
)

qsub -N {name}-reduce -W depend=afterok:${{array}} {single} -- /bin/bash -c "{_wrap(setup)}{reduce}"
echo "submitted init ${{init}}, shards ${{array}}; progress: jacengine status --config {config} --shards {shards}"
"""


def _wrap(setup: str) -> str:
    """Setup lines as a prefix of a one-line command inside double quotes."""
    lines = [line for line in setup.splitlines() if line.strip()]
    return "".join(f"{line.replace(chr(34), chr(92) + chr(34))} && " for line in lines)
