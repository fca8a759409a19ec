"""Shared test fixtures: the library (workflow/lib) and the rule scripts on sys.path, and a helper to run Snakemake in
a scratch folder."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

ROOT = Path(__file__).resolve().parent.parent
LIB = ROOT / "workflow" / "lib"  # the pii package
SCRIPTS = ROOT / "workflow" / "scripts"  # the rule scripts, imported by the tests that call a rule's main
sys.path[:0] = [str(LIB), str(SCRIPTS)]

# Keep the small CPU machine responsive when several torch jobs run side by side.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def assign(frame: pl.DataFrame, **columns) -> pl.DataFrame:
    """``frame`` with columns set: a list, array or Series gives one value per row, anything else the same value for
    every row (a Python int is Int64, as in a pipeline table)."""
    def series(name, value):
        if isinstance(value, (list, tuple, np.ndarray, pl.Series)):
            return pl.Series(name, value)
        return pl.Series(name, [value] * len(frame))
    return frame.with_columns(series(k, v) for k, v in columns.items())


def concat(frames) -> pl.DataFrame:
    """Frames one below the other; columns matched by name, a column of nulls takes the others' type."""
    return pl.concat(list(frames), how="diagonal_relaxed")


def row(frame: pl.DataFrame, **where) -> dict:
    """The first row whose columns equal ``where`` (e.g. ``setting="pii"``), as a dict; a null is NaN."""
    for r in frame.iter_rows(named=True):
        if all(r[k] == v for k, v in where.items()):
            return {k: float("nan") if v is None else v for k, v in r.items()}
    raise KeyError(where)


def run_snakemake(workdir: Path, *args: str, configfile: str | None = "config.demo.yaml", timeout: int = 1200,
                  check: bool = True, project: Path = ROOT) -> subprocess.CompletedProcess:
    """Run the project's Snakefile (or that of a copy of the project) with ``workdir`` as the working directory
    (results/, resources/ go there)."""
    # "--opt=value" form: options taking several values must not swallow the caller's targets.
    cmd = [sys.executable, "-m", "snakemake", "-s", str(project / "Snakefile"), f"--directory={workdir}",
           "--cores=2", "--quiet=rules"]
    if configfile:
        cmd.append(f"--configfile={project / configfile}")
    cmd += list(args)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def copy_project(dest: Path) -> Path:
    """A copy of the workflow (Snakefile, configs, workflow/, envs/), e.g. to make its scripts newer than a run's outputs
    without touching the checkout that other tests run."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "config.yaml", "config.demo.yaml"):
        shutil.copy2(ROOT / name, dest / name)
    for name in ("workflow", "envs"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def planned_rules(dry_run_stdout: str) -> list[str]:
    """The rule of every job a dry run plans (run it with --quiet=progress so that the job blocks are shown)."""
    return [rule for rule in re.findall(r"^rule (\w+):", dry_run_stdout, re.M) if rule != "all"]


def planned_outputs(dry_run_stdout: str) -> list[str]:
    """Every output path of the jobs a dry run plans (run with --quiet=progress)."""
    return [path for line in re.findall(r"^\s+output: (.*)$", dry_run_stdout, re.M) for path in line.split(", ")]


def free_port() -> int:
    """A free TCP port on loopback, for a server a test starts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float, name: str = "the test server") -> None:
    """Wait until ``proc`` accepts connections on 127.0.0.1:``port``; fail if it exits or the time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with code {proc.returncode}") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not open port {port} in {timeout:.0f} s") from None
            time.sleep(0.2)


def stop_process(proc: subprocess.Popen) -> None:
    """Stop a server the test started, by its own handle (its pid): terminate, then kill if it hangs."""
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def merge_configs(base: dict, over: dict) -> dict:
    """``base`` updated by ``over`` the way Snakemake merges --configfile files (nested keys recursively); a new
    dict, the inputs unchanged."""
    out = dict(base)
    for key, value in over.items():
        out[key] = merge_configs(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) \
            else value
    return out


def config_paths(node, prefix=()):
    """Every key path of a nested config (dict keys and list indices), for fuzzing one value at a time."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield prefix + (k,)
            yield from config_paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield prefix + (i,)
            yield from config_paths(v, prefix + (i,))


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    """The whole offline demo DAG, run once per test session (4-6 minutes on 2 cores); tests that only read
    its outputs share it instead of rebuilding parts of it. Do not modify files in it: copy first."""
    if os.environ.get("PII_DEMO_RUN"):  # a developer's finished demo run, reused as it is (never modified)
        return Path(os.environ["PII_DEMO_RUN"])
    workdir = tmp_path_factory.mktemp("demo_run")
    run_snakemake(workdir, timeout=3300)
    return workdir
