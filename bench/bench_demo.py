"""Time the offline demo end to end and the dry run of the paper's full matrix; print both.

    python bench/bench_demo.py [--timeout 1800] [--keep] [--cores N] [--before REF]

With ``--before REF`` (a commit, e.g. the one before a change) the demo of that commit is timed first, in its own
scratch folder, so the figure before and after a change are printed from the same machine state.

The working tree (tracked and untracked, not ignored files: what a fresh clone plus your edits holds) is copied
to a scratch folder and `bash run.sh demo` runs there, reusing this checkout's installed venv through PII_VENV
(so the install step is the stamp check only, as on a machine that has run `bash run.sh test` before). Then
`snakemake -n` of config.yaml (3 models x 5 settings x 2 tasks plus analyses) is timed in the same folder.
Target on a 2-core CPU machine: demo under 6 minutes.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def scratch_copy_of(ref: str, dest: Path) -> None:
    """The tree of commit ``ref``."""
    archive = subprocess.run(["git", "archive", ref], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)


def scratch_copy(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def timed(cmd: list[str], cwd: Path, env: dict, timeout: int) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.monotonic()
    proc = subprocess.run(["timeout", "-k", "10", str(timeout), *cmd], cwd=cwd, env=env, capture_output=True,
                          text=True)
    return time.monotonic() - t0, proc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timeout", type=int, default=1800, help="seconds allowed for the demo run")
    ap.add_argument("--cores", default="all", help="--cores for the demo (default: all)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder and print its path")
    ap.add_argument("--before", metavar="REF", help="also time the demo of this commit first (before / after)")
    args = ap.parse_args()

    venv = Path(os.environ.get("PII_VENV", ROOT / ".venv")).resolve()
    if not (venv / "bin" / "snakemake").exists():
        print(f"no installed venv at {venv}: run `bash run.sh test` (or set PII_VENV) first", file=sys.stderr)
        return 2
    env = dict(os.environ, PII_VENV=str(venv), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    ok = True
    if args.before:
        before = Path(tempfile.mkdtemp(prefix="pii_bench_before_"))
        try:
            scratch_copy_of(args.before, before)
            ok = run_demo(before, env, args, f"before ({args.before})")
        finally:
            shutil.rmtree(before, ignore_errors=True)
    scratch = Path(tempfile.mkdtemp(prefix="pii_bench_"))
    try:
        scratch_copy(scratch)
        ok = run_demo(scratch, env, args, "this tree" if args.before else None) and ok

        dry_s, dry = timed([str(venv / "bin" / "snakemake"), "-n", "--forceall", "--cores", "1"], scratch, env, 600)
        counts = Counter(re.findall(r"^rule (\w+):", dry.stdout, re.M))
        per_rule = ", ".join(f"{r} {n}" for r, n in sorted(counts.items()))
        print(f"paper matrix dry run (snakemake -n, config.yaml): {dry_s:.1f} s, {sum(counts.values())} jobs"
              f" ({per_rule}){'' if dry.returncode == 0 else f' FAILED rc={dry.returncode}'}")
        if dry.returncode != 0:
            print((dry.stdout + dry.stderr)[-3000:], file=sys.stderr)
        return 0 if ok and dry.returncode == 0 else 1
    finally:
        if args.keep:
            print(f"scratch folder kept: {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


def run_demo(folder: Path, env: dict, args, label: str | None) -> bool:
    """Run the demo in ``folder``; print its wall time, job count and where the time of the jobs went."""
    demo_s, demo = timed(["bash", "run.sh", "demo", "--cores", args.cores], folder, env, args.timeout)
    steps = re.findall(r"(\d+) of (\d+) steps \(100%\) done", demo.stdout + demo.stderr)
    jobs = steps[-1][1] if steps else "?"
    ok = demo.returncode == 0
    print(f"demo{f' {label}' if label else ''} (bash run.sh demo --cores {args.cores}, {os.cpu_count()} CPUs): "
          f"{demo_s:.1f} s ({demo_s / 60:.2f} min), {jobs} jobs, {'ok' if ok else f'FAILED rc={demo.returncode}'}")
    if not ok:
        print((demo.stdout + demo.stderr)[-4000:], file=sys.stderr)
    # job seconds by rule, from the rules that write a benchmark file (inference and the analyses)
    seconds: Counter = Counter()
    count: Counter = Counter()
    for tsv in (folder / "results" / "benchmarks").rglob("*.tsv"):
        rule = tsv.relative_to(folder / "results" / "benchmarks").parts[0]
        lines = tsv.read_text(encoding="utf-8").splitlines()
        if len(lines) > 1:
            seconds[rule] += float(lines[1].split("\t")[0])
            count[rule] += 1
    if seconds:
        print("  job seconds: " + ", ".join(f"{rule} {seconds[rule]:.0f} s in {count[rule]} job(s)"
                                           for rule in sorted(seconds)))
    return ok

if __name__ == "__main__":
    sys.exit(main())
