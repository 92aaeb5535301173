"""Config files, shard selection from job-array variables, job scripts (golden files), jobqueue."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from jacengine.cli import main
from jacengine.errors import InputError
from jacengine.executors.shards import parse_shard, shard_from_env
from jacengine.jobs.config import load_config
from jacengine.jobs.jobqueue import jobqueue_options
from jacengine.jobs.scripts import render_script
from jacengine.options import RunOptions

GOLDEN = Path(__file__).parent / "golden"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_config_resolves_paths_and_selections_and_flags_override(tmp_path, monkeypatch) -> None:
    """File over RunOptions' defaults, flags over the file: through click's default_map, as a
    user runs it (the API call is captured instead of computed)."""
    for name in ("m.keras", "x.npy"):
        (tmp_path / name).write_bytes(b"")
    config = write(tmp_path / "job.toml", 'model = "m.keras"\ninputs = "x.npy"\nstore = "out/j.zarr"\n'
                                         'budget = "4GiB"\nt_out = "0:50"\nf_in = [0, 2]\ncausal = false\n')
    loaded = load_config(config)
    assert loaded.model == str(tmp_path / "m.keras") and loaded.store == str(tmp_path / "out" / "j.zarr")
    assert loaded.options() == RunOptions(budget="4GiB", t_out=slice(0, 50), f_in=(0, 2), causal=False)
    calls = []
    monkeypatch.setattr("jacengine.api.compute", lambda model, inputs, store, **kw: calls.append((model, store, kw)))
    result = CliRunner().invoke(main, ["compute", "--config", str(config), "--budget", "1GiB", "--f-in", "1"])
    assert calls, result.output
    model, store, keywords = calls[0]
    assert model == str(tmp_path / "m.keras") and store == str(tmp_path / "out" / "j.zarr")
    assert keywords["options"] == RunOptions(budget="1GiB", t_out=slice(0, 50), f_in=1, causal=False)  # flags win


def test_run_options_refuse_bad_values_early() -> None:
    with pytest.raises(InputError, match=r"method='backward' \(--method\) is not one of"):
        RunOptions(method="backward")
    with pytest.raises(InputError, match=r"max_lag \(--max-lag\) must be a positive integer"):
        RunOptions(max_lag=0)
    with pytest.raises(InputError, match="apply to the dask executor"):
        RunOptions(workers=2)
    with pytest.raises(InputError, match="unknown setting"):
        RunOptions.from_mapping({"budgte": "1GiB"})
    assert RunOptions.from_mapping({"causal": "TRUE", "t_out": "1,5"}) == RunOptions(causal=True, t_out=(1, 5))


def test_config_refuses_unknown_settings(tmp_path) -> None:
    with pytest.raises(InputError, match="unknown setting.*budgte"):
        load_config(write(tmp_path / "a.toml", 'budgte = "1GiB"\n'))
    with pytest.raises(InputError, match=r"unknown key.*shard.*\[job\]"):
        load_config(write(tmp_path / "b.toml", "[job]\nshard = 3\n"))
    with pytest.raises(InputError, match="not valid TOML"):
        load_config(write(tmp_path / "c.toml", "model = \n"))


def test_shard_from_slurm_and_pbs_variables() -> None:
    assert parse_shard("1/4") == (1, 4)
    assert shard_from_env({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4"}) == (3, 4)
    assert shard_from_env({"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "1"}) == (3, 4)
    assert shard_from_env({"PBS_ARRAY_INDEX": "2", "JACENGINE_SHARD_COUNT": "3"}) == (2, 3)
    with pytest.raises(InputError, match="JACENGINE_SHARD_COUNT"):
        shard_from_env({"PBS_ARRAY_INDEX": "2"})
    with pytest.raises(InputError, match="job-array task"):
        shard_from_env({})
    for bad, message in (("4/4", "out of range"), ("x", "I/N"), ("0/0", "at least 1")):
        with pytest.raises(InputError, match=message):
            parse_shard(bad)


@pytest.mark.parametrize("scheduler", ["slurm", "pbs"])
def test_job_script_matches_golden_file(scheduler: str) -> None:
    config = load_config(GOLDEN / "job.toml")
    rendered = render_script(scheduler, config).replace(str(config.path), "CONFIG").replace(config.store, "STORE")
    # the here-document's delimiter hashes the shard script, which holds this checkout's path
    rendered = re.sub(r"JACENGINE_SHARD_[0-9A-F]{16}", "JACENGINE_SHARD_HASH", rendered)
    assert rendered == (GOLDEN / f"{scheduler}.sh").read_text()


@pytest.mark.parametrize("scheduler", ["slurm", "pbs"])
def test_no_setup_line_can_end_the_shard_here_document(scheduler: str, tmp_path) -> None:
    """The delimiter is a hash of the shard script, so a setup line of the old fixed delimiter
    stays inside the document, and the delimiter appears only where it opens and closes it."""
    config = load_config(write(tmp_path / "j.toml", 'store = "j.zarr"\n[job]\nshards = 2\ntime = "01:00:00"\n'
                                                    'setup = ["SHARD", "EOF"]\n'))
    lines = render_script(scheduler, config).splitlines()
    delimiter = re.search(r"<<'(JACENGINE_SHARD_[0-9A-F]{16})'", "\n".join(lines)).group(1)
    closing = [i for i, line in enumerate(lines) if line == delimiter]
    assert len(closing) == 1 and lines.index("SHARD") < closing[0] and lines[closing[0] - 1] == 'exit "$status"'


def test_job_script_needs_shards_and_time(tmp_path) -> None:
    config = load_config(write(tmp_path / "j.toml", 'store = "j.zarr"\n'))
    with pytest.raises(InputError, match="--shards N --time"):
        render_script("slurm", config)
    assert "#SBATCH --array=0-1" in render_script("slurm", config, shards=2, time="01:00:00")


def test_jobqueue_options_size_tensorflow_threads_and_need_resources() -> None:
    options, jobs = jobqueue_options({"cores": 8, "memory": "32GiB", "walltime": "02:00:00", "jobs": 3, "processes": 2})
    assert jobs == 3 and options["processes"] == 2 and "export TF_NUM_INTRAOP_THREADS=4" in options["job_script_prologue"]
    with pytest.raises(InputError, match="cores and memory"):
        jobqueue_options({"walltime": "01:00:00"})


def test_slurm_cluster_job_script_from_config() -> None:
    dask_jobqueue = pytest.importorskip("dask_jobqueue")
    options, _ = jobqueue_options({"cores": 4, "memory": "16GiB", "walltime": "02:00:00", "queue": "long", "account": "lab"})
    with dask_jobqueue.SLURMCluster(**options) as cluster:
        script = cluster.job_script()
    for line in ("#SBATCH --cpus-per-task=4", "#SBATCH -p long", "#SBATCH -A lab", "#SBATCH -t 02:00:00",
                 "export TF_NUM_INTRAOP_THREADS=4"):
        assert line in script, script


HOSTILE_REFUSED = {
    "time": '"1:00:00 $(touch {mark})"',
    "memory": '"16G\\n#SBATCH --wrap=touch"',
    "partition": '"a;touch {mark}"',
    "account": '"`touch {mark}`"',
    "gpus": '"1 && touch {mark}"',
    "cpus": '"4$(touch {mark})"',
    "directives": '["--x=$(touch {mark})"]',
    "setup": '["true\\nSHARD\\ntouch {mark}"]',
}


@pytest.mark.parametrize("key", sorted(HOSTILE_REFUSED))
def test_hostile_job_values_are_refused_with_what_is_expected(key: str, tmp_path) -> None:
    value = HOSTILE_REFUSED[key].format(mark=tmp_path / "MARK")
    job = {"shards": "2", "time": '"01:00:00"', key: value}
    lines = "".join(f"{name} = {text}\n" for name, text in job.items())
    config = load_config(write(tmp_path / "j.toml", f'store = "j.zarr"\n[job]\n{lines}'))
    with pytest.raises(InputError, match=rf"{key.rstrip('s')}|newline") as refused:
        render_script("slurm", config)
    print(f"{key} = {value}: {refused.value}")  # the closing note quotes these


STUB = """#!/bin/bash
# a stand-in for {name}: records its arguments, prints a job id, and runs what the job would run
log="$STUB_LOG/{name}.$RANDOM"
printf '%s\\n' "$@" "in_job=${{IN_JOB:-0}}" > "$log"
{run}
echo 4242
"""
RUN_JOB = {
    "sbatch": """wrap=""; prev=""; for a in "$@"; do [ "$prev" = "--wrap" ] && wrap="$a"; prev="$a"; done
