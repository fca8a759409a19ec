"""Inference throughput on the tiny demo checkpoints: samples/s at batch 1 vs 8, the infer job's wall time
against a bare ``model.generate`` loop over the same inputs (the pipeline's overhead), and the same unit through
the vllm backend's engine beside it (requests/s of both engines in one table).

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_inference.py [--device cpu|cuda] [--n 16] [--new-tokens 16]

vLLM runs in its own environment (.venv-vllm, bash run.sh vllm-install); without one, the vLLM columns say so and
only transformers runs. Its engine is loaded (and warmed up) before the clock starts, with the demo's engine
settings (config.demo-vllm.yaml) on the CPU; InstructBLIP has no vLLM implementation. The figures measure framework
overhead only (tiny models): bench/bench_gpu.py measures the 7B models.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "workflow" / "lib"), str(ROOT / "tests")]

import yaml
from inference_fixtures import DEMO_MODELS, job_config, make_inputs

from pii.core.stage import PipelineError
from pii.core.tables import read_table
from pii.inference import (
    demo_checkpoints,
    families,
    vlm,
)
from pii.inference.backends import TransformersBackend, VLLMBackend
from pii.inference.job import Job, build_requests
from pii.inference.runner import run_job
from pii.inference.vllm_engine import VLLMEngine, vllm_python


def bare_loop(lm, prompts, images, batch_size, max_new_tokens, decoding):
    """Processor + generate, nothing else: no sorting, checkpoints, p_yes or tables."""
    import torch

    kwargs = vlm.generation_kwargs(decoding, max_new_tokens)
    t0 = time.perf_counter()
    for i in range(0, len(prompts), batch_size):
        inputs = vlm.prepare_inputs(lm, prompts[i:i + batch_size], images[i:i + batch_size])
        torch.manual_seed(i)
        with torch.inference_mode():
            lm.model.generate(**inputs, **kwargs)
    if lm.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def vllm_settings(device: str) -> dict:
    """The vllm backend's settings: the demo's on the CPU (config.demo-vllm.yaml), config.yaml's on a GPU."""
    name = "config.demo-vllm.yaml" if device == "cpu" else "config.yaml"
    return yaml.safe_load((ROOT / name).read_text(encoding="utf-8"))["inference"]["vllm"]


def vllm_rate(name, family, path, args, sample, manifest, tmp: Path, settings: dict) -> float:
    """Requests/s of one unit through run_job on the vllm backend, its engine loaded and warmed up first."""
    cfg = job_config(name, family, path, batch_size=8, max_new_tokens=args.new_tokens, do_sample=True,
                     backend="vllm")
    cfg["inference"]["vllm"] = settings
    job = Job("pope", name, "hybrid", cfg)
    engine = VLLMEngine(vllm_python(None))
    try:
        backend = VLLMBackend(job, engine)
        backend.start()
        reqs = build_requests(read_table(sample), read_table(manifest), job)
        backend.run(reqs[:2], 0)  # warm-up
        t0 = time.perf_counter()
        run_job(job, sample, manifest, tmp / f"{name}-vllm.parquet", tmp / f".partial_{name}_vllm",
                      backend=backend)
        return args.n / (time.perf_counter() - t0)
    finally:
        engine.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--n", type=int, default=16, help="requests per measurement")
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--models", default=None, help="folder with demo checkpoints (default: build them in a temp dir)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1 if args.device == "cpu" else torch.get_num_threads())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models = Path(args.models) if args.models else tmp / "models"
        sample, manifest = make_inputs(tmp / "in", "pope", n=args.n)
        settings = vllm_settings(args.device)
        try:
            vllm_python(None)
            has_vllm = True
        except PipelineError as err:
            has_vllm = False
            print(f"vLLM skipped: {err}")
        print(f"device={args.device} n={args.n} max_new_tokens={args.new_tokens} torch={torch.__version__}"
              + (f" vllm engine={settings['engine']} vllm batch={settings['batch_size']}" if has_vllm else ""))
        print(f"{'model':<14}{'b1 samp/s':>11}{'b8 samp/s':>11}{'b8/b1':>7}{'bare b8 s':>11}{'infer b8 s':>12}"
              f"{'overhead':>10}{'infer b8 req/s':>16}{'vllm req/s':>12}{'vllm/b8':>9}")
        for name, family in DEMO_MODELS.items():
            if not (models / family).is_dir():
                demo_checkpoints.build(family, models / family, seed=0)
            cfg = job_config(name, family, str(models / family), batch_size=8, max_new_tokens=args.new_tokens,
                             do_sample=True)
            job = Job("pope", name, "hybrid", cfg)
            lm = vlm.load_model(name, cfg[f"models.{name}"], device=args.device)
            reqs = build_requests(read_table(sample), read_table(manifest), job)
            prompts = [vlm.build_prompt(family, lm.processor, r.text_prompt) for r in reqs]
            images = [vlm.open_image(r.image_path) for r in reqs]
            bare_loop(lm, prompts[:2], images[:2], 2, 2, job.decoding)  # warm-up
            rate = {b: args.n / bare_loop(lm, prompts, images, b, args.new_tokens, job.decoding) for b in (1, 8)}
            bare = bare_loop(lm, prompts, images, 8, args.new_tokens, job.decoding)
            backend = TransformersBackend(job, lm=lm)
            t0 = time.perf_counter()
            run_job(job, sample, manifest, tmp / f"{name}.parquet", tmp / f".partial_{name}", backend=backend)
            wall = time.perf_counter() - t0
            del backend, lm  # free the transformers model before the engine loads its own copy
            if not has_vllm:
                vllm_cols = f"{'skipped':>12}{'-':>9}"
            elif not families.get(family).vllm_supported:
                vllm_cols = f"{'n/a':>12}{'-':>9}"
            else:
                vrate = vllm_rate(name, family, str(models / family), args, sample, manifest, tmp, settings)
                vllm_cols = f"{vrate:>12.1f}{vrate / (args.n / wall):>9.2f}"
            print(f"{name:<14}{rate[1]:>11.1f}{rate[8]:>11.1f}{rate[8] / rate[1]:>7.2f}{bare:>11.2f}{wall:>12.2f}"
                  f"{wall / bare:>10.2f}{args.n / wall:>16.1f}" + vllm_cols, flush=True)


if __name__ == "__main__":
    main()
