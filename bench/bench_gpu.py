"""GPU benchmark without real weights: Qwen2.5-VL-7B and llava-1.5-7b at full size with random weights, a
paper-shaped workload through both engines (transformers and vLLM), and the wall time of config.yaml's whole
matrix extrapolated from it.

    .venv/bin/python bench/bench_gpu.py            # one CUDA GPU; sized for < 8 min on an H100 (not yet run on one)
    .venv/bin/python bench/bench_gpu.py --smoke    # the same code at tiny size on the CPU (~1-3 min)

What it does, per model:
- builds the model from the real ``config.json`` in workflow/data/checkpoint_files (no download): random weights
  initialised straight on the GPU in bf16, saved as safetensors under the hub checkpoint's weight names, beside the
  real tokenizer, chat template and processor files (as the demo checkpoints carry them), so both engines load it
  from disk like the real checkpoint;
- renders COCO-sized images (640x480, 640x427, 480x640, ...) with the project's render code, a POPE question in
  the strip (question images) or a blank strip (control images);
- runs two phases through each engine, with config.yaml's decoding, batch size and vLLM engine settings:
  POPE (hybrid and prompt_in_image settings, P(yes) recorded, exactly ``--pope-tokens`` answer tokens) and captions
  (control and prompt_in_image settings, exactly ``--caption-tokens`` tokens: min_new_tokens = max_new_tokens in
  transformers, min_tokens = max_tokens and ignore_eos in vLLM, so random weights cannot stop early);
- transformers through the pipeline's own code (vlm.load_model, TransformersBackend, run_requests),
  vLLM through the vllm backend's engine (vllm_engine.VLLMEngine in .venv-vllm, VLLMBackend).
It prints requests/s, output tokens/s and peak GPU memory per engine, model and phase, and the extrapolated wall
time of config.yaml's matrix (tasks, sample sizes, settings, models and repeats read from config.yaml) for
"everything on transformers" and "vLLM where it serves the model".

Request counts are kept modest so that the whole run should fit in 8 minutes on one H100 (estimated from
the expected load, compile and generation times; no GPU run is recorded yet): per model 64 POPE + 64
caption requests on transformers (``--n-hf``, 2 + 2 batches of config.yaml's 32) and 64 + 64 on vLLM (``--n-vllm``). The vLLM
engine starts once per model with config.yaml's settings (torch.compile and CUDA graphs included); its start-up
and the transformers load time are counted once per infer job in the extrapolation.

What the figures cannot show: random weights never stop early, so every answer has the fixed length; real
captions vary in length, and a transformers batch waits for its longest one (up to 512 tokens), so the
transformers extrapolation is optimistic for captions. InstructBLIP is not built (no config file of it is in the
project, and vLLM does not serve it): its share of the matrix is estimated from LLaVA's transformers figures (the
same Vicuna-7B language model; 32 query tokens instead of 576 image tokens, so an over-estimate).
vLLM gets 64 requests at once here, the real run 256 per call (max_num_seqs 128), so its figures are on the
conservative side.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import gc
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "workflow" / "lib"))

import numpy as np
import polars as pl
import yaml
from PIL import Image, ImageDraw

CHECKPOINT_FILES = ROOT / "workflow" / "data" / "checkpoint_files"
REFERENCE = {"qwen2_5_vl": "Qwen--Qwen2.5-VL-7B-Instruct", "llava": "llava-hf--llava-1.5-7b-hf"}
# The hub checkpoints' weight names from transformers 5's module names (what vLLM's loaders expect; transformers
# maps them back when it loads). First matching prefix wins.
HUB_NAMES = {
    "qwen2_5_vl": [("model.visual.", "visual."), ("model.language_model.", "model.")],
    "llava": [("model.vision_tower.", "vision_tower.vision_model."),
              ("model.multi_modal_projector.", "multi_modal_projector."),
              ("model.language_model.", "language_model.model."), ("lm_head.", "language_model.lm_head.")],
}
# --smoke: the real configs with the dimensions shrunk as the demo checkpoints are (heads of width 32, the
# smallest vLLM's CPU attention kernel takes; Qwen's mrope sections sum to half of that)
TINY = {
    "qwen2_5_vl": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
                   "num_key_value_heads": 1, "max_window_layers": 2,
                   "rope_scaling": {"type": "mrope", "mrope_section": [4, 6, 6]},
                   "vision_config": {"depth": 4, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                                     "out_hidden_size": 64, "fullatt_block_indexes": [1, 3]}},
    "llava": {"text_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                              "num_attention_heads": 2, "num_key_value_heads": 1},
              "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4,
                                "num_attention_heads": 2, "projection_dim": 32}},
}
# --smoke: the vLLM CPU engine as the tests run it (no torch.compile, a minute a model here), in one process
# instead of three (engine core and worker in the caller's, VLLM_ENABLE_V1_MULTIPROCESSING=0): on this machine
# its start-up is mostly three Pythons importing vLLM, ~90 s against ~30 s
CPU_ENGINE = {"enforce_eager": True, "max_num_seqs": 8, "distributed_executor_backend": "uni"}
# Answer lengths assumed for the real run's matrix, in tokens: POPE answers are a word or a short sentence, detailed
# captions ~200 tokens, a transcribed POPE question ~16. Per-request times are interpolated linearly in the answer
# length between the two measured phases.
REAL_RUN_TOKENS = {"pope": 8, "caption": 200, "transcribe": 16}
COCO_SIZES = [(640, 480), (640, 427), (480, 640), (640, 424), (500, 375), (640, 512), (427, 640), (640, 360)]
OBJECTS = ["dog", "person", "dining table", "traffic light", "cup", "bicycle", "car", "chair", "umbrella", "clock"]
SHARD_BYTES = 4 << 30


# --- the config's matrix ------------------------------------------------------------------------------------


def matrix_units(cfg: dict) -> list[dict]:
    """Every (model, repeat, task, setting) unit the workflow runs for ``cfg``, with its request count, as
    workflow/rules/common.smk forms them: a task runs the settings it claims, else every setting no task claims;
    a task with ``source`` asks the questions of that task's sample."""
    from pii import tasks

    claimed = {s for t in cfg["tasks"].values() for s in t.get("settings") or []}
    study = [s for s in cfg["settings"] if s not in claimed]
    units = []
    for model, entry in cfg["models"].items():
        for repeat in range(int(cfg["inference"]["repeats"])):
            for task, task_cfg in cfg["tasks"].items():
                source = task_cfg.get("source") or task
                n = int(cfg["sampling"][source]["n"])
                for setting in task_cfg.get("settings") or study:
                    units.append({"model": model, "family": entry["family"], "repeat": repeat, "task": task,
                                  "kind": tasks.kind_name(task, task_cfg), "setting": setting, "n": n,
                                  "max_new_tokens": int(task_cfg["max_new_tokens"])})
            check = int(cfg["inference"].get("invariance_check") or 0)
            if check and repeat == 0:  # N POPE requests twice (batched, then one at a time), once per model
                units.append({"model": model, "family": entry["family"], "repeat": 0, "task": "invariance",
                              "kind": "pope", "setting": "baseline", "n": 2 * check, "max_new_tokens": 8})
    return units


