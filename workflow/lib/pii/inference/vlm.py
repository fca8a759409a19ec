"""Load a model of any registered family, build its prompts, generate in batches (the transformers backend).

A model entry of the config (``models.<name>``) names a ``family`` and a ``path`` (a Hugging Face id or a local
folder, optionally pinned by ``revision``). What differs between families (model class, processor, prompt format,
batched inputs, demo checkpoint, vision tower) lives in ``families/<family>.py``; this module is the same for all.
"""

from __future__ import annotations

import contextlib
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pii.core.config import is_local_model_path
from pii.core.stage import PipelineError, log
from pii.inference import families

ANSWER_WORDS = {"yes": ("Yes", "yes", "YES"), "no": ("No", "no", "NO")}
WORD_PREFIXES = ("", "\u2581", "\u0120", " ")  # none, SentencePiece space, byte-level space, literal space


@dataclass
class LoadedModel:
    """What ``load_model`` returns: the model, its processor and where / how it runs."""

    name: str
    family: str
    model: Any
    processor: Any
    device: Any
    dtype: Any
    path: str
    revision: str | None = None
    commit_hash: str | None = None
    answer_ids: dict = field(default_factory=dict)
    # set when there are no weights here (load_for_prompts); else the model's own
    generation_config: Any = None
    # one thread at a time in the tokenizer (processor_inputs runs a batch ahead in a worker thread)
    tokenizer_lock: Any = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def generation(self):
        return self.generation_config if self.model is None else self.model.generation_config


# --- loading ---------------------------------------------------------------------------------------------


def check_entry(name: str, entry: dict) -> None:
    """One-line errors naming the config key, before any heavy import."""
    family = entry.get("family")
    if family not in families.REGISTRY:
        raise PipelineError(f"models.{name}.family: '{family}' is not a supported family; use one of "
                            f"{families.names()}")
    path = str(entry.get("path") or "")
    if not path:
        raise PipelineError(f"models.{name}.path: empty; give a Hugging Face id like 'owner/name' or a local folder")
    if is_local_model_path(path) and not Path(path).expanduser().is_dir():
        raise PipelineError(f"models.{name}.path: local folder '{path}' does not exist; point it at a saved "
                            "checkpoint folder (the demo builds its own with the demo_models rule) or a hub id")


def pick_device(device=None):
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def pick_dtype(entry: dict, device):
    """The entry's dtype on GPU (bf16 by default); float32 on CPU, where half precision is slow or unsupported."""
    import torch

    if device.type == "cpu":
        return torch.float32
    name = entry.get("dtype") or "bfloat16"
    return "auto" if name == "auto" else getattr(torch, name)


def load_processor(family: str, path: str, revision: str | None = None):
    """The family's processor, left-padding its tokenizer."""
    return families.get(family).load_processor(path, revision)


def load_image_processor(name: str, entry: dict):
    """The image processor ``load_model`` would give this entry (image_preprocess applied), without the weights."""
    check_entry(name, entry)
    family = families.get(entry["family"])
    path = str(entry["path"])
    local = is_local_model_path(path)
    processor = family.load_processor(str(Path(path).expanduser()) if local else path,
                                      None if local else entry.get("revision"))
    if entry.get("image_preprocess", "checkpoint") == "pad":
        family.pad_to_square(processor)
    return family.image_processor(processor)