if [ -n "$wrap" ]; then IN_JOB=1 bash -c "$wrap"; else IN_JOB=1 bash -s < /dev/stdin > /dev/null; fi""",
    "qsub": """if [ "${@: -3:1}" = "/bin/bash" ]; then IN_JOB=1 "${@: -3}"; else IN_JOB=1 bash -s < /dev/stdin > /dev/null; fi""",
    "jacengine": "",
}


@pytest.mark.parametrize("scheduler", ["slurm", "pbs"])
def test_hostile_paths_run_nothing_at_submission_or_in_the_job(scheduler: str, tmp_path) -> None:
    """A store and a config folder named with command substitutions, rendered and run with stub
    scheduler commands on PATH (which also run the job's commands, with a stub jacengine): no
    marker file appears, and jacengine receives the names literally."""
    import os
    import subprocess

    folder = tmp_path / "cfg$(touch MARK1)`touch MARK2`"
    folder.mkdir()
    store = "a$(touch MARK3);touch MARK4.zarr"
    config = load_config(write(folder / "j.toml", f"store = '{store}'\n[reduce]\nwindow = \"0:10'; touch MARK5; '\"\n"
                                                  "[job]\nshards = 2\ntime = \"01:00:00\"\nsetup = [\"true\", \"SHARD\"]\n"))
    stubs, logs = tmp_path / "stubs", tmp_path / "logs"
    stubs.mkdir(), logs.mkdir()
    for name, run in RUN_JOB.items():
        (stubs / name).write_text(STUB.format(name=name, run=run))
        (stubs / name).chmod(0o755)
    (stubs / "SHARD").write_text("#!/bin/sh\n")  # a setup line that once ended the shard's here-document
    (stubs / "SHARD").chmod(0o755)
    script = tmp_path / "submit.sh"
    script.write_text(render_script(scheduler, config))
    env = dict(os.environ, PATH=f"{stubs}:{os.environ['PATH']}", STUB_LOG=str(logs))
    done = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=60)
    assert done.returncode == 0, done.stderr
    assert not list(tmp_path.rglob("MARK*")), "a hostile value ran as a command"
    calls = [path.read_text().splitlines() for path in logs.glob("jacengine.*")]
    assert sorted(call[0] for call in calls) == ["compute", "init", "reduce"]  # init, one shard, the reductions
    assert all(call[-1] == "in_job=1" for call in calls), "jacengine ran at submission, not in a job"
    assert all(str(folder / "j.toml") in call for call in calls if call[0] != "reduce")
    reduce = next(call for call in calls if call[0] == "reduce")
    assert str(folder / store) in reduce and "0:10'; touch MARK5; '" in reduce


@pytest.mark.parametrize("key", ["trust_model = true", 'scheduler = "tcp://10.0.0.1:8786"'])
def test_a_config_file_cannot_trust_a_model_or_send_work_away(key: str, tmp_path) -> None:
    with pytest.raises(InputError, match="only from the command line or the Python API"):
        load_config(write(tmp_path / "j.toml", f'store = "j.zarr"\n{key}\n'))


@pytest.mark.parametrize("command", ["plan", "compute", "init"])
def test_an_import_path_in_a_config_file_runs_only_with_trust(command: str, tmp_path, monkeypatch) -> None:
    """A shared config file naming a module that runs code on import: refused before the import
    (the module is importable, so only the refusal keeps the marker from appearing)."""
    import numpy as np

    (tmp_path / "evilcfgmod.py").write_text(f"import pathlib\npathlib.Path({str(tmp_path / 'MARK')!r}).write_text('ran')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    np.save(tmp_path / "x.npy", np.zeros((1, 4, 1), dtype="float32"))
    config = write(tmp_path / "c.toml", 'model = "evilcfgmod:model"\ninputs = "x.npy"\nstore = "j.zarr"\n')
    extra = ["--out", str(tmp_path / "j.zarr")] if command != "plan" else []
    result = CliRunner().invoke(main, [command, "--config", str(config), *extra])
    assert result.exit_code == 2 and "--trust-model" in result.output, result.output
    assert not (tmp_path / "MARK").exists()


def test_a_jobqueue_cluster_refuses_clients_without_its_certificate(tmp_path) -> None:
    """The cluster `--cluster slurm` starts (no jobs asked for, so nothing is submitted): TLS, its
    certificate files private to the user in the shared folder, and a client without the
    certificate can neither connect nor run code in the scheduler."""
    import os
    import stat

    pytest.importorskip("dask_jobqueue")
    from distributed import Client
    from distributed.security import Security

    from jacengine.jobs.jobqueue import jobqueue_cluster

    marker = tmp_path / "MARK"
    with jobqueue_cluster("slurm", {"cores": 1, "memory": "1GiB", "jobs": 0}, tmp_path) as cluster:
        address = cluster.scheduler_address
        assert address.startswith("tls://") and not address.startswith("tls://0.0.0.0")
        files = list(tmp_path.glob(".dask-jobqueue.worker.*"))
        assert files and all(stat.S_IMODE(os.stat(f).st_mode) == 0o600 for f in files)
        # an attacker's own certificate (another authority), and plain TCP
        for anonymous, security in ((address, Security.temporary()), (address.replace("tls://", "tcp://"), None)):
            with pytest.raises((OSError, TimeoutError)):
                with Client(anonymous, security=security, timeout=3) as client:
                    client.run_on_scheduler(lambda: marker.write_text("ran"))
        with Client(cluster, timeout=10) as client:  # with the certificate
            assert client.run_on_scheduler(lambda: 42) == 42
    assert not marker.exists()
    with pytest.raises(InputError, match="always use TLS"):
        jobqueue_options({"cores": 1, "memory": "1GiB", "security": False})
