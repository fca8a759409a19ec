"""The SLURM profile against a real single-node SLURM (Debian's slurm-wlm + munge, started by tests/slurm/start.sh).

A small part of the demo (the data jobs and one render job) goes through sbatch end to end with
profiles/slurm/config.yaml; only the cluster-specific names are overridden (partition, no account). The node has no
GPUs, so no GPU rule is run here (their `gpu: 1` request is checked on the profile itself). Each SLURM job costs
~10-15 s of status polling, so the run is kept small and bounded with `timeout -k`.
Skipped, with the reason, only where SLURM cannot run at all (no packages and no way to install them).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import Counter

import pytest
import yaml
from conftest import ROOT

SLURM_DIR = ROOT / "tests" / "slurm"
PACKAGES = ["slurm-wlm", "munge"]
TARGETS = ["results/data/pope_sample.parquet", "results/images/pope/original.parquet"]


def _have_slurm() -> bool:
    return all(shutil.which(t) for t in ("munged", "slurmctld", "slurmd", "sbatch", "squeue"))


def _install_slurm() -> str | None:
    """Install the Debian packages when running as root (CI on a fresh machine); the reason when impossible."""
    if _have_slurm():
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "SLURM is not installed and apt-get (as root) is not available: apt-get install slurm-wlm munge"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *PACKAGES]):
        proc = subprocess.run(["timeout", "-k", "10", "900", *cmd], capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            return f"could not install SLURM ({' '.join(cmd)} failed: {proc.stderr.strip()[-300:]})"
    return None if _have_slurm() else "SLURM packages installed but daemons not found on PATH"


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    reason = _install_slurm()
    if reason:
        pytest.skip(reason)
    state = tmp_path_factory.mktemp("slurm_state")
    proc = subprocess.run(["timeout", "-k", "5", "90", "bash", str(SLURM_DIR / "start.sh"), str(state)],
                          capture_output=True, text=True)
    try:
        if proc.returncode != 0:
            logs = "\n".join(f"{p.name}: {p.read_text()[-600:]}" for p in (state / "log").glob("*") if p.is_file())
            pytest.fail(f"SLURM did not start ({proc.returncode}): {proc.stdout}{proc.stderr}\n{logs}")
        env = dict(os.environ, PATH=f"{state / 'bin'}{os.pathsep}{os.environ['PATH']}", OMP_NUM_THREADS="1")
        env.pop("SLURM_CONF", None)
        yield env
    finally:
        subprocess.run(["bash", str(SLURM_DIR / "stop.sh"), str(state)], timeout=60)


def test_profile_shape():
    """Keys the plugin and Snakemake actually read; a GPU asked once (gpu, never gres), attempt-scaled limits."""
    profile = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())
    assert profile["executor"] == "slurm" and profile["slurm-status-command"] == "squeue"
    assert profile["retries"] >= 1
    defaults = dict(item.split("=", 1) for item in profile["default-resources"])
    assert "attempt" in defaults["mem_mb"] and "attempt" in defaults["runtime"]
    for rule in ("infer", "attention", "layer_similarity", "modality_gap"):
        res = profile["set-resources"][rule]
        assert res["gpu"] == 1 and "gres" not in res and "slurm_extra" not in res
        assert "attempt" in str(res["mem_mb"])


def test_demo_part_through_sbatch(slurm, tmp_path):
    cmd = ["timeout", "-k", "10", "420", sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"),
           "--directory", str(tmp_path), "--configfile", str(ROOT / "config.demo.yaml"),
           "--profile", str(ROOT / "profiles" / "slurm"),
           # this test cluster's names instead of a real site's
           "--slurm-no-account", "--default-resources", "slurm_partition=cpu", "mem_mb=1000*attempt",
           "runtime=10*attempt", "--slurm-init-seconds-before-status-checks", "3", "--latency-wait", "5",
           "--slurm-keep-successful-logs", "--jobs", "4", *TARGETS]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=slurm, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"snakemake on SLURM failed ({proc.returncode}):\n{out[-6000:]}"
    for target in TARGETS:
        assert (tmp_path / target).stat().st_size > 0, target
    # every non-local job ran as a SLURM job: one sbatch log per job, each showing the profile's resources applied;
    # the data rules marked `localrule: True` (they download or sample, no cluster needed) ran on the submit host
    ran = Counter((m.group(1) == "local", m.group(2)) for m in re.finditer(r"^(local)?rule (\w+):", out, re.M))
    remote = Counter({rule: n for (local, rule), n in ran.items() if not local and rule != "all"})
    local = {rule for (is_local, rule) in ran if is_local}
    n_jobs = int(re.search(r"(\d+) of \1 steps \(100%\) done", out).group(1))
    assert sum(ran.values()) == n_jobs, (ran, n_jobs)
    assert "sample_pope" in local and "render_variants" in remote, ran
    slurm_logs = tmp_path / "logs" / "slurm"  # rule_<name>/[<wildcards>/]<jobid>.log
    logs = sorted(slurm_logs.rglob("*.log"))
    logged = Counter(p.relative_to(slurm_logs).parts[0].removeprefix("rule_") for p in logs)
    assert logged == remote, (logged, remote)
    for log in logs:
        text = log.read_text()
        assert "slurm_partition=cpu" in text and "mem_mb=1000" in text, log