def load_model(name: str, entry: dict, device=None, attn_implementation: str | None = None) -> LoadedModel:
    """Load ``models.<name>`` (family, path, revision, dtype) in eval mode on ``device`` (default: cuda if present).
    ``attn_implementation="eager"`` is needed to read attention maps (sdpa returns none)."""
    check_entry(name, entry)
    family, path, revision = entry["family"], str(entry["path"]), entry.get("revision")
    if is_local_model_path(path):
        path = str(Path(path).expanduser())
        revision = None  # a folder has no revisions; from_pretrained would ignore it anyway
    device = pick_device(device)
    dtype = pick_dtype(entry, device)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if revision:
        kwargs["revision"] = revision
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if device.type == "cuda":  # straight onto the GPU: no 15 GB copy of a 7B model in host memory first
        kwargs["device_map"] = str(device)
    log.info("loading %s (%s) from %s%s on %s as %s", name, family, path, f"@{revision}" if revision else "",
             device, dtype)
    try:
        model = families.get(family).load_model(path, **kwargs)
        processor = families.get(family).load_processor(path, revision, model.config)
        if entry.get("image_preprocess", "checkpoint") == "pad":
            families.get(family).pad_to_square(processor)
    except OSError as err:
        raise PipelineError(f"models.{name}.path: cannot load '{path}' ({str(err).splitlines()[0]}); check the id, "
                            "revision and network access, or point it at a local checkpoint folder") from err
    model.to(device).eval()  # a no-op where device_map placed it
    commit = getattr(model.config, "_commit_hash", None) if not is_local_model_path(path) else None
    lm = LoadedModel(name=name, family=family, model=model, processor=processor, device=device,
                     dtype=next(model.parameters()).dtype, path=path, revision=revision, commit_hash=commit)
    lm.answer_ids = answer_token_ids(processor.tokenizer)
    return lm


def load_for_prompts(name: str, entry: dict) -> LoadedModel:
    """What the prompts, stop ids and Yes/No ids of ``models.<name>`` need, without the weights: the processor
    (image_preprocess applied) and the generation config, as ``load_model`` gives them; ``model`` is None. For a
    backend whose engine holds the weights elsewhere (vLLM)."""
    from transformers import GenerationConfig

    check_entry(name, entry)
    family, path, revision = entry["family"], str(entry["path"]), entry.get("revision")
    if is_local_model_path(path):
        path, revision = str(Path(path).expanduser()), None
    try:
        processor = families.get(family).load_processor(path, revision)
        if entry.get("image_preprocess", "checkpoint") == "pad":
            families.get(family).pad_to_square(processor)
        try:
            generation_config = GenerationConfig.from_pretrained(path, revision=revision or "main")
        except OSError:  # a checkpoint without generation_config.json: the tokenizer's eos alone stops
            generation_config = GenerationConfig()
    except OSError as err:
        raise PipelineError(f"models.{name}.path: cannot load '{path}' ({str(err).splitlines()[0]}); check the id, "
                            "revision and network access, or point it at a local checkpoint folder") from err
    lm = LoadedModel(name=name, family=family, model=None, processor=processor, device=None, dtype=None, path=path,
                     revision=revision, generation_config=generation_config)
    lm.answer_ids = answer_token_ids(processor.tokenizer)
    return lm


# --- prompts ---------------------------------------------------------------------------------------------


def build_prompt(family: str, processor, text: str | None) -> str:
    """The exact prompt string for one request (``text`` None: image-only user turn)."""
    return families.get(family).build_prompt(processor, text)


def prompt_length(lm: LoadedModel, prompt: str) -> int:
    """Text tokens of the prompt (image placeholders count once)."""
    return len(lm.tokenizer(prompt, add_special_tokens=False)["input_ids"])


def image_tokens(lm: LoadedModel, width: int, height: int) -> int:
    """The tokens the processor expands one width x height image into (Qwen2.5-VL's grow with the image, LLaVA's
    are 576 whatever its size), as the processor itself counts them (``_get_num_multimodal_tokens``, what vLLM asks
    too); 0 for a processor that cannot say (InstructBLIP's), which only leaves the batches sorted by text."""
    counter = getattr(lm.processor, "_get_num_multimodal_tokens", None)
    if counter is None or not width or not height:
        return 0
    try:
        return int(counter(image_sizes=[[int(height), int(width)]]).num_image_tokens[0])
    except (AttributeError, TypeError, ValueError, KeyError, IndexError):
        return 0


def kv_bytes_per_token(config, dtype_bytes: int) -> int:
    """KV-cache bytes of one token across the language model's layers: a key and a value per kv head (grouped-query
    attention has fewer kv heads than attention heads). ``config``: the model's (its text config is read)."""
    text = config.get_text_config()
    heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return 2 * text.num_hidden_layers * heads * head_dim * dtype_bytes


