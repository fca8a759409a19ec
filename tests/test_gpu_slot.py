"""GPU slot locks: each concurrent GPU job gets its own device, locks die with their process."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import gpu_slot
import pytest
from pipeline_io import PipelineError


def test_jobs_get_distinct_devices_then_reuse_freed_one(tmp_path):
    envs = [{} for _ in range(3)]
    slots = [gpu_slot.claim_gpu(env=e, n_gpus=3, lock_dir=tmp_path, wait_s=0) for e in envs]
    assert sorted(e["CUDA_VISIBLE_DEVICES"] for e in envs) == ["0", "1", "2"]
    slots[1].release()
    env = {}
    gpu_slot.claim_gpu(env=env, n_gpus=3, lock_dir=tmp_path, wait_s=0)
    assert env["CUDA_VISIBLE_DEVICES"] == "1"


def test_all_busy_fails_with_hint(tmp_path):
    gpu_slot.claim_gpu(env={}, n_gpus=1, lock_dir=tmp_path, wait_s=0)
    with pytest.raises(PipelineError, match="resources gpu=N"):
        gpu_slot.claim_gpu(env={}, n_gpus=1, lock_dir=tmp_path, wait_s=0.2, poll_s=0.05)


def test_user_restriction_and_skips(tmp_path):
    env = {"CUDA_VISIBLE_DEVICES": "2,5"}
    gpu_slot.claim_gpu(env=env, n_gpus=8, lock_dir=tmp_path, wait_s=0)
    assert env["CUDA_VISIBLE_DEVICES"] == "2"
    env2 = {"CUDA_VISIBLE_DEVICES": "2,5"}
    gpu_slot.claim_gpu(env=env2, lock_dir=tmp_path, wait_s=0)
    assert env2["CUDA_VISIBLE_DEVICES"] == "5"
    # SLURM grants devices itself; no GPU means CPU; opting out leaves the environment alone.
    for env in ({"SLURM_JOB_ID": "7", "CUDA_VISIBLE_DEVICES": "0"}, {"PII_GPU_SLOT": "off"}, {}):
        before = dict(env)
        assert gpu_slot.claim_gpu(env=env, n_gpus=0, lock_dir=tmp_path, wait_s=0) is None
        assert env == before


def test_lock_released_when_holder_process_dies(tmp_path):
    holder = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(gpu_slot.__file__.rsplit('/', 1)[0])!r})
        import gpu_slot
        from pathlib import Path
        env = {{}}
        gpu_slot.claim_gpu(env=env, n_gpus=2, lock_dir=Path({str(tmp_path)!r}), wait_s=0)
        print(env["CUDA_VISIBLE_DEVICES"], flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "0"
        env = {}
        gpu_slot.claim_gpu(env=env, n_gpus=2, lock_dir=tmp_path, wait_s=0)
        assert env["CUDA_VISIBLE_DEVICES"] == "1"  # device 0 is held by the other process
        gpu_slot._HELD[-1].release()
    finally:
        proc.kill()
        proc.wait()
    env = {}
    gpu_slot.claim_gpu(env=env, n_gpus=2, lock_dir=tmp_path, wait_s=0)
    assert env["CUDA_VISIBLE_DEVICES"] == "0"  # freed by the kill, no stale lock
