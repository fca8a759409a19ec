"""The vLLM backend: one vLLM engine per infer job, loaded once for all of the model's units.

vLLM pins its own torch and transformers, so its engine runs in its own environment: ``VLLMEngine`` starts
``vllm_worker.py`` with that environment's Python (``inference.vllm.python``, else ``.venv-vllm`` of the project,
made by ``bash run.sh vllm-install``, else this Python when it has vLLM, as in the conda environment
``envs/vllm.yaml``) and sends it requests over a pipe. The engine is vLLM's offline ``vllm.LLM``, not a server.

Every request is the transformers backend's: the job builds the prompt string with the family's ``build_prompt``
and the processor of this environment, and sends it as text; the image is the same file (pre-padded by us for
``image_preprocess: pad``, as LLaVA's own processor pads); Qwen2.5-VL's ``min_pixels`` / ``max_pixels`` are sent
from the processor, so the image-token counts match. Decoding comes from the config alone (temperature, top_p,
top_k, repetition_penalty, max_tokens, stop ids and a seed per request, always sent; the checkpoint's
generation_config is not read). Responses are decoded and cut at the stop ids here, with the same tokenizer and rule
as the transformers backend, and P(yes) is computed from the untempered log-probabilities of the same Yes/No ids.

What differs: vLLM batches continuously, and its kernels are not batch-invariant, so a sampled row need not equal
the transformers backend's even with the same seed; greedy rows of the same model agree up to float rounding.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from pii import WORKFLOW_DIR
from pii.core.stage import PipelineError, log
from pii.inference.openai_backend import decoding_values, logsumexp

PROJECT = WORKFLOW_DIR.parent
WORKER = Path(__file__).resolve().with_name("vllm_worker.py")
DEFAULT_VENV_PYTHON = PROJECT / ".venv-vllm" / "bin" / "python"
INSTALL_HINT = "make it with: bash run.sh vllm-install (or set inference.vllm.python to a Python that has vLLM)"


def vllm_python(settings: dict | None) -> str:
    """The Python of the vLLM environment (see the module docstring for the order)."""
    configured = (settings or {}).get("python") or os.environ.get("PII_VLLM_PYTHON")
    if configured:
        path = Path(configured).expanduser()
        if not path.exists():
            raise PipelineError(f"inference.vllm.python: '{configured}' does not exist; {INSTALL_HINT}")
        return str(path)
    if DEFAULT_VENV_PYTHON.exists():
        return str(DEFAULT_VENV_PYTHON)
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    raise PipelineError(f"backend vllm: no vLLM environment ({DEFAULT_VENV_PYTHON.relative_to(PROJECT)} is "
                        f"missing and this Python has no vllm); {INSTALL_HINT}")


class VLLMEngine:
    """The worker process holding one ``vllm.LLM``; started by ``load`` and stopped by ``close``."""

    def __init__(self, python: str):
        self.python = python
        self.proc: subprocess.Popen | None = None
        self.info: dict = {}
        # padded images of image_preprocess: pad (see infer.VLLMBackend.image_file); removed by close
        self.scratch = tempfile.mkdtemp(prefix="pii-vllm-")

    def load(self, model: str, *, dtype: str, revision: str | None, seed: int, engine: dict,
             mm_processor_kwargs: dict | None) -> dict:
        env = {**os.environ, "VLLM_CONFIGURE_LOGGING": os.environ.get("VLLM_CONFIGURE_LOGGING", "1")}
        self.proc = subprocess.Popen([self.python, str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, encoding="utf-8", env=env,
                                     cwd=os.getcwd())
        threading.Thread(target=self._copy_log, args=(self.proc.stderr,), daemon=True).start()
        self.info = self.call({"op": "load", "model": model, "dtype": dtype, "revision": revision, "seed": seed,
                               "engine": engine, "mm_processor_kwargs": mm_processor_kwargs})
        log.info("vLLM %s engine loaded for %s (%s)", self.info["vllm"], model,
                 ", ".join(f"{k}={v}" for k, v in sorted(self.info["engine"].items()) if k not in ("model",
                                                                                                   "tokenizer")))
        return self.info

    @staticmethod
    def _copy_log(stream) -> None:
        for line in stream:
            line = line.rstrip()
            if line:
                log.info("[vllm] %s", line)

    def call(self, msg: dict) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            raise PipelineError(f"the vLLM worker ({self.python}) is not running; see [vllm] lines in the log")
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=30)
            raise PipelineError(f"the vLLM worker ({self.python}) exited with code {self.proc.returncode} during "
                                f"'{msg['op']}'; see the [vllm] lines above in the log")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise PipelineError(f"vLLM {msg['op']} failed: {reply.get('error')}")
        return reply

    def generate(self, requests: list[dict], sampling: dict, stop_token_ids: list[int],
                 logprob_token_ids: list[int] | None) -> list[dict]:
        return self.call({"op": "generate", "requests": requests, "sampling": sampling,
                          "stop_token_ids": stop_token_ids, "logprob_token_ids": logprob_token_ids})["results"]

    def close(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)
        if self.proc is None:
            return
        try:
            if self.proc.poll() is None:
                self.call({"op": "close"})
                self.proc.wait(timeout=60)
        except (PipelineError, OSError, subprocess.TimeoutExpired, ValueError):
            self.proc.kill()
        self.proc = None


def sampling_values(decoding: dict, max_new_tokens: int) -> dict:
    """The decoding values every request carries: all of them, greedy included, so nothing is left to vLLM's or the
    checkpoint's defaults; those the openai backend sends, with top_k off as 0 (the engine's SamplingParams in 0.32,
    and transformers' spelling) and the task's token limit."""
    return {**decoding_values(decoding, top_k_off=0), "max_tokens": int(max_new_tokens)}


def pad_to_square(image, image_mean):
    """LLaVA's expand-to-square, as transformers' LlavaImageProcessor(do_pad=True) does it: the image centred on a
    square of its longer side, filled with the processor's mean colour (each channel int(mean * 255))."""
    from PIL import Image

    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new("RGB", (side, side), tuple(int(m * 255) for m in image_mean))
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def qwen_pixel_limits(image_processor) -> dict | None:
    """Qwen2-VL-style processors' pixel bounds, which set how many image tokens a picture gets."""
    size = getattr(image_processor, "size", None) or {}
    low = getattr(image_processor, "min_pixels", None) or size.get("shortest_edge")
    high = getattr(image_processor, "max_pixels", None) or size.get("longest_edge")
    if low is None or high is None or not hasattr(image_processor, "merge_size"):
        return None
    return {"min_pixels": int(low), "max_pixels": int(high)}


def p_yes_from_logprobs(first: dict, answer_ids: dict) -> float | None:
    """P(Yes) / (P(Yes) + P(No)) from the first step's log-probabilities of the answer ids, as vlm.p_yes_from_logits
    computes it from the logits (untempered: vLLM's default logprobs_mode is raw_logprobs)."""
    yes = [first[str(i)] for i in answer_ids.get("yes", []) if str(i) in first]
    no = [first[str(i)] for i in answer_ids.get("no", []) if str(i) in first]
    if not yes or not no:
        return None
    margin = logsumexp(yes) - logsumexp(no)
    if not math.isfinite(margin):
        return None
    # the logistic function, written so that exp never overflows
    return 1.0 / (1.0 + math.exp(-margin)) if margin >= 0 else math.exp(margin) / (1.0 + math.exp(margin))