def answer_token_ids(tokenizer) -> dict[str, list[int]]:
    """Single-token spellings of Yes / No (case and leading-space variants) in this vocabulary."""
    vocab = tokenizer.get_vocab()
    ids: dict[str, list[int]] = {}
    for key, words in ANSWER_WORDS.items():
        found = {vocab[p + w] for w in words for p in WORD_PREFIXES if p + w in vocab}
        for w in words:
            enc = tokenizer.encode(w, add_special_tokens=False)
            # one token that spells the word (a vocabulary without 'O' encodes "NO" to just 'N')
            if len(enc) == 1 and tokenizer.decode(enc).strip() == w:
                found.add(enc[0])
        ids[key] = sorted(found)
    return ids


# --- generation ------------------------------------------------------------------------------------------


def open_image(path: str):
    """The image as RGB through the render stage's loader (EXIF orientation, alpha onto white, 16-bit scaled), so
    the 'original' variant, which is the source file itself, shows the pixels rendered into the other variants."""
    from PIL import Image

    from pii.core.images import load_rgb

    try:
        return load_rgb(path)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise PipelineError(f"{path}: cannot read image ({err}); rerun the render stage") from err


def processor_inputs(lm: LoadedModel, prompts: list[str], images: list) -> Any:
    """The processor's inputs for one left-padded batch, on the CPU: the part of a batch that can be made in a worker
    thread while the model runs the batch before it. The lock keeps the tokenizer to one thread at a time (the
    processor reconfigures a fast tokenizer's padding, which a decode in another thread must not meet)."""
    with lm.tokenizer_lock:
        return families.get(lm.family).batch_inputs(lm.processor, prompts, images)


def on_device(lm: LoadedModel, inputs) -> Any:
    """Processor inputs moved to the model's device, floating tensors in its dtype."""
    out = {}
    for key, value in inputs.items():
        if hasattr(value, "to"):
            value = value.to(lm.device)
            if value.is_floating_point():
                value = value.to(lm.dtype)
        out[key] = value
    return out


def prepare_inputs(lm: LoadedModel, prompts: list[str], images: list) -> Any:
    """Batch the processor inputs with left padding, on the model's device and dtype."""
    return on_device(lm, processor_inputs(lm, prompts, images))


def generation_kwargs(decoding: dict, max_new_tokens: int, kv_cache: str = "dynamic") -> dict:
    """Decoding overrides: every knob explicit, so the checkpoints' own generation defaults never apply.
    ``kv_cache``: inference.kv_cache (static: one cache of prompt + max_new_tokens slots, allocated before the first
    step, where the dynamic one concatenates every layer's whole cache again at each step)."""
    kwargs = {"max_new_tokens": int(max_new_tokens), "repetition_penalty": float(decoding["repetition_penalty"])}
    if kv_cache == "static":
        kwargs["cache_implementation"] = "static"
    if decoding["do_sample"]:
        kwargs.update(do_sample=True, temperature=float(decoding["temperature"]), top_p=float(decoding["top_p"]),
                      top_k=int(decoding["top_k"]))
    else:
        # greedy: neutral sampling knobs so no warper from the checkpoint's defaults is configured
        kwargs.update(do_sample=False, temperature=1.0, top_p=1.0, top_k=0)
    return kwargs


def stop_ids(lm: LoadedModel) -> set[int]:
    """The generation config's eos ids and the tokenizer's: where a response ends."""
    eos = lm.generation.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    if lm.tokenizer.eos_token_id is not None:
        eos.append(lm.tokenizer.eos_token_id)
    return set(eos)


def _pad_id(lm: LoadedModel) -> int:
    """The tokenizer's pad id, else the generation config's, else the first stop id."""
    for candidate in (lm.tokenizer.pad_token_id, lm.generation.pad_token_id):
        if candidate is not None:
            return int(candidate)
    return min(stop_ids(lm))


