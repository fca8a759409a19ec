"""Conda environment files (envs/*.yaml, for `--sdm conda`): pinned exactly as requirements.txt pins them."""

from __future__ import annotations

import re

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
