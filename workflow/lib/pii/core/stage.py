"""How a rule script runs: the ``pii`` logger sent to the rule's log, a failure ended in one clear line
(``PipelineError`` for what the user can fix), the output folders checked writable first, and a GPU job's device
claimed (gpu_slot.py). Nothing here depends on Snakemake being present, so the tests import it too."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("pii")


class PipelineError(Exception):
    """An error whose message tells the user what is wrong and what to do; printed without a traceback."""


# A second name (hard link) of the running job's log; see setup_logging.
_attempt_log: Path | None = None


def setup_logging(log_path: str | os.PathLike | None = None, level: int = logging.INFO,
                  keep_attempts: bool = False) -> logging.Logger:
    """Send the ``pii`` logger to the rule's log file (and stderr), one timestamped line per record.

    ``keep_attempts`` (a stage script under run_main): Snakemake deletes a job's log before it runs the job again,
    so a retry (the workstation profile's ``retries: 1``) would lose why the first attempt failed. The log therefore
    gets a second name, ``<name>.unfinished-<start time>-<pid>.log`` (a hard link: the same file, no copy);
    ``finish_logging`` removes it when the stage succeeds, so it stays exactly for attempts that failed or were
    killed.
    """
    global _attempt_log
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    earlier: list[Path] = []
    _attempt_log = None
    if log_path:
        path = Path(log_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(path, mode="w", encoding="utf-8"))  # whatever the locale
    if log_path and keep_attempts:
        earlier = sorted(path.parent.glob(f"{path.stem}.unfinished-*{path.suffix}"))
        link = path.with_name(f"{path.stem}.unfinished-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}{path.suffix}")
        with contextlib.suppress(OSError):  # a file system without hard links only loses this safety net
            os.link(path, link)
            _attempt_log = link
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    log.handlers.clear()
    for h in handlers:
        h.setFormatter(fmt)
        log.addHandler(h)
    log.setLevel(level)
    log.propagate = False
    if earlier:
        log.info("earlier attempts of this job did not finish; their logs: %s", ", ".join(map(str, earlier)))
    return log


def finish_logging() -> None:
    """The stage succeeded: its log keeps only its own name."""
    global _attempt_log
    if _attempt_log is not None:
        with contextlib.suppress(FileNotFoundError):
            _attempt_log.unlink()
        _attempt_log = None


def check_writable(folders: list[str | os.PathLike]) -> None:
    """Fail in one line, before any work, when a folder a job writes to is read-only (permissions or a read-only
    mount), instead of after hours of inference when the result is saved. Tried by creating a file, the only test
    that also holds for root and for network file systems."""
    for folder in dict.fromkeys(Path(f) for f in folders):
        if not folder.is_dir():
            continue  # Snakemake creates missing output folders; a fresh cache folder is made by the job
        try:
            fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
        except OSError as err:
            raise PipelineError(f"{folder}/ is not writable ({err.strerror}): this job writes there; make it writable "
                                "(chmod -R u+w, or remount read-write) or run the pipeline in another --directory"
                                ) from None
        os.close(fd)
        os.unlink(probe)


def run_main(main, snakemake, gpu: bool = False, writes: tuple[str, ...] = ()) -> None:
    """Run a stage's ``main(snakemake)`` with logging to ``log[0]``; any failure ends in one clear line.

    Before ``main``: the folders of the outputs (and ``writes``, e.g. the unit cache) must be writable, and a GPU
    stage (``gpu``) claims its device (gpu_slot), which may wait and logs that it does."""
    setup_logging(snakemake.log[0] if len(snakemake.log) else None, keep_attempts=True)
    wildcards = getattr(snakemake, "wildcards", None)
    named = ", ".join(f"{k}={v}" for k, v in wildcards.items()) if wildcards else ""
    stage = f"rule {getattr(snakemake, 'rule', None) or 'stage'}" + (f" ({named})" if named else "")

    def start_then_main():
        check_writable([Path(out).parent for out in snakemake.output] + list(writes))
        if gpu:
            from pii.core.gpu_slot import claim_gpu  # here, not at the top: gpu_slot imports this module

            claim_gpu()
        main(snakemake)

    run_stage(start_then_main, stage)
    finish_logging()


def run_stage(fn: Callable[[], Any], stage: str) -> None:
    """Call ``fn``; exit 1 on failure, the log's last line saying why. A PipelineError is that line as it is. Any
    other exception (a full disk, a library bug) is named with its type and the stage, after its traceback on
    stderr only, so the rule log never stops silently at the last progress line. Nothing is cleaned up here:
    outputs are atomic, and inference checkpoints stay for the rerun."""
    try:
        fn()
    except PipelineError as err:
        log.error("%s", err)
        sys.exit(1)
    except Exception as err:
        traceback.print_exc(file=sys.stderr)
        lines = str(err).strip().splitlines()
        more = " ..." if len(lines) > 1 else ""
        log.error("%s failed: %s: %s%s (traceback on stderr)", stage, type(err).__name__, lines[0] if lines else "",
                  more)
        sys.exit(1)