def describe_matrix(units: list[dict]) -> list[str]:
    lines = []
    for task in dict.fromkeys(u["task"] for u in units):
        rows = [u for u in units if u["task"] == task]
        models = len({u["model"] for u in rows})
        settings = len({u["setting"] for u in rows})
        repeats = len({u["repeat"] for u in rows})
        lines.append(f"  {task:<11} {models} models x {settings} settings x {rows[0]['n']} requests x {repeats} "
                     f"repeat(s) = {sum(u['n'] for u in rows):,} requests (max_new_tokens "
                     f"{rows[0]['max_new_tokens']})")
    lines.append(f"  in all      {sum(u['n'] for u in units):,} requests in {len(units)} units")
    return lines


def seconds_per_request(measured: dict, kind: str, max_new_tokens: int) -> float:
    """Per-request wall time at the answer length assumed for ``kind``, linear between the two phases."""
    pope, caption = measured["pope"], measured["caption"]
    tokens = min(REAL_RUN_TOKENS.get(kind, REAL_RUN_TOKENS["pope"]), max_new_tokens)
    a, b = pope["s_per_req"], caption["s_per_req"]
    return a + (b - a) * (tokens - pope["tokens"]) / (caption["tokens"] - pope["tokens"])


def extrapolate(units: list[dict], results: dict, plan: str) -> tuple[float | None, list[str]]:
    """Wall seconds of the matrix on one GPU, jobs one after another, and notes. ``plan``: transformers (every
    model) or vllm (vLLM for the families it was measured on, transformers for the others)."""
    notes, total, jobs = [], 0.0, set()
    for u in units:
        family = u["family"]
        engine = "vllm" if plan == "vllm" and ("vllm", family) in results else "transformers"
        key = (engine, family)
        if key not in results and family == "instructblip":
            key = ("transformers", "llava")  # same Vicuna-7B language model, fewer image tokens
            note = "instructblip estimated from llava's transformers figures"
            if note not in notes:
                notes.append(note)
        if key not in results:
            note = f"{u['model']} ({family}, {engine}) not measured: left out"
            if note not in notes:
                notes.append(note)
            continue
        measured = results[key]
        total += u["n"] * seconds_per_request(measured, u["kind"], u["max_new_tokens"])
        if (u["model"], u["repeat"]) not in jobs:  # one infer job per model and repeat loads the model once
            jobs.add((u["model"], u["repeat"]))
            total += measured["startup_s"]
    return total, notes


