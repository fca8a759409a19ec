"""GPU slot locks: each concurrent GPU job gets its own device, locks die with their process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from conftest import LIB

from pii.core import gpu_slot
from pii.core.stage import PipelineError


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
        sys.path.insert(0, {str(LIB)!r})
        from pii.core import gpu_slot
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


HOLDER = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, sys.argv[1])
    from pii.core import gpu_slot
    env = {"CUDA_VISIBLE_DEVICES": sys.argv[2]}  # no PII_GPU_LOCK_DIR: the default, machine-wide folder
    slot = gpu_slot.claim_gpu(env=env, wait_s=0)
    print(env["CUDA_VISIBLE_DEVICES"], slot.lock_path, flush=True)
    time.sleep(60)
""")


def test_two_checkouts_get_different_gpus(tmp_path):
    """Two jobs started from two project folders (two checkouts on one workstation) must not share a GPU: the
    locks live in one folder per machine and user, not under each project's .snakemake/."""
    # device names unique to this test, so that nothing else using the real lock folder is disturbed
    tag = f"test{os.getpid()}x{uuid.uuid4().hex[:8]}"
    devices = f"{tag}a,{tag}b"
    procs, claimed, lock_files = [], [], []
    try:
        for checkout in ("checkout1", "checkout2"):
            cwd = tmp_path / checkout
            cwd.mkdir()
            procs.append(subprocess.Popen([sys.executable, "-c", HOLDER, str(LIB), devices], cwd=cwd,
                                          stdout=subprocess.PIPE, text=True))
            device, lock = procs[-1].stdout.readline().split()
            claimed.append(device)
            lock_files.append(Path(lock))
        assert claimed == [f"{tag}a", f"{tag}b"]
        assert lock_files[0].parent == lock_files[1].parent == gpu_slot.default_lock_dir({})
        assert not (tmp_path / "checkout1" / ".snakemake").exists()
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        for lock in lock_files:
            lock.unlink(missing_ok=True)


def test_lock_dir_override(tmp_path):
    env = {"PII_GPU_LOCK_DIR": str(tmp_path / "locks")}
    slot = gpu_slot.claim_gpu(env=env, n_gpus=1, wait_s=0)
    assert env["CUDA_VISIBLE_DEVICES"] == "0" and slot.lock_path == tmp_path / "locks" / "gpu0.lock"
    slot.release()
    assert gpu_slot.default_lock_dir({}) == Path("/tmp") / f"pii-gpu-locks-{os.getuid()}"


def test_a_waiting_job_says_so_then_once_a_minute(tmp_path):
    """While every device is taken the log says so when the wait starts and then every log_every_s, and the
    device line says how long it waited."""
    import logging
    import threading

    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    holder = gpu_slot.try_lock("0", tmp_path)
    threading.Timer(1.0, holder.release).start()
    env = {"CUDA_VISIBLE_DEVICES": "0"}
    gpu_slot.log.addHandler(handler)
    level = gpu_slot.log.level
    gpu_slot.log.setLevel(logging.INFO)  # setLevel, not .level: the logger caches its level checks
    try:
        gpu_slot.claim_gpu(env=env, lock_dir=tmp_path, wait_s=30, poll_s=0.05, log_every_s=0.3)
    finally:
        gpu_slot.log.removeHandler(handler)
        gpu_slot.log.setLevel(level)
    waits = [m for m in messages if "are taken by other jobs" in m]
    assert 3 <= len(waits) <= 5, messages  # at 0, 0.3, 0.6, 0.9 s
    assert waits[0].startswith(f"gpu_slot: all 1 visible GPU(s) ['0'] are taken by other jobs (locks in {tmp_path}); "
                               "waiting, at most 30 s in all")
    assert "for 0 s so far" in waits[1] or "for 1 s so far" in waits[1]
    used = [m for m in messages if "using GPU" in m]
    assert len(used) == 1 and used[0].endswith("after waiting 1 s") and env["CUDA_VISIBLE_DEVICES"] == "0"
