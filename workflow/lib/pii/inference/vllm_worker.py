"""The vLLM engine of one infer job, in the vLLM environment (``.venv-vllm`` or ``envs/vllm.yaml``).

vLLM pins its own torch and transformers, so it cannot share the pipeline's environment; the job (runner.py, through
vllm_engine.py) starts this script once with that environment's Python and talks to it over its stdin and stdout,
one JSON object a line. The engine is vLLM's offline ``vllm.LLM`` (no server), loaded once for all of the job's
units. Everything that decides a row is sent by the job: the exact prompt string, the image file, the decoding
values, the stop ids, the seed of each request. The checkpoint's generation_config is never read
(``generation_config="vllm"``), so no sampling default can creep in. vLLM's own log goes to stderr, which the job
copies into its log.

Messages (job -> worker, then one reply each):
- ``{"op": "load", "model": path, "dtype": ..., "engine": {...vllm.LLM arguments}, "mm_processor_kwargs": {...}}``
  -> ``{"ok": true, "vllm": version, "engine": the arguments used}``
- ``{"op": "generate", "requests": [{"prompt", "image", "seed"}], "sampling": {...}, "stop_token_ids": [...],
  "logprob_token_ids": [...] or null}`` -> ``{"ok": true, "results": [{"token_ids", "finish_reason",
  "n_prompt_tokens", "first_logprobs": {id: logprob}}]}``. ``sampling`` may also hold ``min_tokens`` and
  ``ignore_eos`` (bench/bench_gpu.py's fixed-length answers; the pipeline never sends them).
- ``{"op": "close"}`` -> ``{"ok": true}``, then the worker exits.
An error is ``{"ok": false, "error": "..."}``; the job raises it with the model's name.
"""

import json
import os
import sys
import traceback
from pathlib import Path

# started by path in vLLM's environment: the library's root (workflow/lib) on the path for pii.core.images
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def mm_limits(model: str, revision: str | None) -> dict:
    """One image a prompt and, for a model that also takes videos, none: vLLM otherwise reserves memory for (and
    warms up with) a video of the largest size."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model, **({"revision": revision} if revision else {}))
    takes_video = getattr(config, "video_token_id", None) is not None
    return {"image": 1, "video": 0} if takes_video else {"image": 1}


def engine_arguments(msg: dict) -> dict:
    """vllm.LLM's arguments: the config's engine settings over the pipeline's fixed ones."""
    args = {"model": msg["model"], "tokenizer": msg["model"], "dtype": msg.get("dtype") or "auto",
            "generation_config": "vllm", "limit_mm_per_prompt": mm_limits(msg["model"], msg.get("revision")), "seed": int(msg.get("seed", 0))}
    if msg.get("revision"):
        args["revision"] = msg["revision"]
    if msg.get("mm_processor_kwargs"):
        args["mm_processor_kwargs"] = msg["mm_processor_kwargs"]
    if on_cpu():
        # The CPU engine crashes on per-request seeds with chunked prefill ("CPU Generator does not use offset"),
        # and by default reserves most of the machine's memory for its KV cache.
        args.update(enable_chunked_prefill=False, kv_cache_memory_bytes=1 << 30)
    args.update({k: v for k, v in (msg.get("engine") or {}).items() if v is not None})
    return args


def load(msg: dict):
    import vllm

    args = engine_arguments(msg)
    llm = vllm.LLM(**args)
    return llm, {"ok": True, "vllm": vllm.__version__, "engine": args}


def generate(llm, msg: dict) -> dict:
    from vllm import SamplingParams

    from pii.core.images import load_rgb

    sampling = msg["sampling"]
    ids = msg.get("logprob_token_ids")
    inputs, params = [], []
    for req in msg["requests"]:
        inputs.append({"prompt": req["prompt"], "multi_modal_data": {"image": load_rgb(req["image"])}})
        params.append(SamplingParams(
            n=1, seed=int(req["seed"]), temperature=float(sampling["temperature"]), top_p=float(sampling["top_p"]),
            top_k=int(sampling["top_k"]), repetition_penalty=float(sampling["repetition_penalty"]),
            max_tokens=int(sampling["max_tokens"]), stop_token_ids=list(msg["stop_token_ids"]),
            min_tokens=int(sampling.get("min_tokens", 0)), ignore_eos=bool(sampling.get("ignore_eos", False)),
            # the job decodes the tokens itself, with the tokenizer the transformers backend uses
            detokenize=False, skip_special_tokens=True,
            logprobs=len(ids) if ids else None, logprob_token_ids=list(ids) if ids else None,
        ))
    outputs = llm.generate(inputs, params, use_tqdm=False)
    results = []
    for out in outputs:
        gen = out.outputs[0]
        first = {}
        if ids and gen.logprobs:
            first = {str(t): float(lp.logprob) for t, lp in gen.logprobs[0].items() if t in set(ids)}
        results.append({"token_ids": list(gen.token_ids), "finish_reason": gen.finish_reason,
                        "n_prompt_tokens": len(out.prompt_token_ids), "first_logprobs": first})
    return {"ok": True, "results": results}


def main() -> None:
    # The protocol owns the real stdout; anything vLLM or its libraries print goes to stderr.
    protocol = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    llm = None
    for line in sys.stdin:
        msg = json.loads(line)
        try:
            if msg["op"] == "load":
                llm, reply = load(msg)
            elif msg["op"] == "generate":
                reply = generate(llm, msg)
            elif msg["op"] == "close":
                protocol.write(json.dumps({"ok": True}) + "\n")
                break
            else:
                reply = {"ok": False, "error": f"unknown op {msg['op']!r}"}
        except Exception as err:  # reported to the job, which stops with it
            traceback.print_exc()
            reply = {"ok": False, "error": f"{type(err).__name__}: {err}"}
        protocol.write(json.dumps(reply) + "\n")


if __name__ == "__main__":  # vLLM spawns worker processes that import this module
    main()