# --- random full-size checkpoints ---------------------------------------------------------------------------


def merged(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = merged(base.get(k) or {}, v) if isinstance(v, dict) and k != "rope_scaling" else v
    return out


def model_config(family: str, tiny: bool) -> dict:
    real = json.loads((CHECKPOINT_FILES / REFERENCE[family] / "config.json").read_text(encoding="utf-8"))
    return merged(real, TINY[family]) if tiny else real


def hub_name(family: str, key: str) -> str:
    for old, new in HUB_NAMES[family]:
        if key.startswith(old):
            return new + key[len(old):]
    return key


def save_weights(state: dict, family: str, out: Path) -> int:
    """The state dict as safetensors shards under the hub's names (with an index when sharded); returns bytes."""
    from safetensors.torch import save_file

    shards, current, size = [], {}, 0
    for key, tensor in state.items():
        if current and size + tensor.nbytes > SHARD_BYTES:
            shards.append(current)
            current, size = {}, 0
        current[hub_name(family, key)] = tensor
        size += tensor.nbytes
    shards.append(current)
    names = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    weight_map, total = {}, 0
    for name, shard in zip(names, shards, strict=True):
        # one shard at a time on the host: a 7B model never needs its full size in host memory twice
        save_file({k: v.detach().contiguous().cpu() for k, v in shard.items()}, out / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
        total += sum(v.nbytes for v in shard.values())
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
    return total


def build_random(family: str, out: Path, device, dtype, tiny: bool) -> dict:
    """A random checkpoint folder of ``family`` built from its real config; returns timings and size."""
    import torch
    from transformers import AutoConfig

    from pii.inference import demo_checkpoints, families

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    # The tokenizer, chat template, processor and generation config exactly as the demo checkpoint has them (made
    # from the same checkpoint files and known to load in both engines); its tiny weights are not kept.
    with tempfile.TemporaryDirectory() as tmp:
        demo = demo_checkpoints.build(family, Path(tmp) / family, seed=0)
        for f in demo.iterdir():
            if f.is_file() and f.name != "config.json" and f.name != "demo_model.json" and f.suffix != ".safetensors":
                shutil.copy2(f, out / f.name)
    (out / "config.json").write_text(json.dumps(model_config(family, tiny), indent=2) + "\n", encoding="utf-8")
    config = AutoConfig.from_pretrained(out)
    torch.manual_seed(0)
    t1 = time.perf_counter()
    with torch.device(device):  # initialised where it runs: no host copy of 16 GB of random numbers
        model = families.get(family).model_class()._from_config(config, dtype=dtype)
    n_params = sum(p.numel() for p in model.parameters())
    t2 = time.perf_counter()
    nbytes = save_weights(model.state_dict(), family, out)
    del model
    free_gpu()
    return {"params": n_params, "bytes": nbytes, "init_s": t2 - t1, "save_s": time.perf_counter() - t2,
            "total_s": time.perf_counter() - t0}


def free_gpu() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --- inputs -------------------------------------------------------------------------------------------------


def make_inputs(folder: Path, n: int, render_cfg: dict) -> dict:
    """``n`` COCO-sized source images and, rendered by the project's render code, the POPE sample's question
    images and the caption sample's control and question images: {(task, variant): (sample, manifest)}."""
    from pii.render.variants import render_variant

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = {"pope": [], "caption": []}
    for i in range(n):
        w, h = COCO_SIZES[i % len(COCO_SIZES)]
        im = Image.new("RGB", (w, h), tuple(int(c) for c in rng.integers(0, 255, 3)))
        draw = ImageDraw.Draw(im)
        for _ in range(12):  # a few objects, so the JPEG is photo-sized rather than flat
            x0, y0 = int(rng.integers(0, w - 60)), int(rng.integers(0, h - 60))
            draw.rectangle([x0, y0, x0 + int(rng.integers(20, 200)), y0 + int(rng.integers(20, 200))],
                           fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        path = folder / f"{i:012d}.jpg"
        im.save(path, format="JPEG", quality=90)
        obj = OBJECTS[i % len(OBJECTS)]
        common = {"image_id": i, "image_file": path.name, "image_path": str(path)}
        rows["pope"].append({"sample_id": f"pope-{i}", "task": "pope", **common,
                             "question": f"Is there a {obj} in the image?", "label": "yes" if i % 2 else "no",
                             "question_id": i, "object": obj})
        rows["caption"].append({"sample_id": f"caption-{i}", "task": "caption", **common,
                                "question": "Describe this image in detail.", "label": None, "question_id": None,
                                "object": None})
    out = {}
    for task, variants in (("pope", ["question"]), ("caption", ["control", "question"])):
        sample = pl.DataFrame(rows[task], schema_overrides={"question_id": pl.Int64, "label": pl.Utf8,
                                                            "object": pl.Utf8})
        for variant in variants:
            manifest = render_variant(sample, variant, folder / task / f"{variant}.parquet", render_cfg, task)
            out[(task, variant)] = (sample, manifest)
    return out


# --- running the phases -------------------------------------------------------------------------------------


class MemoryPoll:
    """Device-wide GPU memory in use (what nvidia-smi shows), polled in a thread: vLLM's engine lives in another
    process, so torch's own counters here cannot see it."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._thread = None

    def __enter__(self):
        import torch

        if torch.cuda.is_available():
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self):
        import torch

        while not self._stop.is_set():
            free, total = torch.cuda.mem_get_info()
            self.peak = max(self.peak, total - free)
            self._stop.wait(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def gib(self) -> float | None:
        return self.peak / 2**30 if self._thread is not None else None


def phase_jobs(cfg: dict, model: str, entry: dict, backend: str, task: str, settings: list[str], tokens: int):
    """One Job per setting of a phase: config.yaml's decoding, seed, inference settings and task config, the
    answer length fixed by the benchmark."""
    from pii.inference.job import Job

    jobs = []
    for setting in settings:
        job_cfg = {f"models.{model}": entry, f"tasks.{task}": {**cfg["tasks"][task], "max_new_tokens": tokens},
                   f"settings.{setting}": cfg["settings"][setting], "decoding": cfg["decoding"],
                   "seed": cfg["seed"], "inference": {**cfg["inference"], "backend": backend}}
        jobs.append(Job(task=task, model=model, setting=setting, cfg=job_cfg))
    return jobs


def phase_requests(inputs: dict, jobs: list, n: int) -> list:
    """``n`` requests, split evenly between the jobs' settings, each on its own image (so no engine can reuse
    another request's image tokens)."""
    from pii.inference.job import build_requests


    per = n // len(jobs)
    requests = []
    for k, job in enumerate(jobs):
        sample, manifest = inputs[(job.task, job.setting_cfg["image"])]
        part = sample.slice(k * per, per)
        requests += build_requests(part, manifest, job)
    return requests


PHASES = {"pope": ("pope", ["hybrid", "prompt_in_image"]), "caption": ("caption", ["control", "prompt_in_image"])}


def run_phases(engine: str, make_backend, cfg, model, entry, inputs, n, tokens, work: Path, set_min_tokens=None):
    """Both phases through one engine: {phase: measurement}. The pipeline's own batching, sorting, checkpoints and
    row building (run_requests); the unit fingerprint is not computed (it would hash the weights)."""
    from pii.inference.runner import run_requests


    out = {}
    for phase, (task, settings) in PHASES.items():
        jobs = phase_jobs(cfg, model, entry, engine, task, settings, tokens[phase])
        requests = phase_requests(inputs, jobs, n)
        backend = make_backend(jobs[0])
        if set_min_tokens:
            set_min_tokens(tokens[phase])
        if not out:  # warm-up, on the short POPE answers: first-call allocations and kernel choices
            backend.run(requests[:2], 0)
            sync()
        t0 = time.perf_counter()
        rows, facts = run_requests(jobs[0], requests, backend, work / f"{engine}-{model}-{phase}",
                                         fp=f"bench-{engine}-{phase}")
        sync()
        wall = time.perf_counter() - t0
        n_tokens = int(rows["n_response_tokens"].sum())
        out[phase] = {"n": len(rows), "tokens": tokens[phase], "wall_s": wall, "s_per_req": wall / len(rows),
                      "req_s": len(rows) / wall, "tok_s": n_tokens / wall, "batches": facts["n_batches"],
                      "fixed_length": int((rows["n_response_tokens"] == tokens[phase]).sum()),
                      "p_yes": int(rows["p_yes"].is_not_null().sum())}
    return out


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def fix_length(lm, tokens: int) -> None:
    """generate() starts from the model's generation config and overrides only what it is given, so this holds
    every answer to exactly max_new_tokens (EOS suppressed until then)."""
    lm.model.generation_config.min_new_tokens = tokens


def bench_transformers(cfg, model, entry, inputs, n, tokens, work: Path, device) -> dict:
    import torch

    from pii.inference import vlm
    from pii.inference.backends import TransformersBackend

    free_gpu()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with MemoryPoll() as mem:
        t0 = time.perf_counter()
        lm = vlm.load_model(model, entry, device=device)
        startup = time.perf_counter() - t0
        out = run_phases("transformers", lambda job, lm=lm: TransformersBackend(job, lm=lm), cfg, model, entry,
                         inputs, n, tokens, work, set_min_tokens=lambda k, lm=lm: fix_length(lm, k))
    peak = None
    if device.type == "cuda":
        peak = max(mem.gib or 0.0, torch.cuda.max_memory_reserved() / 2**30)
    lm = None  # free the model before the vLLM engine loads its own copy
    free_gpu()
    return {"startup_s": startup, "peak_gib": peak, **out}


def bench_vllm(cfg, model, entry, inputs, n, tokens, work: Path, engine_args: dict) -> dict:
    from pii.inference import vllm_engine
    from pii.inference.backends import VLLMBackend

    free_gpu()
    entry = {**entry}
    inference = {**cfg["inference"], "vllm": {**(cfg["inference"].get("vllm") or {}), "engine": engine_args}}
    cfg = {**cfg, "inference": inference}
    engine = vllm_engine.VLLMEngine(vllm_engine.vllm_python(inference["vllm"]))
    # Every answer of exactly max_tokens: the requests also carry min_tokens = max_tokens and ignore_eos, so random
    # weights cannot stop early (vLLM's min_tokens holds back the stop ids as well)
    pipeline_values = vllm_engine.sampling_values
    vllm_engine.sampling_values = lambda decoding, max_new_tokens: {
        **pipeline_values(decoding, max_new_tokens), "min_tokens": int(max_new_tokens), "ignore_eos": True}
    try:
        with MemoryPoll() as mem:
            t0 = time.perf_counter()
            backend = VLLMBackend(phase_jobs(cfg, model, entry, "vllm", "pope", ["hybrid"], 1)[0], engine)
            backend.start()
            startup = time.perf_counter() - t0
            out = run_phases("vllm", lambda job: VLLMBackend(job, engine), cfg, model, entry, inputs, n, tokens,
                             work)
    finally:
        vllm_engine.sampling_values = pipeline_values
        engine.close()
    return {"startup_s": startup, "peak_gib": mem.gib, "version": engine.info.get("vllm"), **out}


# --- report -------------------------------------------------------------------------------------------------


def fmt_time(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def print_results(results: dict, units: list[dict], device: str) -> None:
    print(f"\n{'engine':<13}{'model':<12}{'phase':<9}{'requests':>9}{'tokens':>7}{'wall s':>9}{'req/s':>9}"
          f"{'out tok/s':>11}{'peak GPU GiB':>14}{'start s':>9}")
    for (engine, family), r in results.items():
        for phase in PHASES:
            m = r[phase]
            peak = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.1f}"
            print(f"{engine:<13}{family:<12}{phase:<9}{m['n']:>9}{m['tokens']:>7}{m['wall_s']:>9.2f}"
                  f"{m['req_s']:>9.2f}{m['tok_s']:>11.1f}{peak:>14}{r['startup_s']:>9.1f}")
            if m["fixed_length"] != m["n"]:
                print(f"  warning: {m['n'] - m['fixed_length']} of {m['n']} answers not of the fixed length")
    print("(start s: vlm.load_model from the page cache for transformers, engine start-up for vLLM; peak GPU: "
          "device-wide, for vLLM mostly the KV cache it reserves)")
    print("\nconfig.yaml's matrix:")
    print("\n".join(describe_matrix(units)))
    print(f"extrapolated wall time on this {device}, jobs one after another, per-request times interpolated "
          f"at answer lengths {REAL_RUN_TOKENS}:")
    for plan, label in (("transformers", "all models on transformers"),
                        ("vllm", "vLLM where measured, others on transformers")):
        if not any(e == plan for e, _ in results):
            print(f"  {label:<46} n/a ({plan} not run)")
            continue
        total, notes = extrapolate(units, results, plan)
        print(f"  {label:<46} {fmt_time(total)}" + (f"  ({'; '.join(notes)})" if notes else ""))
    print("goal: config.yaml's whole matrix under 1:00:00 on one H100-class GPU")


# --- main ---------------------------------------------------------------------------------------------------


class Tail(logging.Handler):
    """The last pipeline log lines ([vllm] ones included), printed if the benchmark fails."""

    def __init__(self, n: int = 60):
        super().__init__(logging.INFO)
        self.lines = collections.deque(maxlen=n)

    def emit(self, record):
        self.lines.append(self.format(record))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny models on the CPU, a handful of requests")
    ap.add_argument("--config", default=str(ROOT / "config.yaml"), help="the config whose matrix is extrapolated")
    ap.add_argument("--n-hf", type=int, default=None, help="requests per phase and model on transformers (64)")
    ap.add_argument("--n-vllm", type=int, default=None, help="requests per phase and model on vLLM (64)")
    ap.add_argument("--pope-tokens", type=int, default=8)
    ap.add_argument("--caption-tokens", type=int, default=None, help="fixed caption length (200; --smoke 32)")
    ap.add_argument("--families", default="qwen2_5_vl,llava")
    ap.add_argument("--engines", default="transformers,vllm")
    ap.add_argument("--enforce-eager", action="store_true", help="vLLM without torch.compile and CUDA graphs")
    ap.add_argument("--models-dir", default=None, help="keep the built checkpoints here and reuse them")
    ap.add_argument("--require-vllm", action="store_true", default=bool(os.environ.get("PII_REQUIRE_VLLM")),
                    help="fail instead of skipping vLLM when its environment is missing (default with "
                         "PII_REQUIRE_VLLM set, as in CI)")
    ap.add_argument("--verbose", action="store_true", help="the pipeline's and vLLM's log on stderr")
    args = ap.parse_args()
    n_hf = args.n_hf or (4 if args.smoke else 64)
    n_vllm = args.n_vllm or (4 if args.smoke else 64)
    tokens = {"pope": args.pope_tokens, "caption": args.caption_tokens or (32 if args.smoke else 200)}

    import torch

    from pii.core.stage import PipelineError, log, setup_logging

    if args.verbose:
        setup_logging()
    else:  # warnings on stderr, the rest kept for a failure report
        log.setLevel(logging.INFO)
        log.propagate = False
        warn = logging.StreamHandler(sys.stderr)
        warn.setLevel(logging.WARNING)
        log.addHandler(warn)
        import transformers

        transformers.utils.logging.disable_progress_bar()
    tail = Tail()
    tail.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    log.addHandler(tail)

    if args.smoke:
        device, dtype = torch.device("cpu"), torch.float32
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # see CPU_ENGINE; the engine's worker inherits it
    elif torch.cuda.is_available():
        device, dtype = torch.device("cuda"), torch.bfloat16
    else:
        sys.exit("bench_gpu.py: no CUDA GPU here; run it on one, or use --smoke for the tiny CPU version")
    cfg = yaml.safe_load(Path(args.config).read_text(encoding="utf-8"))
    units = matrix_units(cfg)
    engine_args = dict(CPU_ENGINE) if args.smoke else dict((cfg["inference"].get("vllm") or {}).get("engine") or {})
    if args.enforce_eager:
        engine_args["enforce_eager"] = True
    engines = args.engines.split(",")
    gpu = torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU"
    print(f"bench_gpu: {'smoke (tiny models, CPU)' if args.smoke else 'full size'} on {gpu}; torch "
          f"{torch.__version__}; requests per phase and model: transformers {n_hf}, vLLM {n_vllm}; answer tokens "
          f"{tokens}; decoding {cfg['decoding']}; batch size {cfg['inference']['batch_size']}; vLLM engine "
          f"{engine_args}")
    if "vllm" in engines:
        from pii.inference.vllm_engine import vllm_python

        try:
            print(f"vLLM environment: {vllm_python(cfg['inference'].get('vllm'))}")
        except PipelineError as err:
            if args.require_vllm:
                raise
            print(f"vLLM skipped: {err}")
            engines.remove("vllm")
    t_start = time.perf_counter()
    results: dict = {}
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-gpu-")))
        models_dir = Path(args.models_dir) if args.models_dir else work / "models"
        try:
            t0 = time.perf_counter()
            inputs = make_inputs(work / "images", max(n_hf, n_vllm), cfg["render"])
            print(f"inputs: {max(n_hf, n_vllm)} COCO-sized images rendered in {time.perf_counter() - t0:.1f} s")
            for family in args.families.split(","):
                model = next(k for k, e in cfg["models"].items()
                             if e["family"] == family and e.get("image_preprocess", "checkpoint") == "checkpoint")
                folder = models_dir / f"{family}{'-tiny' if args.smoke else ''}"
                if not (folder / "config.json").is_file():
                    b = build_random(family, folder, device, dtype, tiny=args.smoke)
                    print(f"{family}: built {b['params'] / 1e6:,.0f} M parameters ({b['bytes'] / 2**30:.1f} GiB) in "
                          f"{b['total_s']:.1f} s (init {b['init_s']:.1f} s, save {b['save_s']:.1f} s)")
                entry = {**cfg["models"][model], "path": str(folder), "revision": None}
                if args.smoke:
                    entry["dtype"] = "float32"  # as the demo runs its tiny models in both engines
                if "transformers" in engines:
                    r = bench_transformers(cfg, model, entry, inputs, n_hf, tokens, work, device)
                    results[("transformers", family)] = r
                    print(f"{family}: transformers done ({sum(r[p]['wall_s'] for p in PHASES):.1f} s)")
                if "vllm" in engines:
                    r = bench_vllm(cfg, model, entry, inputs, n_vllm, tokens, work, engine_args)
                    results[("vllm", family)] = r
                    print(f"{family}: vLLM {r['version']} done ({sum(r[p]['wall_s'] for p in PHASES):.1f} s)")
                if not args.models_dir:
                    shutil.rmtree(folder, ignore_errors=True)  # 16 GB a model; the disk may hold only two
        except BaseException:
            print("bench_gpu failed; the last log lines:\n" + "\n".join(tail.lines), file=sys.stderr)
            raise
    print_results(results, units, gpu)
    print(f"\nbench_gpu finished in {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
