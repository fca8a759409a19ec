"""Small inputs for the inference tests and benchmark: images, a sample table and a manifest, a job config."""

from __future__ import annotations

import errno
import hashlib
import json
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image, ImageDraw

from pii.core.tables import write_table

OBJECTS = ["dog", "car", "person", "chair", "cup", "bird", "tree", "bus", "cat", "boat", "clock", "kite"]
DEMO_MODELS = {"qwen2_5_vl": "qwen2_5_vl", "llava_1_5": "llava", "instructblip": "instructblip"}


def make_inputs(folder: Path, task: str = "pope", n: int = 6, seed: int = 0,
                size: tuple[int, int] | None = None) -> tuple[Path, Path]:
    """``n`` drawn images of varied sizes (or all ``size``, width x height), a sample table and a 'question' variant
    manifest in ``folder``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    samples, manifest = [], []
    for i in range(n):
        w, h = int(rng.integers(120, 260)), int(rng.integers(100, 220))
        if size:
            w, h = size
        im = Image.new("RGB", (w, h), tuple(int(c) for c in rng.integers(0, 255, 3)))
        draw = ImageDraw.Draw(im)
        for _ in range(3):
            x0, y0 = int(rng.integers(0, w - 30)), int(rng.integers(0, h - 30))
            draw.rectangle([x0, y0, x0 + 25, y0 + 25], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        path = folder / f"img{i:03d}.png"
        im.save(path)
        obj = OBJECTS[i % len(OBJECTS)]
        question = f"Is there a {obj} in the image?" + (" Answer briefly." if i % 3 == 0 else "")
        if task == "caption":
            question = "Describe this image in detail."
        sid = f"{task}-{i}"
        samples.append({"sample_id": sid, "task": task, "image_id": 1000 + i, "image_file": path.name,
                        "image_path": str(path), "question": question,
                        "label": ("yes" if i % 2 == 0 else "no") if task == "pope" else None,
                        "question_id": i if task == "pope" else None, "object": obj if task == "pope" else None})
        manifest.append({"sample_id": sid, "image_id": 1000 + i, "variant": "question", "source_path": str(path),
                         "image_path": str(path), "width": w, "height": h, "orig_width": w, "orig_height": h,
                         "strip_x0": 0, "strip_y0": h - 10, "strip_x1": w, "strip_y1": h, "text": question,
                         "font_file": "Arimo-Regular.ttf", "font_sha256": "0" * 64, "font_size": 26,
                         "image_sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
    sample_df = pl.DataFrame(samples, schema_overrides={"question_id": pl.Int64}, infer_schema_length=None)
    sample_path, manifest_path = folder / f"{task}_sample.parquet", folder / f"{task}_question.parquet"
    write_table(sample_df, sample_path, "sample")
    write_table(pl.DataFrame(manifest), manifest_path, "manifest")
    return sample_path, manifest_path


def job_config(model: str, family: str, path: str, task: str = "pope", setting: str = "hybrid",
               text_prompt: str | None = "{question}", batch_size: int = 4, max_new_tokens: int = 6,
               do_sample: bool = False, backend: str = "transformers", openai: dict | None = None) -> dict:
    """The canonical config subtrees an infer job receives (see the infer rule's params)."""
    task_cfg = {"max_new_tokens": max_new_tokens}
    if task == "caption":
        task_cfg["question"] = "Describe this image in detail."
    return {
        f"models.{model}": {"family": family, "path": path, "revision": None, "dtype": "float32"},
        f"tasks.{task}": task_cfg,
        f"settings.{setting}": {"image": "question", "text_prompt": text_prompt},
        "decoding": {"do_sample": do_sample, "temperature": 0.7, "top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0},
        "inference": {"backend": backend, "batch_size": batch_size,
                      "openai": openai or {"base_url": None, "api_key_env": "OPENAI_API_KEY", "concurrency": 2,
                                           "max_retries": 2, "timeout_s": 30}},
        "seed": 0,
    }


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(json.dumps(cfg, sort_keys=True))
    return path


def disk_full_at(write, call: int):
    """``write`` (infer.write_table) failing as a full disk (ENOSPC) at its ``call``-th call, and only then: the one
    stand-in of the resume tests, as a real full file system cannot be made here."""
    calls = []

    def write_or_fill_disk(df, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == call:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return write(df, path, *args, **kwargs)

    return write_or_fill_disk
