"""The supervising side: one fresh subprocess per case, under a memory watchdog and a time limit.

A case whose resident memory passes the cap is killed and recorded as out of memory, so a
baseline that would fill the machine (``batch_jacobian`` at realistic sizes) never takes it down.
After a suite, methods of the same problem are checked against the first reference that
finished (TensorFlow's own Jacobians first, then JAX).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from benchmarks.cases import Case

REFERENCE_ORDER = ("tf-eager", "tf-pfor", "tf-while", "tf-gradient-loop", "tf-causal-blocks", "jax", "numpy-reduce", "jacengine")
POLL_S = 0.05
_ROOT = Path(__file__).resolve().parent.parent


def resident_bytes(pid: int) -> int:
    """Current resident memory of a process, 0 once it is gone."""
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return 0


def run_case(case: Case, memory_cap: int, time_limit: float, gpu_memory_limit: str | None = None) -> dict[str, Any]:
    """Run ``case`` in a fresh ``python -m benchmarks.child`` and return its record."""
    command = [sys.executable, "-m", "benchmarks.child", case.to_json()]
    if gpu_memory_limit:
        command.append(gpu_memory_limit)
    path = os.pathsep.join(filter(None, [str(_ROOT), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=path)
    if case.tf_first:
        env.pop("TF_ENABLE_ONEDNN_OPTS", None)
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=_ROOT)
    verdict: dict[str, str] = {}
    watchdog = threading.Thread(target=_watch, args=(child, memory_cap, started + time_limit, verdict), daemon=True)
    watchdog.start()
    stdout, stderr = child.communicate()
    watchdog.join()
    record: dict[str, Any] = {**json.loads(case.to_json()), "label": case.label,
                              "process_seconds": time.perf_counter() - started}
    if "status" in verdict:
        return {**record, "status": verdict["status"], "error": verdict["error"]}
    lines = stdout.strip().splitlines()
    try:
        return {**record, **json.loads(lines[-1])}
    except (IndexError, json.JSONDecodeError):
        message = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit status {child.returncode}"
        return {**record, "status": "error", "error": message[:300]}


def _watch(child: subprocess.Popen, memory_cap: int, deadline: float, verdict: dict[str, str]) -> None:
    peak = 0
    while child.poll() is None:
        peak = max(peak, resident_bytes(child.pid))
        if peak > memory_cap:
            verdict.update(status="oom", error=f"resident memory passed the cap of {memory_cap / 2**30:.1f} GiB")
        elif time.perf_counter() > deadline:
            verdict.update(status="timeout", error="ran past the time limit")
        if verdict:
            child.kill()
            return
        time.sleep(POLL_S)


def run_cases(cases: list[Case], memory_cap: int, time_limit: float, jobs: int = 1, gpu_memory_limit: str | None = None,
              on_record: Callable[[dict[str, Any]], None] = lambda record: None) -> list[dict[str, Any]]:
    """Every case, ``jobs`` at a time (1 for clean timings), then derived figures and agreement."""
    def one(case: Case) -> dict[str, Any]:
        record = derive(run_case(case, memory_cap, time_limit, gpu_memory_limit))
        on_record(record)
        return record
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        records = list(pool.map(one, cases))
    return check_agreement(records)


def derive(record: dict[str, Any]) -> dict[str, Any]:
    """Entries per second and achieved GFLOP/s from the best time of a finished case."""
    seconds = record.get("steady_seconds") or record.get("first_seconds")
    if record.get("status") != "ok" or not seconds or record["method"] in ("jacengine-reduce", "numpy-reduce"):
        return record
    if record.get("max_lag"):  # a lag window: not the full Jacobian the counts below are of
        return record
    entries = record["batch"] * record["steps"] ** 2 * record["features_in"] * record["features_out"]
    flops = causal_flops(record)
    return {**record, "entries_per_second": entries / seconds, "gflops": flops / seconds / 1e9 if flops else None}


GATES = {"lstm": 4, "gru": 3}


def causal_flops(record: dict[str, Any]) -> float | None:
    """Matrix-multiply flops of the least work that yields J for a one-layer recurrent model:
    one reverse sweep per (sample, output step, output feature) through only the steps it
    depends on, 2 * gates * units * (units + F_in) flops per step. None for other models."""
    gates = GATES.get(record["model"])
    if gates is None:
        return None
    steps, units = record["steps"], record["units"]
    per_step = 2 * gates * units * (units + record["features_in"])
    return record["batch"] * record["features_out"] * steps * (steps + 1) / 2 * per_step


def _method_name(record: dict[str, Any]) -> str:
    how = record.get("engine_method", "auto")
    return record["method"] if how == "auto" else f"{record['method']} {how}"


def check_agreement(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add ``max_abs_diff`` (relative to the reference sample's largest magnitude) and ``reference``."""
    problems: dict[tuple, list[dict[str, Any]]] = {}
    for record in records:
        case = Case(**{k: record[k] for k in Case.__dataclass_fields__ if k in record})
        problems.setdefault(case.problem, []).append(record)
    for group in problems.values():
        finished = [r for r in group if r.get("status") == "ok"]
        # the first finished method in REFERENCE_ORDER; among jacengine's own methods, the first run
        candidates = [r for m in REFERENCE_ORDER for r in finished if r["method"] == m]
        if not candidates:
            continue
        reference = candidates[0]
        ref = reference["sample"]
        scale = max(max(abs(v) for v in ref), 1e-30)
        for record in finished:
            if record is not reference:
                record["reference"] = _method_name(reference)
                record["max_abs_diff"] = max(abs(a - b) for a, b in zip(record["sample"], ref, strict=True)) / scale
    return records


def machine() -> dict[str, Any]:
    """CPU, cores, memory, GPU and library versions, stored with every result."""
    cpuinfo = Path("/proc/cpuinfo")  # the model name; Linux only
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.processor())
    memory = psutil.virtual_memory().total
    gpus = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                          capture_output=True, text=True).stdout.strip() if _has("nvidia-smi") else ""
    versions = {}
    for package in ("jacengine", "tensorflow", "keras", "numpy", "zarr", "dask", "jax"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=_ROOT).stdout.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_bytes": memory, "gpu": gpus or None,
            "python": platform.python_version(), "platform": platform.platform(), "versions": versions,
            "commit": commit or None, "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "0 (jacengine's default)")}


def _has(program: str) -> bool:
    return any(Path(directory, program).exists() for directory in os.environ.get("PATH", "").split(os.pathsep))
