"""The local backends of the infer job: ``transformers`` (the weights in this process, vlm.py) and ``vllm`` (the
engine in vLLM's own environment, vllm_engine.py), both building prompts, images, stop ids and strip visibility from
the model's own processor; ``make_backend`` picks one (or the ``openai`` backend, openai_backend.py) and
``SharedModel`` loads a job's model once for all its units."""


import hashlib
import platform
from pathlib import Path

from pii.core.stage import PipelineError, log
from pii.inference.job import SEEN_COLUMNS, Job, Request, finite_or_none

_PROMPT_MODELS: dict[tuple, object] = {}


def prompt_builder(job: Job, weights: dict | None = None):
    """A backend that can build prompts but holds no weights."""
    if job.backend_name == "openai":
        return make_backend(job)  # opens no connection until it sends
    from pii.core.config import is_local_model_path
    from pii.inference import vlm

    entry, path = job.entry, str(job.entry["path"])
    local = is_local_model_path(path)
    path = str(Path(path).expanduser()) if local else path
    # the processor of the commit the key names, when it is known
    revision = None if local else (weights or {}).get("commit") or entry.get("revision")
    key = (entry["family"], path, revision)
    if key not in _PROMPT_MODELS:
        try:
            processor = vlm.load_processor(entry["family"], path, revision)
        except OSError as err:
            raise PipelineError(f"models.{job.model}.path: cannot load the processor of '{path}' "
                                f"({str(err).splitlines()[0]}); check the id, revision and network access, or point "
                                "it at a local checkpoint folder") from err
        _PROMPT_MODELS[key] = vlm.LoadedModel(name=job.model, family=entry["family"], model=None, processor=processor,
                                              device=None, dtype=None, path=path, revision=revision)
    return TransformersBackend(job, lm=_PROMPT_MODELS[key])


