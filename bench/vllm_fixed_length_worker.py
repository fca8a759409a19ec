"""workflow/scripts/vllm_worker.py with every answer of a fixed length, for bench_gpu.py: each request's
``min_tokens`` is its ``max_tokens`` and EOS is ignored, so a model with random weights cannot stop early (vLLM's
``min_tokens`` holds back the stop ids as well). Everything else is the pipeline's worker, unchanged."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow" / "scripts"))

import vllm_worker  # noqa: E402

_generate = vllm_worker.generate


def generate(llm, msg: dict) -> dict:
    # vllm_worker.generate imports SamplingParams from vllm at each call; swapped only during the call, once the
    # engine is loaded (vLLM's own modules use the class in type unions when they are first imported)
    import vllm

    real = vllm.SamplingParams

    def fixed_length(*args, **kwargs):
        return real(*args, **{**kwargs, "min_tokens": int(kwargs.get("max_tokens") or 0), "ignore_eos": True})

    vllm.SamplingParams = fixed_length
    try:
        return _generate(llm, msg)
    finally:
        vllm.SamplingParams = real


vllm_worker.generate = generate

if __name__ == "__main__":  # vLLM spawns worker processes that import this module
    vllm_worker.main()
