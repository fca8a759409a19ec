"""Padding left in the transformers backend's batches: sorted by text tokens only (the old key) or by text plus the
image tokens the processor writes (``TransformersBackend.sort_key``), for the real Qwen2.5-VL-7B processor
(workflow/data/checkpoint_files) over the image sizes of a finished run's render manifests. Padding is compute a
batch spends on nothing, so its share is a figure that holds on any hardware.

    .venv/bin/python bench/bench_batch_order.py --run <a finished run's folder> [--batch-size 8]

Without ``--run`` the sizes are drawn from COCO-like photos (640 x 480, 480 x 640, 640 x 427, ...) with a strip of
1-4 text lines below, as the question variant renders them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "workflow" / "lib")]

import polars as pl

from pii.inference import (
    families,
    vlm,
)

QWEN = ROOT / "workflow/data/checkpoint_files/Qwen--Qwen2.5-VL-7B-Instruct"
COCO_LIKE = [(640, 480), (480, 640), (640, 427), (640, 426), (500, 375), (427, 640), (640, 512), (612, 612)]


def sizes_of(run: Path | None, seed: int = 0) -> list[tuple[int, int]]:
    if run is not None:
        frames = [pl.read_parquet(p, columns=["width", "height"]) for p in sorted(run.glob("results/images/*/*.parquet"))]
        return list(pl.concat(frames).iter_rows())
    rng = np.random.default_rng(seed)
    photos = [COCO_LIKE[i] for i in rng.integers(0, len(COCO_LIKE), 1000)]
    return [(w, h + 20 + 34 * int(rng.integers(1, 5))) for w, h in photos]  # the strip: padding + 1-4 lines


def padding_share(lengths: list[int], batch_size: int) -> float:
    padded = total = 0
    for i in range(0, len(lengths), batch_size):
        batch = lengths[i:i + batch_size]
        padded += max(batch) * len(batch) - sum(batch)
        total += max(batch) * len(batch)
    return padded / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a finished run's folder (its results/images/*/*.parquet)")
    parser.add_argument("--batch-size", type=int, default=8, help="config.yaml's inference.batch_size")
    args = parser.parse_args()
    processor = families.get("qwen2_5_vl").load_processor(str(QWEN))
    lm = vlm.LoadedModel(name="qwen", family="qwen2_5_vl", model=None, processor=processor, device=None, dtype=None,
                         path=str(QWEN), revision=None)
    text = vlm.prompt_length(lm, families.get("qwen2_5_vl").build_prompt(processor, None))  # no text prompt (PiI)
    sizes = sizes_of(args.run)
    tokens = {s: vlm.image_tokens(lm, *s) for s in set(sizes)}
    # the old key ties every request (same text), so sample order decides; the sample is a random draw
    by_text = [text + tokens[s] for s in sizes]
    by_tokens = sorted(by_text)
    print(f"{len(sizes)} requests, {len(tokens)} image sizes, batch {args.batch_size}, Qwen2.5-VL-7B processor")
    print(f"  image tokens per request: {min(tokens.values())}-{max(tokens.values())}")
    print(f"  padding share, sorted by text only:         {padding_share(by_text, args.batch_size):6.1%}")
    print(f"  padding share, sorted by text + image tokens: {padding_share(by_tokens, args.batch_size):6.1%}")


if __name__ == "__main__":
    main()
