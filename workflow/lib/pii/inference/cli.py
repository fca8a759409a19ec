"""One inference unit outside Snakemake, through the same code as the infer rule:
``PYTHONPATH=workflow/lib python -m pii.inference.cli --help``."""


import argparse
import json
import os
from pathlib import Path

from pii.core.stage import run_stage, setup_logging
from pii.inference.job import Job
from pii.inference.runner import run_job


def cli(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Run one inference job outside Snakemake (same code path).")
    ap.add_argument("--config", required=True, help="JSON file: the job's canonical config subtrees")
    ap.add_argument("--task", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--setting", required=True)
    ap.add_argument("--repeat", type=int, default=0, help="decoding repeat, 0-based (default 0)")
    ap.add_argument("--sample", required=True)
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--partial", required=True)
    ap.add_argument("--log", default=None)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    ap.add_argument("--device", default=None)
    args = ap.parse_args(argv)
    setup_logging(args.log)

    def job():
        cfg = json.loads(Path(args.config).read_text(encoding="utf-8"))
        run_job(Job(task=args.task, model=args.model, setting=args.setting, cfg=cfg, repeat=args.repeat), args.sample,
                args.manifest, args.out, args.partial, threads=args.threads, device=args.device)

    run_stage(job, f"infer ({args.task}/{args.model}/{args.setting}/r{args.repeat})")


if __name__ == "__main__":
    cli()
