"""Benchmark of the rendering stage: images per second on one core (synthetic 640x480 images, POPE questions).

Times render_variant end to end (decode source, lay out, compose, PNG encode, sha256, atomic write,
manifest) for the control and question variants.

    .venv/bin/python bench/bench_render.py [--n 60] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "workflow" / "lib"))
from pii.core.stage import log
from pii.render.strip import font_info
from pii.render.variants import render_variant

CFG = {"font": "arimo", "font_size": 26, "strip_fraction": 0.05, "padding": 2, "line_spacing": 1.15}
OBJECTS = ["dog", "person", "dining table", "traffic light", "cup", "bicycle", "car", "chair"]


def make_samples(folder: Path, n: int) -> pl.DataFrame:
    """n synthetic 640x480 JPEGs (smooth gradients + noise, like a photo in size) with POPE questions."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:480, 0:640]
    rows = []
    for i in range(n):
        base = np.stack([(xx * (i + 1)) % 256, (yy * 2 + i * 7) % 256, (xx + yy + i * 13) % 256], axis=2)
        arr = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        path = folder / f"{i:012d}.jpg"
        Image.fromarray(arr, "RGB").save(path, format="JPEG", quality=90)
        obj = OBJECTS[i % len(OBJECTS)]
        rows.append(
            {
                "sample_id": f"pope-{i}",
                "task": "pope",
                "image_id": i,
                "image_file": path.name,
                "image_path": str(path),
                "question": f"Is there a {obj} in the image?",
                "label": "yes",
                "question_id": i,
                "object": obj,
            }
        )
    return pl.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=60, help="images per variant per repeat")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):  # one core, as a Snakemake job with threads=1 would get
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    log.disabled = True
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        samples = make_samples(tmp, args.n)
        font_info(CFG["font"], CFG["font_size"])  # warm the font cache outside the timing
        print(f"rendering {args.n} synthetic 640x480 images per variant, best of {args.repeats}, one core, PNG zlib level 1")
        for variant in ("control", "question"):
            best = float("inf")
            for r in range(args.repeats):
                t0 = time.perf_counter()
                render_variant(samples, variant, tmp / f"out{r}" / f"{variant}.parquet", CFG, task="pope")
                best = min(best, time.perf_counter() - t0)
            print(f"{variant:9s}: {args.n / best:7.1f} images/s  ({1000 * best / args.n:.1f} ms/image)")


if __name__ == "__main__":
    main()
