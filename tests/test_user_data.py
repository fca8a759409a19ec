"""A user's own data is only ever read: COCO root, POPE file and model folders that exist before a run are never
rule outputs, so no rerun trigger, script release or download setting can delete, rewrite or re-fetch them.

The user's data here is a copy of the demo run's mini-COCO, POPE file and tiny checkpoints, dated 2001 (older than
every script, which is what made Snakemake rerun and so first delete them before). Everything goes through the
Snakemake CLI.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import (
    ROOT,
    copy_project,
    free_port,
    planned_outputs,
    run_snakemake,
    stop_process,
    wait_for_port,
)

OLD = 978307200  # 2001-01-01: older than every file of the workflow
# model entry -> the demo folder of its family (both llava entries read the same user folder)
MODELS = {"qwen2_5_vl": "qwen2_5_vl", "llava_1_5": "llava", "llava_1_5_pad": "llava", "instructblip": "instructblip",
          "idefics3": "hf"}
# The data stage and rendering (what reads the COCO root and the POPE file, whose rules the download setting
# changes) and one inference job per task (what reads the model folders, the same rules with downloads on or off).
DATA_TARGETS = ["results/data/pope_sample.parquet", "results/data/caption_sample.parquet",
                "results/images/pope/contact_sheet.png", "results/images/caption/contact_sheet.png"]
TARGETS = [*DATA_TARGETS, "results/inference/pope/llava_1_5/hybrid/r0.parquet",
           "results/inference/caption/qwen2_5_vl/baseline/r0.parquet"]
# Where rules may write (logs/ and .snakemake/ are Snakemake's, not rule outputs).
PIPELINE_FOLDERS = ("results/", "resources/downloads/", "resources/demo/")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_user_data(demo_run: Path, dest: Path) -> Path:
    """A user's COCO root, POPE file and model folders (copied from the demo run), all dated 2001."""
    shutil.copytree(demo_run / "resources/demo/coco", dest / "coco")
    (dest / "pope").mkdir(parents=True)
    shutil.copy(demo_run / "results/pope_built/coco_pope_adversarial.json", dest / "pope/adversarial.jsonl")
    for family in sorted(set(MODELS.values())):
        shutil.copytree(demo_run / "resources/demo/models" / family, dest / "models" / family)
    for path in [dest, *dest.rglob("*")]:
        os.utime(path, (OLD, OLD))
    return dest


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every file and folder under ``folder``: content hash (files) and modification time."""
    return {str(p.relative_to(folder)): (sha256(p) if p.is_file() else None, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


def user_config(path: Path, user: Path, download: bool, url: str = "http://127.0.0.1:9", **pope) -> Path:
    config = yaml.safe_load((ROOT / "config.demo.yaml").read_text())
    config["data"]["coco"].update(root=str(user / "coco"), download=download,
                                  annotations_url=f"{url}/annotations_trainval2017.zip",
                                  image_url=url + "/{split}/{file_name}")
    pope_file = user / "pope/adversarial.jsonl"
    config["data"]["pope"] = {"file": str(pope_file), "url": f"{url}/pope.json", "sha256": sha256(pope_file),
                              **pope}
    config["data"]["demo"] = None  # nothing is built: every input is the user's
    for name, family in MODELS.items():
        config["models"][name]["path"] = str(user / "models" / family)
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def request_log(tmp_path):
    """A loopback HTTP server that serves nothing and logs every request it gets; stopped by its handle."""
    served = tmp_path / "served"
    served.mkdir()
    log_path = tmp_path / "server.log"
    port = free_port()
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory",
                                 str(served), str(port)], stdout=log, stderr=log)
    try:
        wait_for_port(port, proc, timeout=15, name="the test HTTP server")
        yield f"http://127.0.0.1:{port}", log_path
    finally:
        stop_process(proc)


@pytest.mark.slow
@pytest.mark.parametrize("download,targets", [(False, TARGETS), (True, DATA_TARGETS)],
                         ids=["downloads-off", "downloads-on"])
def test_user_files_are_only_read(demo_run, tmp_path, request_log, download, targets):
    url, server_log = request_log
    user = make_user_data(demo_run, tmp_path / "user")
    before = snapshot(user)
    config = user_config(tmp_path / "config.yaml", user, download, url)
    work = tmp_path / "work"
    run_snakemake(work, *targets, configfile=str(config), timeout=900)
    # A new release: every file of the workflow newer than the user's data and than the outputs. The stages
    # rerun (their code changed); the user's files must not be touched.
    release = copy_project(tmp_path / "release")
    for path in release.rglob("*"):
        os.utime(path)
    dry = run_snakemake(work, "-n", "--quiet=progress", *targets, configfile=str(config), project=release)
    assert "sample_pope" in dry.stdout and not any(str(user) in p for p in planned_outputs(dry.stdout))
    run_snakemake(work, *targets, configfile=str(config), timeout=900, project=release)
    assert snapshot(user) == before
    assert not (work / "resources").exists()  # nothing was fetched or built
    requests = [line for line in server_log.read_text().splitlines() if "GET" in line]
    assert requests == []


def test_user_pope_file_off_the_pin_is_reported_not_replaced(demo_run, tmp_path):
    user = make_user_data(demo_run, tmp_path / "user")
    before = snapshot(user)
    pinned = yaml.safe_load((ROOT / "config.yaml").read_text())["data"]["pope"]["sha256"]
    config = user_config(tmp_path / "config.yaml", user, True, sha256=pinned)
    work = tmp_path / "work"
    proc = run_snakemake(work, "results/data/pope_sample.parquet", configfile=str(config), timeout=300,
                         check=False)
    assert proc.returncode != 0
    pope = user / "pope/adversarial.jsonl"
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if "differs from the pinned" in line]
    assert lines, proc.stderr[-3000:]
    assert str(pope) in lines[0] and sha256(pope) in lines[0] and pinned in lines[0]
    assert "data.pope.sha256: null" in lines[0]
    assert snapshot(user) == before
    assert not (work / "results/data/pope_sample.parquet").exists()


@pytest.mark.parametrize("config_name", ["config.yaml", "config.demo.yaml", "user"])
def test_no_rule_output_outside_the_pipeline_folders(demo_run, tmp_path, config_name):
    """The audit: every output of every job, planned from scratch, lies in a folder the pipeline owns."""
    if config_name == "user":
        configfile = str(user_config(tmp_path / "config.yaml", make_user_data(demo_run, tmp_path / "user"), True))
    else:
        configfile = config_name
    proc = run_snakemake(tmp_path / "work", "-n", "--forceall", "--quiet=progress", configfile=configfile,
                         timeout=300)
    outputs = planned_outputs(proc.stdout)
    assert len(outputs) > 40
    strays = [p for p in outputs if not p.startswith(PIPELINE_FOLDERS)]
    assert strays == []


def test_pope_download_is_per_pin(tmp_path):
    """A new pinned POPE (another commit, another sha256) is fetched anew instead of reusing the old file."""
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    proc = run_snakemake(tmp_path, "-n", "--quiet=progress", "results/data/pope_sample.parquet",
                         configfile="config.yaml", timeout=300)
    pin = config["data"]["pope"]["sha256"]
    assert f"resources/downloads/pope/{pin[:16]}/coco_pope_adversarial.json" in planned_outputs(proc.stdout)


@pytest.mark.parametrize("key, value, expected", [
    (("seed",), 2**63 - 1, r"seed: 9223372036854775807 is greater than the maximum of 2147483647"),
    (("settings", "hybrid", "text_prompt"), "Answer: {qestion}",
     r"settings\.hybrid\.text_prompt: unknown placeholder\(s\) \{qestion\} in 'Answer: \{qestion\}'"),
    (("data", "coco", "root"), "no/such/coco", r"data\.coco\.root: folder 'no/such/coco' does not exist"),
    (("data", "pope", "file"), "no/such/pope.json", r"data\.pope\.file: 'no/such/pope\.json' does not exist"),
])
def test_config_rejects_before_any_job(tmp_path, key, value, expected):
    config = yaml.safe_load((ROOT / "config.demo.yaml").read_text())
    node = config
    for part in key[:-1]:
        node = node.setdefault(part, {})
    node[key[-1]] = value
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = run_snakemake(tmp_path / "work", "-n", configfile=str(path), timeout=120, check=False)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("Config error:")]
    assert len(lines) == 1 and re.search(expected, lines[0]), proc.stderr[-2000:]
