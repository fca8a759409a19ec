"""Three savings of the transformers backend, on the demo checkpoints with COCO-size images:

- images read and processed one batch ahead in a worker thread (Prefetch) against the same unit processed
  in the main thread, wall time of the infer job's batches (the rows are checked equal);
- P(yes) from the first step's logits only (vlm.first_step_logits) against ``output_logits``, which keeps a
  batch x vocabulary float32 tensor per generated step: the bytes kept, for the demo and for the real vocabularies;
- captions of a fixed length (``--caption-tokens``, ``min_new_tokens``) with the static KV cache
  (inference.kv_cache: static) against the dynamic one, which copies every layer's whole cache at each step.

    .venv/bin/python bench/bench_transformers_path.py [--device cpu|cuda] [--n 32] [--batch 8] [--new-tokens 8]

On the CPU the model runs on one thread (the worker takes the other core), as the GPU would leave the CPU free.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "workflow" / "lib"), str(ROOT / "tests")]

from inference_fixtures import DEMO_MODELS, job_config, make_inputs
from polars.testing import assert_frame_equal

from pii.core.tables import read_table
from pii.inference import (
    demo_checkpoints,
    vlm,
)
from pii.inference.backends import TransformersBackend
from pii.inference.job import Job, build_requests
from pii.inference.runner import run_requests

COCO_SIZE = (640, 480)
REAL_VOCAB = {"qwen2_5_vl": 152064, "llava": 32064, "instructblip": 32001}  # the 7B checkpoints' config.json


def unit_seconds(job, requests, backend, partial: Path):
    t0 = time.perf_counter()
    rows, _ = run_requests(job, requests, backend, partial)
    return time.perf_counter() - t0, rows


def caption_seconds(lm, inputs, tokens: int, kv_cache: str, device: str):
    """One fixed-length caption batch through generate: seconds, and the tokens for the equality check."""
    import torch

    greedy = {"do_sample": False, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0}
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = lm.model.generate(**inputs, **vlm.generation_kwargs(greedy, tokens, kv_cache), min_new_tokens=tokens,
                                pad_token_id=vlm._pad_id(lm))
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--n", type=int, default=32, help="requests per unit")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=8, help="POPE-like: a few answer tokens")
    ap.add_argument("--caption-tokens", type=int, default=200, help="the paper's captions: about 200 tokens")
    args = ap.parse_args()
    import torch

    if args.device == "cpu":
        torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sample, manifest = make_inputs(tmp / "in", "pope", n=args.n, size=COCO_SIZE)
        print(f"device={args.device} n={args.n} batch={args.batch} max_new_tokens={args.new_tokens} "
              f"images={COCO_SIZE[0]}x{COCO_SIZE[1]} torch={torch.__version__}")
        print(f"{'model':<14}{'in line s':>11}{'ahead s':>9}{'speed-up':>10}{'prepare s/batch':>17}"
              f"{'logits kept, all steps':>24}{'first step':>12}{'7B vocab, all steps':>21}"
              f"{'caption dynamic s':>19}{'static s':>10}{'speed-up':>10}")
        for name, family in DEMO_MODELS.items():
            demo_checkpoints.build(family, tmp / "models" / family, seed=0)
            cfg = job_config(name, family, str(tmp / "models" / family), batch_size=args.batch,
                             max_new_tokens=args.new_tokens)
            job = Job("pope", name, "hybrid", cfg)
            lm = vlm.load_model(name, cfg[f"models.{name}"], device=args.device)
            requests = build_requests(read_table(sample), read_table(manifest), job)
            backend = TransformersBackend(job, lm=lm)
            batch = requests[:args.batch]
            backend.run(batch, 0)  # warm-up
            t0 = time.perf_counter()
            backend.processor_inputs(batch)
            prepare_s = time.perf_counter() - t0
            inline = TransformersBackend(job, lm=lm)
            inline.prepare = None
            t_inline, rows_inline = unit_seconds(job, requests, inline, tmp / f".p_{name}_inline")
            t_ahead, rows_ahead = unit_seconds(job, requests, backend, tmp / f".p_{name}_ahead")
            assert_frame_equal(rows_inline, rows_ahead)
            captions = vlm.prepare_inputs(lm, [backend.prompt(r) for r in batch],
                                          [vlm.open_image(r.image_path) for r in batch])
            cache_s = {}
            for kv_cache in ("dynamic", "static"):
                caption_seconds(lm, captions, 4, kv_cache, args.device)  # warm-up
                cache_s[kv_cache], tokens = caption_seconds(lm, captions, args.caption_tokens, kv_cache, args.device)
                cache_s[kv_cache + " tokens"] = tokens.tolist()
            same = cache_s["dynamic tokens"] == cache_s["static tokens"]
            vocab = lm.model.get_output_embeddings().out_features
            steps = args.new_tokens  # the most output_logits keeps (a batch that ends early keeps fewer)
            mib = 4 * args.batch / 2**20
            print(f"{name:<14}{t_inline:>11.2f}{t_ahead:>9.2f}{t_inline / t_ahead:>10.2f}{prepare_s:>17.3f}"
                  f"{steps * vocab * mib:>21.2f}MiB{vocab * mib:>9.2f}MiB"
                  f"{steps * REAL_VOCAB[family] * mib:>18.1f}MiB{cache_s['dynamic']:>19.2f}{cache_s['static']:>10.2f}"
                  f"{cache_s['dynamic'] / cache_s['static']:>10.2f}" + ("" if same else "  (tokens differ)"), flush=True)


if __name__ == "__main__":
    main()
