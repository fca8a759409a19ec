"""Reliability of the inference stage through the Snakemake CLI: what a failing job leaves in its rule log, and the
command an error prints really repairs the run."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import LIB, run_snakemake

from pii.core.tables import read_table

SNAKEFILE = """
rule fill_disk:
    output:
        "out/{name}.txt",
    log:
        "logs/{name}.log",
    script:
        "fill_disk.py"
"""

# A stage that logs progress, then hits a full disk (the path in the message is not ASCII).
SCRIPT = textwrap.dedent("""
    import errno, sys
    sys.path.insert(0, {lib!r})
    from pii.core.stage import log, run_main

    def main(snakemake):
        log.info("batch 1/3 done")
        raise OSError(errno.ENOSPC, "No space left on device", "r\\u00e9sultats/.batch-00001.parquet.part")

    run_main(main, snakemake)
""")


def test_unexpected_exception_ends_rule_log_with_one_line(tmp_path):
    """Not a PipelineError: the rule log still ends with one line naming the rule, its wildcards, the exception
    type and message; the traceback goes to stderr; the job fails. Under an ASCII locale too."""
    (tmp_path / "Snakefile").write_text(SNAKEFILE, encoding="utf-8")
    (tmp_path / "fill_disk.py").write_text(SCRIPT.format(lib=str(LIB)), encoding="utf-8")
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"}
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores=1", "out/disk.txt"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, errors="replace", timeout=300)
    assert proc.returncode != 0
    lines = (tmp_path / "logs" / "disk.log").read_text(encoding="utf-8").splitlines()
    assert lines[0].endswith("INFO batch 1/3 done")
    assert re.search(r"ERROR rule fill_disk \(name=disk\) failed: OSError: \[Errno 28\] No space left on device: "
                     r"'résultats/\.batch-00001\.parquet\.part' \(traceback on stderr\)$", lines[-1]), lines
    assert len(lines) == 2  # the traceback is not in the log
    assert "Traceback (most recent call last)" in proc.stderr
    assert not (tmp_path / "out" / "disk.txt").exists()


def test_deleted_png_error_gives_a_command_that_rerenders(demo_run, tmp_path):
    """A rendered PNG deleted after a run: the infer job fails with one line naming the PNG and a command; that
    command (run as printed, with the run's own options) brings the PNG back, and the job then succeeds."""
    work = tmp_path / "run"
    shutil.copytree(demo_run, work, symlinks=True, ignore=shutil.ignore_patterns("locks"))
    manifest = read_table(work / "results/images/pope/question.parquet", "manifest")
    row = manifest.row(0, named=True)
    png = work / row["image_path"]
    png.unlink()
    # on a copy only file times decide what reruns (edits to the code since the demo run must not)
    target, mtime = "results/inference/pope/llava_1_5/hybrid/r0.parquet", "--rerun-triggers=mtime"
    failed = run_snakemake(work, target, f"--forcerun={target}", mtime, check=False)
    assert failed.returncode != 0
    last = (work / "logs/inference/llava_1_5/r0.log").read_text(encoding="utf-8").splitlines()[-1]
    assert f"ERROR {row['image_path']} (sample {row['sample_id']}, results/images/pope/question.parquet)" in last
    command = re.search(r"render it again with: snakemake (.+?) \(plus your run's options\)", last).group(1)
    assert command == "results/images/pope/question.parquet --forcerun render_variants"
    run_snakemake(work, *command.split(), mtime)
    assert hashlib.sha256(png.read_bytes()).hexdigest() == row["image_sha256"]
    run_snakemake(work, target, mtime)
    assert len(read_table(work / target, "inference")) == len(manifest)
    assert not Path(work / "results/inference/.partial/pope/llava_1_5/hybrid/r0").exists()
