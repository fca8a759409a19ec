"""Give each GPU job of a local (workstation) run its own device.

Snakemake counts the ``gpu`` resource (``--resources gpu=N`` in profiles/workstation) so that at most N GPU jobs
run at once, but it never tells a job *which* device to use: every job would land on device 0. A GPU stage script
therefore has ``claim_gpu()`` called once, after its log is set up and before anything touches CUDA
(``import torch`` alone is fine; ``torch.cuda.*`` calls are not), which ``stage.run_main`` does::

    if "snakemake" in globals():
        run_main(main, snakemake, gpu=True)

``claim_gpu`` takes an exclusive ``flock`` on ``gpu<index>.lock`` for the first free device among the visible ones
and sets ``CUDA_VISIBLE_DEVICES`` to it. The lock folder is one per machine and user, not per project folder, so
that two checkouts (or two working directories) running at once on one workstation do not both take GPU 0:
``$PII_GPU_LOCK_DIR`` when set, otherwise ``/tmp/pii-gpu-locks-<uid>`` (a fixed path: ``$TMPDIR`` or
``$XDG_RUNTIME_DIR`` may differ between two shells of the same user). The lock belongs to the process: it is
released when the job exits, crashes or is killed, so no stale lock survives a failed run. Nothing happens when

- the job runs under SLURM (``SLURM_JOB_ID`` set): SLURM already confines the job to the GPUs it granted;
- ``PII_GPU_SLOT=off`` is set (manage devices yourself);
- no GPU is visible (CPU run, the demo): the job runs on the CPU as before.

Devices are the entries of ``CUDA_VISIBLE_DEVICES`` when the user set it (e.g. ``2,3`` restricts the run to
those two cards), otherwise ``0 .. n-1`` with ``n`` from ``nvidia-smi -L``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pii.core.stage import PipelineError, log

LOCK_DIR_ENV = "PII_GPU_LOCK_DIR"

# Locks held by this process (the open files keep the flocks alive until the process exits).
_HELD: list[GpuSlot] = []


@dataclass
class GpuSlot:
    device: str  # the device id as the CUDA driver knows it (an index or a UUID from CUDA_VISIBLE_DEVICES)
    lock_path: Path
    _fd: int

    def release(self) -> None:
        with contextlib.suppress(OSError):
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
        if self in _HELD:
            _HELD.remove(self)


def count_gpus() -> int:
    """Number of NVIDIA GPUs on this machine, asked of ``nvidia-smi`` so that CUDA is not initialised here."""
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def visible_devices(env: dict | os._Environ = os.environ, n_gpus: int | None = None) -> list[str]:
    """The devices this run may use: the user's ``CUDA_VISIBLE_DEVICES`` entries, or all ``n_gpus`` indices."""
    preset = env.get("CUDA_VISIBLE_DEVICES")
    if preset is not None:
        return [d.strip() for d in preset.split(",") if d.strip() and d.strip() != "-1"]
    n = count_gpus() if n_gpus is None else n_gpus
    return [str(i) for i in range(n)]


def _lock_name(device: str) -> str:
    return "gpu" + "".join(c if c.isalnum() or c in "-_" else "_" for c in device) + ".lock"


def default_lock_dir(env: dict | os._Environ = os.environ) -> Path:
    """The machine-wide lock folder of this user (see the module docstring)."""
    if env.get(LOCK_DIR_ENV):
        return Path(env[LOCK_DIR_ENV])
    path = Path("/tmp") / f"pii-gpu-locks-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    if path.lstat().st_uid != os.getuid():  # someone else made it (or a link): their locks are not ours to trust
        raise PipelineError(f"gpu_slot: {path} belongs to another user; set {LOCK_DIR_ENV} to a folder of yours")
    return path


def try_lock(device: str, lock_dir: Path) -> GpuSlot | None:
    """Take the device's lock without waiting; ``None`` when another process holds it."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    path = lock_dir / _lock_name(device)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())  # who holds it, for a person looking at the folder
    return GpuSlot(device, path, fd)


def claim_gpu(env: dict | os._Environ = os.environ, n_gpus: int | None = None, lock_dir: Path | None = None,
              wait_s: float = 3600.0, poll_s: float = 2.0, log_every_s: float = 60.0) -> GpuSlot | None:
    """Lock a free visible device and set ``CUDA_VISIBLE_DEVICES`` to it in ``env``; see the module docstring.

    Waits (polling) while every device is taken, which happens only when ``--resources gpu=N`` allows more
    jobs than there are devices or another run holds them; the log says so when the wait starts and then every
    ``log_every_s`` seconds, so a job that waits is never mistaken for one that hangs. After ``wait_s`` seconds
    it fails with a message saying so.
    """
    if env.get("PII_GPU_SLOT", "").lower() in ("off", "0", "false", "no"):
        log.info("gpu_slot: PII_GPU_SLOT=off, leaving CUDA_VISIBLE_DEVICES=%s", env.get("CUDA_VISIBLE_DEVICES"))
        return None
    if env.get("SLURM_JOB_ID"):
        log.info("gpu_slot: SLURM job, using the GPUs SLURM granted (CUDA_VISIBLE_DEVICES=%s)",
                 env.get("CUDA_VISIBLE_DEVICES"))
        return None
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        raise PipelineError("gpu_slot: CUDA was initialised before claim_gpu(); call it first in the script's entry")
    devices = visible_devices(env, n_gpus)
    if not devices:
        log.info("gpu_slot: no GPU visible, running on the CPU")
        return None
    folder = Path(lock_dir) if lock_dir is not None else default_lock_dir(env)
    started = time.monotonic()
    deadline = started + wait_s
    next_note = started
    while True:
        for device in devices:
            slot = try_lock(device, folder)
            if slot is not None:
                env["CUDA_VISIBLE_DEVICES"] = device
                _HELD.append(slot)
                waited = time.monotonic() - started
                log.info("gpu_slot: using GPU %s (lock %s)%s", device, slot.lock_path,
                         f" after waiting {waited:.0f} s" if next_note > started else "")
                return slot
        if time.monotonic() >= deadline:
            raise PipelineError(
                f"gpu_slot: all {len(devices)} visible GPU(s) {devices} stayed busy for {wait_s:.0f} s; "
                "set --resources gpu=N to at most the number of GPUs (profiles/workstation/config.yaml)"
            )
        now = time.monotonic()
        if now >= next_note:
            log.info("gpu_slot: all %d visible GPU(s) %s are taken by other jobs (locks in %s); waiting%s, "
                     "at most %.0f s in all", len(devices), devices, folder,
                     f" for {now - started:.0f} s so far" if now > started + poll_s else "", wait_s)
            next_note = now + log_every_s
        time.sleep(poll_s)
