"""Environments: the conda files (envs/*.yaml, for `--sdm conda`) pinned exactly as requirements.txt pins them, and
run.sh's venvs."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT


def pins(lines) -> dict[str, str]:
    out = {}
    for line in lines:
        m = re.match(r"^\s*([A-Za-z0-9_.-]+)==([^\s#]+)", line)
        if m:
            out[m.group(1).lower()] = m.group(2)
    return out


def test_env_files_match_requirements():
    required = pins((ROOT / "requirements.txt").read_text().splitlines())
    envs = sorted((ROOT / "envs").glob("*.yaml"))
    assert {p.stem for p in envs} >= {"data", "inference", "scoring", "analysis", "report"}
    for path in envs:
        spec = yaml.safe_load(path.read_text())
        pip = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict))
        got = pins(pip)
        assert len(got) == len(pip), f"{path.name}: every pip entry must be pinned with =="
        if path.stem == "vllm":  # vLLM pins its own torch and transformers; its release is run.sh's
            assert f"VLLM_CUDA=vllm=={got.pop('vllm')}" in (ROOT / "run.sh").read_text()
            assert not {"torch", "transformers"} & set(got), "envs/vllm.yaml: vllm pins torch and transformers"
        for name, version in got.items():
            assert required.get(name) == version, f"{path.name}: {name}=={version}, requirements.txt has {required.get(name)}"
        # every stage script imports pipeline_io (pyarrow, pyyaml)
        assert {"pyarrow", "pyyaml"} <= set(got), path.name
        assert "python=3.11" in spec["dependencies"]


@pytest.mark.parametrize("step", ["install", "vllm-install"])
def test_a_venv_without_pip_is_one_line_saying_to_delete_it(tmp_path, step):
    """A venv made while ensurepip was missing has a python but no pip; run.sh would fail on bin/pip."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    env = {**os.environ, "PII_VENV" if step == "install" else "PII_VLLM_VENV": str(venv)}
    proc = subprocess.run(["bash", str(ROOT / "run.sh"), step], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines == [f"run.sh: {venv} has no pip (made without ensurepip?); delete it (rm -rf {venv}) and run this "
                     "again"], proc.stderr