def library_versions() -> dict:
    """The versions that can change a row without changing the key (recorded in every file's metadata)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "tokenizers"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


# --- the transformers backend -------------------------------------------------------------------------------


class TransformersBackend:
    """One unit's requests through a loaded model (``lm``: passed in to share one model between a job's units)."""

    name = "transformers"

    def __init__(self, job: Job, device=None, lm=None):
        from pii.inference import vlm

        self.vlm = vlm
        self.job = job
        self.lm = lm or vlm.load_model(job.model, job.entry, device=device)
        self.want_p_yes = job.wants_p_yes
        self._views: dict = {}
        self._views_unknown = False
        self._image_tokens: dict[tuple, int] = {}

    def prompt(self, req: Request) -> str:
        return self.vlm.build_prompt(self.lm.family, self.lm.processor, req.text_prompt)

    def sort_key(self, req: Request) -> int:
        """The request's real length, text and image tokens: batches of similar lengths pad least, and with no
        text prompt (the prompt-in-image settings) the image is all that differs."""
        size = (req.width, req.height)
        if size not in self._image_tokens:
            self._image_tokens[size] = self.vlm.image_tokens(self.lm, *size)
        return self.vlm.prompt_length(self.lm, self.prompt(req)) + self._image_tokens[size]

    def processor_inputs(self, chunk: list[Request]):
        """The CPU half of a batch: its images read and through the processor."""
        prompts = [self.prompt(r) for r in chunk]
        images = [self.vlm.open_image(r.image_path) for r in chunk]
        return self.vlm.processor_inputs(self.lm, prompts, images)

    # what run_requests calls in a worker thread for the next batch while the model generates this one (None: the
    # backend prepares nothing ahead)
    prepare = processor_inputs

    def run(self, chunk: list[Request], seed: int, prepared=None) -> list[dict]:
        prompts = [self.prompt(r) for r in chunk]
        results = self.vlm.generate(self.lm, prompts, [], self.job.task_cfg["max_new_tokens"], self.job.decoding,
                                    seed, want_p_yes=self.want_p_yes, kv_cache=self.job.inference.get("kv_cache", "dynamic"),
                                    inputs=prepared if prepared is not None else self.processor_inputs(chunk))
        for req, res in zip(chunk, results, strict=True):
            res.update(self.strip_seen(req))
        return results

    def check_memory(self, batches, max_new_tokens: int) -> None:
        """On a GPU, log the KV cache the planned batches need at most (each batch's longest request plus the answer
        tokens) against the free memory, and warn with a batch size that fits where it does not: the out-of-memory
        halving would find it too, by failing first."""
        if self.lm.device.type != "cuda" or not batches:
            return
        import torch

        per_token = self.vlm.kv_bytes_per_token(self.lm.model.config, self.lm.dtype.itemsize)
        longest = max(self.sort_key(r) for _, chunk in batches for r in chunk) + int(max_new_tokens)
        largest = max(len(chunk) for _, chunk in batches)
        free, _ = torch.cuda.mem_get_info(self.lm.device)
        need, fits = kv_cache_need(per_token, longest, largest, free)
        message = (f"KV cache for a batch of {largest} requests of up to {longest} tokens: {need / 2**30:.1f} GiB, "
                   f"{free / 2**30:.1f} GiB free on {self.lm.device}")
        if fits < largest:
            log.warning("%s; expect the out-of-memory halving, or set models.%s.batch_size: %d", message,
                        self.job.model, max(fits, 1))
        else:
            log.info("%s (room for a batch of %d)", message, fits)

    def strip_seen(self, req: Request) -> dict:
        """How much of the strip and of the photo this model's processor passes on, and the text size in its input
        pixels, measured through the processor (Family.strip_geometry, memoised per canvas size); None where the
        image has no strip (the strip columns) or the processor cannot be measured."""
        key = (req.width, req.height, req.strip_box, req.font_size)
        if key not in self._views:
            view = None
            if req.width and req.height:
                from pii.inference import families

                try:
                    view = families.get(self.lm.family).strip_geometry(self.lm.processor, req.width, req.height,
                                                                        req.strip_box, req.font_size)
                except PipelineError as err:
                    if not self._views_unknown:  # once per job: the reason is the processor's, not the image's
                        log.warning("strip visibility not recorded (null) for this model: %s", err)
                    self._views_unknown = True
            self._views[key] = {name: finite_or_none(getattr(view, name)) if view else None for name in SEEN_COLUMNS}
        return self._views[key]

    def metadata(self) -> dict:
        import torch
        import transformers

        lm = self.lm
        return {"model_path": lm.path, "revision": lm.revision, "commit_hash": lm.commit_hash, "family": lm.family,
                "device": str(lm.device), "dtype": str(lm.dtype).replace("torch.", ""),
                "kv_cache": self.job.inference.get("kv_cache", "dynamic"),
                "gpu": torch.cuda.get_device_name(lm.device) if lm.device.type == "cuda" else None,
                "versions": {"torch": torch.__version__, "transformers": transformers.__version__}}


class VLLMBackend(TransformersBackend):
    """One unit's requests through the job's vLLM engine (vllm_engine.py): prompts, images, stop ids, Yes/No ids
    and strip visibility exactly as the transformers backend has them, from the same processor; the weights live in
    the engine."""

    name = "vllm"
    prepare = None  # the engine reads and processes the images itself

    def check_memory(self, batches, max_new_tokens: int) -> None:
        """Nothing to check: the engine sizes its own cache (inference.vllm.engine.gpu_memory_utilization)."""

    def __init__(self, job: Job, engine):
        from pii.inference import vlm

        self.vlm = vlm
        self.job = job
        self.lm = vlm.load_for_prompts(job.model, job.entry)
        self.engine = engine
        self.want_p_yes = job.wants_p_yes
        self._views: dict = {}
        self._views_unknown = False
        self._image_tokens: dict[tuple, int] = {}
        self._padded: dict[str, str] = {}

    def start(self) -> None:
        """Load the engine unless an earlier unit of the job did."""
        from pii.inference import families
        from pii.inference.vllm_engine import qwen_pixel_limits

        if self.engine.proc is not None:
            return
        entry = self.job.entry
        self.engine.load(self.lm.path, dtype=entry.get("dtype") or "bfloat16", revision=self.lm.revision,
                         seed=self.job.seed, engine=(self.job.inference.get("vllm") or {}).get("engine") or {},
                         mm_processor_kwargs=qwen_pixel_limits(families.get(self.lm.family).image_processor(
                             self.lm.processor)))

    def image_file(self, path: str) -> str:
        """The image the engine opens: the file itself, or for image_preprocess: pad a lossless PNG of it padded to a
        square (vLLM's processor does not pad), written once per image into the engine's scratch folder."""
        if self.job.entry.get("image_preprocess", "checkpoint") != "pad":
            return path
        if path not in self._padded:
            from pii.inference import families
            from pii.inference.vllm_engine import pad_to_square

            processor = families.get(self.lm.family).image_processor(self.lm.processor)
            dest = Path(self.engine.scratch, f"{hashlib.sha256(path.encode()).hexdigest()[:20]}.png")
            pad_to_square(self.vlm.open_image(path), processor.image_mean).save(dest, format="PNG")
            self._padded[path] = str(dest)
        return self._padded[path]

    def run(self, chunk: list[Request], seed: int) -> list[dict]:
        from pii.inference.vllm_engine import p_yes_from_logprobs, sampling_values

        self.start()
        stops = self.vlm.stop_ids(self.lm)
        # one seed per request, seed + its sorted position: the rows do not depend on how requests are batched
        requests = [{"prompt": self.prompt(r), "image": self.image_file(r.image_path), "seed": seed + i}
                    for i, r in enumerate(chunk)]
        ids = self.lm.answer_ids if self.want_p_yes and all(self.lm.answer_ids.values()) else None
        outs = self.engine.generate(requests, sampling_values(self.job.decoding, self.job.task_cfg["max_new_tokens"]),
                                    sorted(stops), sorted(ids["yes"] + ids["no"]) if ids else None)
        results = []
        for req, sent, out in zip(chunk, requests, outs, strict=True):
            p_yes = p_yes_from_logprobs(out["first_logprobs"], ids) if ids else None
            row = self.vlm.response_row(self.lm, out["token_ids"], stops, out["n_prompt_tokens"], p_yes,
                                        ended=out["finish_reason"] == "stop")
            row.update(seed=sent["seed"], **self.strip_seen(req))
            results.append(row)
        return results

    def metadata(self) -> dict:
        import transformers

        info = self.engine.info
        return {"model_path": self.lm.path, "revision": self.lm.revision, "commit_hash": None,
                "family": self.lm.family, "device": None, "dtype": info.get("engine", {}).get("dtype"),
                "gpu": None, "vllm": {"version": info.get("vllm"), "python": self.engine.python,
                                      "engine": {k: v for k, v in (info.get("engine") or {}).items()
                                                 if k not in ("model", "tokenizer")}},
                "versions": {"transformers (prompts)": transformers.__version__, "vllm": info.get("vllm")}}


def make_backend(job: Job, device=None, lm=None):
    if job.backend_name == "openai":
        from pii.inference.openai_backend import OpenAIBackend

        return OpenAIBackend(job)
    if job.backend_name == "transformers":
        return TransformersBackend(job, device=device, lm=lm)
    if job.backend_name == "vllm":
        from pii.inference.vllm_engine import VLLMEngine, vllm_python

        return VLLMBackend(job, VLLMEngine(vllm_python(job.inference.get("vllm"))))
    raise PipelineError(f"inference.backend: '{job.backend_name}' is not one of ['transformers', 'openai', 'vllm']")


class SharedModel:
    """Backends for the units of one job that load the model (or start the vLLM engine) once, on the first unit
    that needs it; ``close`` stops the engine."""

    def __init__(self, device=None):
        self.device = device
        self.lm = None
        self.engine = None

    def backend(self, job: Job):
        if job.backend_name == "vllm":
            from pii.inference.vllm_engine import VLLMEngine, vllm_python

            if self.engine is None:
                self.engine = VLLMEngine(vllm_python(job.inference.get("vllm")))
            return VLLMBackend(job, self.engine)
        if job.backend_name != "transformers":
            return make_backend(job, device=self.device)
        if self.lm is None:
            from pii.inference import vlm

            self.lm = vlm.load_model(job.model, job.entry, device=self.device)
        return make_backend(job, lm=self.lm)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()


def kv_cache_need(per_token: int, tokens: int, batch: int, free: int, share: float = 0.8) -> tuple[int, int]:
    """Bytes of KV cache a batch of ``batch`` requests of ``tokens`` tokens needs, and the largest batch whose cache
    fits in ``share`` of ``free`` bytes (the rest: activations, the vision encoder's, the allocator's slack)."""
    per_request = per_token * tokens
    return batch * per_request, int(free * share // per_request)