def p_yes_from_logits(logits, answer_ids: dict) -> list[float | None]:
    """P(Yes) / (P(Yes) + P(No)) per row of first-step logits, summing every single-token spelling."""
    # Untempered on purpose (T = 1): ``generate`` passes ``output_logits``, the raw logits before any logits
    # processor, so the answers may be sampled at decoding.temperature (0.7 in the paper) while P(yes) is the model's
    # own distribution. That is what AUROC and calibration (Brier, ECE) are defined on and what other evaluations
    # report; a tempered P(yes) would measure the decoding knob as much as the model (T < 1 pushes it to 0 or 1).
    # The scored files say so (pii.scoring.pope.P_YES_TEMPERATURE, metadata key p_yes_temperature).
    import torch

    if not answer_ids.get("yes") or not answer_ids.get("no"):
        return [None] * logits.shape[0]
    logp = torch.log_softmax(logits.float(), dim=-1)
    yes = torch.logsumexp(logp[:, answer_ids["yes"]], dim=-1)
    no = torch.logsumexp(logp[:, answer_ids["no"]], dim=-1)
    return [float(v) for v in torch.sigmoid(yes - no)]


@contextlib.contextmanager
def first_step_logits(model, wanted: bool = True):
    """Yields a list that receives the raw logits of generate's first step (the prefill's last position, float32,
    as ``output_logits`` gives them): a forward hook on the output embedding, so no later step's logits are kept
    (``output_logits`` keeps a batch x vocabulary tensor per step). Yields None when not wanted or the model has no
    output embedding to hook; the caller then falls back to ``output_logits``."""
    import torch

    head = model.get_output_embeddings() if wanted else None
    if head is None:
        yield None
        return
    kept: list = []

    def keep_first(_module, _args, output):
        if not kept:
            kept.append(output[:, -1, :].to(copy=True, dtype=torch.float32))

    handle = head.register_forward_hook(keep_first)
    try:
        yield kept
    finally:
        handle.remove()


def generate(lm: LoadedModel, prompts: list[str], images: list, max_new_tokens: int, decoding: dict, seed: int,
             want_p_yes: bool = False, inputs=None, kv_cache: str = "dynamic") -> list[dict]:
    """Generate for one batch (left padded). Returns per request: response, n_prompt_tokens, n_response_tokens,
    finish_reason, p_yes (from the first generated step's logits, no extra forward; None unless asked).
    ``inputs``: this batch's processor_inputs when they were made ahead (then ``images`` is not read)."""
    import torch

    inputs = on_device(lm, inputs if inputs is not None else processor_inputs(lm, prompts, images))
    # Explicit stop and pad ids: a checkpoint whose generation config lacks the tokenizer's eos (seen with
    # InstructBLIP) would otherwise run every caption to max_new_tokens.
    stops = stop_ids(lm)
    torch.manual_seed(seed)
    with torch.inference_mode(), first_step_logits(lm.model, want_p_yes) as first:
        out = lm.model.generate(**inputs, **generation_kwargs(decoding, max_new_tokens, kv_cache),
                                return_dict_in_generate=True,
                                output_logits=want_p_yes and first is None, eos_token_id=sorted(stops),
                                pad_token_id=_pad_id(lm))
    n_in = inputs["input_ids"].shape[1]
    new = out.sequences[:, n_in:].tolist()
    if want_p_yes:
        p_yes = p_yes_from_logits(out.logits[0] if first is None else first[0], lm.answer_ids)
    else:
        p_yes = [None] * len(prompts)
    results = []
    for row, tokens in enumerate(new):
        p = p_yes[row] if p_yes[row] is None or math.isfinite(p_yes[row]) else None
        results.append(response_row(lm, tokens, stops, int(inputs["attention_mask"][row].sum()), p))
    return results


def response_row(lm: LoadedModel, tokens: list[int], stops: set[int], n_prompt_tokens: int, p_yes, ended=False):
    """One request's result from its generated tokens: cut at the first stop id and decoded without special tokens
    (every backend that returns tokens uses this). ``ended``: the engine stopped it before max tokens."""
    cut = next((i for i, t in enumerate(tokens) if t in stops), None)
    kept = tokens if cut is None else tokens[:cut]
    with lm.tokenizer_lock:
        response = lm.tokenizer.decode(kept, skip_special_tokens=True).strip()
    return {
        "response": response,
        "n_prompt_tokens": int(n_prompt_tokens),
        "n_response_tokens": len(kept),
        "finish_reason": "stop" if cut is not None or ended else "length",
        "p_yes": p_yes,
    }
