"""Stage: inference. One job = one model and decoding repeat: every task x setting of it ("unit"), each unit's
requests through one backend, once, into its own output file. The model is loaded once per job, and only when some
unit has requests left to run.

Requests are sorted by prompt length and cut into batches (``models.<m>.batch_size`` or ``inference.batch_size``).
Each finished batch is checkpointed outside the declared outputs, in ``results/inference/.partial/...``, stamped with
a fingerprint of what can change the unit's rows (its config less retries, timeouts and the like) and its inputs; a
rerun after a crash or SIGKILL reuses matching checkpoints and redoes only the rest. A finished unit is kept in
``results/inference/.cache/...`` with its fingerprint, so when the job reruns (one setting edited, a task's token
limit changed) every unit whose fingerprint still matches is copied, not generated again. A CUDA
out-of-memory error halves the batch and retries. Batch ``i`` is generated with the torch seed ``seed + (position
of its first request in the sorted order)``, so a resumed run gives the same rows.
Decoding repeats (``inference.repeats``): repeat ``r`` runs the same requests again with its own base seed,
``repeat_seed(seed, r)``: repeat 0 uses the config seed itself (so ``repeats: 1`` is the single run of the paper and
its rows are those of a run without repeats), repeat r > 0 a seed derived from (seed, r) by sha256. Each repeat is
its own job, output files and checkpoint folders, so raising ``repeats`` runs only the new repeats' jobs.
Before anything runs, every image is checked against the sha256 its manifest recorded, so a PNG deleted or replaced
after rendering fails the job with the command that renders it again.

Backends: ``transformers`` (local weights, see vlm.py) and ``openai`` (an OpenAI-compatible server, see
openai_backend.py). One unit runs without Snakemake too: ``python infer.py --help``.
"""


import argparse
import hashlib
import json
import math
import os
import platform
import re
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
from openai_backend import row_settings
from pipeline_io import (
    PipelineError,
    atomic_path,
    config_hash,
    log,
    read_metadata,
    read_table,
    records_frame,
    run_main,
    run_stage,
    setup_logging,
    sha256_file,
    write_table,
)

COLUMNS = ["sample_id", "task", "model", "setting", "repeat", "image_id", "question", "label", "text_prompt", "prompt",
           "image_path", "response", "n_prompt_tokens", "n_response_tokens", "finish_reason", "seed", "p_yes",
           "strip_visible_fraction", "photo_visible_fraction", "text_px_in_model", "text_legible"]
COLUMN_TYPES = {"repeat": pl.Int64, "p_yes": pl.Float64, "strip_visible_fraction": pl.Float64,
                "photo_visible_fraction": pl.Float64, "text_px_in_model": pl.Float64, "text_legible": pl.Boolean}
# What the model's processor passed on (Family.strip_geometry), written by the backends that know the processor.
SEEN_COLUMNS = ("strip_visible_fraction", "photo_visible_fraction", "text_px_in_model")
# label and text_prompt are stored as Arrow ``string`` (the other text columns as ``large_string``), as inference
# files always have been; a column of nulls only (no label in the caption task, no text turn) has the null type.
ARROW_TYPES = {"label": pa.string(), "text_prompt": pa.string()}


@dataclass
class Request:
    sample_id: str
    task: str
    image_id: int
    question: str
    label: str | None
    text_prompt: str | None
    image_path: str
    image_sha256: str | None = None
    # the manifest row's geometry: image size, strip box (None without a strip) and rendered font size
    width: int | None = None
    height: int | None = None
    strip_box: tuple | None = None
    font_size: int | None = None


@dataclass
class Job:
    """Everything one inference job needs, decoded from its canonical config subtrees."""

    task: str
    model: str
    setting: str
    cfg: dict
    # The run's own ``inference.openai`` block (retries, timeout, concurrency, the key's variable, the full
    # base_url), read at run time: none of it enters params or fingerprints. None: taken from ``cfg``.
    settings: dict | None = None
    # The decoding repeat (0-based): the job's base seed is ``repeat_seed(seed, repeat)``.
    repeat: int = 0

    @property
    def entry(self) -> dict:
        return self.cfg[f"models.{self.model}"]

    @property
    def task_cfg(self) -> dict:
        return self.cfg[f"tasks.{self.task}"]

    @property
    def setting_cfg(self) -> dict:
        return self.cfg[f"settings.{self.setting}"]

    @property
    def wants_p_yes(self) -> bool:
        """POPE tasks record P(yes) (tasks/pope.py)."""
        import tasks

        return tasks.kind_of(self.task, self.task_cfg).wants_p_yes

    @property
    def decoding(self) -> dict:
        return self.cfg["decoding"]

    @property
    def inference(self) -> dict:
        return self.cfg["inference"]

    @property
    def openai(self) -> dict:
        return {**(self.inference.get("openai") or {}), **(self.settings or {})}

    @property
    def legible_text_px(self) -> float | None:
        """inference.legible_text_px: the text height in model pixels from which text_legible is true."""
        value = self.inference.get("legible_text_px")
        return None if value is None else float(value)

    @property
    def seed(self) -> int:
        return int(self.cfg["seed"])

    @property
    def run_seed(self) -> int:
        """The base seed of this repeat's batches (the config seed for repeat 0)."""
        return repeat_seed(self.seed, self.repeat)

    @property
    def batch_size(self) -> int:
        """Requests per batch (and checkpoint): the model's, else the backend's (vLLM batches continuously inside
        one call, so it takes many more at once), else inference.batch_size."""
        vllm_batch = (self.inference.get("vllm") or {}).get("batch_size") if self.backend_name == "vllm" else None
        return int(self.entry.get("batch_size") or vllm_batch or self.inference["batch_size"])

    @property
    def backend_name(self) -> str:
        """models.<m>.backend, else inference.backend."""
        return self.entry.get("backend") or self.inference["backend"]


def repeat_seed(seed: int, repeat: int) -> int:
    """The base seed of decoding repeat ``repeat``: the config seed itself for repeat 0 (unchanged single-run
    behaviour), else the first 31 bits of sha256("<seed>/repeat/<repeat>"). Below 2**31 like the config seed, so
    base seed + batch position stays a valid torch, numpy and server seed."""
    if int(repeat) < 0:
        raise PipelineError(f"repeat {repeat}: repeats are numbered from 0")
    if int(repeat) == 0:
        return int(seed)
    digest = hashlib.sha256(f"{int(seed)}/repeat/{int(repeat)}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


# --- requests ----------------------------------------------------------------------------------------------


def format_text_prompt(template: str | None, question: str) -> str | None:
    """The text turn of a setting: its template with {question} filled in, or None (no text turn)."""
    if template is None:
        return None
    return template.replace("{question}", question)


def rerender_hint(manifest_name: str) -> str:
    """The command that renders a manifest's images again. A plain ``snakemake`` sees nothing to do: the PNGs are
    not declared outputs, only the manifest is. The new manifest is newer than the jobs that read it, so the next
    plain run redoes those."""
    return (f"render it again with: snakemake {manifest_name} --forcerun render_variants (plus your run's options), "
            "then run snakemake again")


def build_requests(sample: pl.DataFrame, manifest: pl.DataFrame, job: Job, manifest_name: str = "manifest"):
    """One request per sample row, with the image of the setting's variant from the manifest (its first row for
    the sample)."""
    by_id: dict = {}
    for img in manifest.iter_rows(named=True):
        by_id.setdefault(img["sample_id"], img)
    missing = [s for s in sample["sample_id"].to_list() if s not in by_id]
    if missing:
        raise PipelineError(f"{manifest_name}: no image for sample '{missing[0]}' ({len(missing)} missing); "
                            + rerender_hint(manifest_name))
    template = job.setting_cfg["text_prompt"]
    requests = []
    for row in sample.iter_rows(named=True):
        img = by_id[row["sample_id"]]
        label, sha = row.get("label"), img.get("image_sha256")
        requests.append(Request(
            sample_id=str(row["sample_id"]), task=job.task, image_id=int(row["image_id"]),
            question=str(row["question"]), label=None if label is None else str(label),
            text_prompt=format_text_prompt(template, str(row["question"])), image_path=str(img["image_path"]),
            image_sha256=None if sha is None else str(sha), width=img.get("width"), height=img.get("height"),
            strip_box=None if img.get("strip_x0") is None else
            tuple(int(img[k]) for k in ("strip_x0", "strip_y0", "strip_x1", "strip_y1")),
            font_size=img.get("font_size"),
        ))
    return requests


def check_images(requests: list[Request], manifest_name: str) -> None:
    """Every image exists and is the one rendered (sha256 as in the manifest); each file is hashed once."""
    seen: set[str] = set()
    for r in requests:
        if r.image_path in seen:
            continue
        seen.add(r.image_path)
        where = f"{r.image_path} (sample {r.sample_id}, {manifest_name})"
        try:
            digest = sha256_file(r.image_path)
        except OSError as err:
            raise PipelineError(f"{where}: cannot read image ({err.strerror or err}); "
                                + rerender_hint(manifest_name)) from None
        if r.image_sha256 and digest != r.image_sha256:
            raise PipelineError(f"{where}: the file changed after rendering (sha256 {digest[:12]}..., manifest "
                                f"{r.image_sha256[:12]}...); " + rerender_hint(manifest_name))


def row_config(cfg: dict) -> dict:
    """The job's config less what cannot change a row (see openai_backend.row_settings)."""
    entry = next((v for k, v in cfg.items() if k.startswith("models.")), None)
    return {**cfg, "inference": row_settings(cfg["inference"], entry)}


def fingerprint(job: Job, requests: list[Request], prompts: list[str] | None = None,
                weights: dict | None = None, order: list[str] | None = None) -> str:
    """What a checkpoint or kept unit must match to be reused: what can change the unit's rows (the config less
    retries and the like, integral floats as ints so ``4`` and ``4.0`` are one key; the repeat), the weights
    (``weights``, see model_identity: a local folder's file contents or a hub checkpoint's commit), the exact prompt
    strings the backend builds (``prompts``: a change to prompt-building code shows here), the inputs, and the
    order the requests run in (``order``, sample ids: each request's seed is its sorted position)."""
    weights = model_identity(job) if weights is None else weights
    cfg = plain_numbers(row_config(job.cfg))
    # the revision is in ``weights`` as the commit it names: 'main' and its pinned sha are one key; a local
    # folder is its files' contents, wherever it lies (a checkpoint moved to another disk keeps its units)
    dropped = {"revision", "path"} if "files" in weights else {"revision"}
    cfg[f"models.{job.model}"] = {k: v for k, v in cfg[f"models.{job.model}"].items() if k not in dropped}
    # text_legible is recomputed whenever a unit is written or copied (with_legibility)
    cfg["inference"] = {k: v for k, v in cfg["inference"].items() if k != "legible_text_px"}
    inputs = [(r.sample_id, r.image_sha256 or r.image_path, r.text_prompt) for r in requests]
    return config_hash({"cfg": cfg, "task": job.task, "model": job.model, "setting": job.setting,
                        "repeat": job.repeat, "inputs": inputs, "prompts": prompts, "columns": COLUMNS,
                        "weights": weights, "order": order})


def plain_numbers(value):
    """``value`` with every integral float as an int, recursively: YAML's ``4.0`` and ``4`` give the same rows."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: plain_numbers(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_numbers(v) for v in value]
    return value


# --- what identifies the weights ----------------------------------------------------------------------------

# sha256 of model files by (absolute path, size, mtime in ns), for this process and, when the job has a cache
# folder, in a small JSON file there (never in the model's folder, which is only read)
HASH_MEMO = "model-file-hashes.json"
_FILE_HASHES: dict[str, list] = {}
_COMMITS: dict[tuple[str, str], str | None] = {}
_PROMPT_MODELS: dict[tuple, object] = {}


def model_folder_files(path: str) -> list[Path] | None:
    """The files of a local checkpoint folder, sorted; hidden ones (a download tool's ``.cache/`` notes, ``.git``)
    left out, as they are no part of the checkpoint. None for a hub id."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        return None
    return sorted(f for f in folder.rglob("*")
                  if f.is_file() and not any(p.startswith(".") for p in f.relative_to(folder).parts))


def local_model_inputs(path: str, built=()) -> list[str]:
    """The infer rule's inputs for a user's local checkpoint folder: its files, so that weights replaced in place
    rerun the job (a folder's own time does not change when a file in it is rewritten); the job then decides by
    content which units to generate. Nothing for a hub id or a folder a rule builds (already an input)."""
    if path in built:
        return []
    return [str(f) for f in model_folder_files(path) or []]


def hash_memo(cache: Path | None) -> Path | None:
    """Where file hashes are kept between jobs: the root of the unit cache (the nearest ``.cache`` folder above
    the kept unit, results/inference/.cache/), else beside the kept unit; None without a cache."""
    if cache is None:
        return None
    return next((p / HASH_MEMO for p in cache.parents if p.name == ".cache"), cache.parent / HASH_MEMO)


def _load_hashes(memo: Path | None) -> None:
    if memo is None or not memo.is_file():
        return
    try:
        stored = json.loads(memo.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # a damaged memo only costs hashing again
        return
    for key, entry in stored.items():
        _FILE_HASHES.setdefault(key, entry)


def _save_hashes(memo: Path) -> None:
    _load_hashes(memo)  # keep what a concurrent job (another model) wrote meanwhile
    try:
        with atomic_path(memo) as tmp:
            Path(tmp).write_text(json.dumps(_FILE_HASHES, sort_keys=True), encoding="utf-8")
    except OSError as err:
        log.warning("could not keep the model file hashes in %s (%s); they are computed again next time", memo, err)


def file_sha256(f: Path) -> tuple[str, bool]:
    """(sha256 of ``f``, whether it was computed now): a file of unchanged size and mtime is not read again."""
    st = f.stat()
    key = str(f.resolve())
    entry = _FILE_HASHES.get(key)
    if entry and entry[0] == st.st_size and entry[1] == st.st_mtime_ns:
        return entry[2], False
    if st.st_size > 1 << 27:
        log.info("hashing %s (%.1f GB) once; later runs read its hash from the memo", f, st.st_size / 1e9)
    digest = sha256_file(f)
    _FILE_HASHES[key] = [st.st_size, st.st_mtime_ns, digest]
    return digest, True


def model_files(path: str, memo: Path | None = None) -> list | None:
    """A local checkpoint folder's files as (name, sha256): weights replaced in place (a new fine-tune, a rebuilt
    demo model) make every unit of that model run again, while a copy with new file times (tar, rsync, a fresh
    clone) or a ``touch`` does not. Hashes are memoised by (size, mtime) in ``memo``, so a 15 GB checkpoint is read
    once. None for a hub id (its commit identifies it, see resolve_commit)."""
    files = model_folder_files(path)
    if files is None:
        return None
    _load_hashes(memo)
    folder, computed, out = Path(path).expanduser(), False, []
    for f in files:
        digest, new = file_sha256(f)
        computed |= new
        out.append((f.relative_to(folder).as_posix(), digest))
    if computed and memo is not None:
        _save_hashes(memo)
    return out


def resolve_commit(model: str, entry: dict) -> str | None:
    """The commit a hub checkpoint's ``revision`` (default main) names: itself when it is a 40-hex sha, else asked of
    the hub, else (offline) read from the local Hugging Face cache; None when neither knows it. Once per job: an
    unpinned branch's commit is logged once."""
    path, revision = str(entry["path"]), entry.get("revision") or "main"
    if re.fullmatch(r"[0-9a-f]{40}", revision):
        return revision
    if (path, revision) in _COMMITS:
        return _COMMITS[(path, revision)]
    commit, source = None, None
    try:
        from huggingface_hub import HfApi

        commit, source = HfApi().model_info(path, revision=revision, timeout=10).sha, "the hub"
    except Exception:  # offline, no network, unknown id: the local cache may still know the branch
        commit, source = _cached_commit(path, revision), "the local Hugging Face cache"
    _COMMITS[(path, revision)] = commit
    if commit is None:
        log.warning("models.%s: could not resolve revision '%s' of %s to a commit (offline and not in the local "
                    "cache); its units are keyed by the branch name", model, revision, path)
    else:
        log.info("models.%s: revision '%s' of %s is commit %s (from %s); pin it with models.%s.revision: %s",
                 model, revision, path, commit, source, model, commit)
    return commit


def _cached_commit(path: str, revision: str) -> str | None:
    """The commit the local Hugging Face cache holds for ``revision`` (its refs file), or None."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(path, "config.json", revision=revision)
    except Exception:
        return None
    match = re.search(r"[/\\]snapshots[/\\]([0-9a-f]{40})[/\\]", found) if isinstance(found, str) else None
    return match.group(1) if match else None


def model_identity(job: Job, memo: Path | None = None) -> dict:
    """What identifies the unit's weights: a local folder's files by content, a hub checkpoint's commit (the branch
    name when it cannot be resolved), or for the openai backend the configured revision (the server decides)."""
    from config_check import is_local_model_path

    files = model_files(job.entry["path"], memo)
    if files is not None:
        return {"files": files}
    revision = job.entry.get("revision") or "main"
    if job.backend_name == "openai" or is_local_model_path(str(job.entry["path"])):
        return {"revision": revision}  # a served model, or a folder that is not there (its loading fails)
    commit = resolve_commit(job.model, job.entry)
    return {"commit": commit} if commit else {"revision": revision}


def prompt_builder(job: Job, weights: dict | None = None):
    """A backend that can build prompts but holds no weights."""
    if job.backend_name == "openai":
        return make_backend(job)  # opens no connection until it sends
    import vlm
    from config_check import is_local_model_path

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
        import vlm

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
                import families

                try:
                    view = families.get(self.lm.family).strip_geometry(self.lm.processor, req.width, req.height,
                                                                        req.strip_box, req.font_size)
                except PipelineError as err:
                    if not self._views_unknown:  # once per job: the reason is the processor's, not the image's
                        log.warning("strip visibility not recorded (null) for this model: %s", err)
                    self._views_unknown = True
            self._views[key] = {name: _finite(getattr(view, name)) if view else None for name in SEEN_COLUMNS}
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
    """One unit's requests through the job's vLLM engine (vllm_backend.py): prompts, images, stop ids, Yes/No ids
    and strip visibility exactly as the transformers backend has them, from the same processor; the weights live in
    the engine."""

    name = "vllm"
    prepare = None  # the engine reads and processes the images itself

    def check_memory(self, batches, max_new_tokens: int) -> None:
        """Nothing to check: the engine sizes its own cache (inference.vllm.engine.gpu_memory_utilization)."""

    def __init__(self, job: Job, engine):
        import vlm

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
        import families
        from vllm_backend import qwen_pixel_limits

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
            import families
            from vllm_backend import pad_to_square

            processor = families.get(self.lm.family).image_processor(self.lm.processor)
            dest = Path(self.engine.scratch, f"{hashlib.sha256(path.encode()).hexdigest()[:20]}.png")
            pad_to_square(self.vlm.open_image(path), processor.image_mean).save(dest, format="PNG")
            self._padded[path] = str(dest)
        return self._padded[path]

    def run(self, chunk: list[Request], seed: int) -> list[dict]:
        from vllm_backend import p_yes_from_logprobs, sampling_values

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


def is_legible(text_px: float | None, legible_text_px: float | None) -> bool | None:
    """Whether text of ``text_px`` model pixels (font size) counts as legible: at least ``legible_text_px``
    (inference.legible_text_px); None when either is unknown."""
    if text_px is None or legible_text_px is None or not math.isfinite(text_px):
        return None
    return float(text_px) >= float(legible_text_px)


def _finite(value) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def make_backend(job: Job, device=None, lm=None):
    if job.backend_name == "openai":
        from openai_backend import OpenAIBackend

        return OpenAIBackend(job)
    if job.backend_name == "transformers":
        return TransformersBackend(job, device=device, lm=lm)
    if job.backend_name == "vllm":
        from vllm_backend import VLLMEngine, vllm_python

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
            from vllm_backend import VLLMEngine, vllm_python

            if self.engine is None:
                self.engine = VLLMEngine(vllm_python(job.inference.get("vllm")))
            return VLLMBackend(job, self.engine)
        if job.backend_name != "transformers":
            return make_backend(job, device=self.device)
        if self.lm is None:
            import vlm

            self.lm = vlm.load_model(job.model, job.entry, device=self.device)
        return make_backend(job, lm=self.lm)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()


# --- the cache of finished units ----------------------------------------------------------------------------


def cached_unit(cache: Path | None, fp: str, requests: list[Request],
                prompts: list[str] | None = None) -> tuple[pl.DataFrame | None, str | None]:
    """The kept rows of this exact unit, checked before they are copied: the file reads back (schema included),
    carries this fingerprint, and holds one row per request, in the job's order, with the prompt the backend
    builds. Returns (rows, None), or (None, why not); why is None when nothing is kept."""
    if cache is None or not cache.is_file():
        return None, None
    try:
        if read_metadata(cache).get("fingerprint") != fp:
            return None, "another fingerprint: the config, inputs, prompts or weights changed"
        rows = read_table(cache, "inference")
    except Exception as err:  # an unreadable or foreign file is regenerated and overwritten
        return None, f"unreadable ({str(err).splitlines()[0] if str(err) else type(err).__name__})"
    if len(rows) != len(requests):
        return None, f"{len(rows)} rows for {len(requests)} requests"
    ids = rows["sample_id"].to_list()
    for i, (sid, req) in enumerate(zip(ids, requests, strict=True)):
        if sid != req.sample_id:
            return None, f"row {i} is sample '{sid}', the request there is '{req.sample_id}'"
    if prompts is not None:
        for i, (got, want) in enumerate(zip(rows["prompt"].to_list(), prompts, strict=True)):
            if got != want:
                return None, f"the prompt of sample '{ids[i]}' differs from the one the backend builds now"
    return rows, None


def copy_file(src: Path, dest: str | os.PathLike) -> None:
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)


# --- batching, OOM back-off, checkpoints -------------------------------------------------------------------


def oom_errors() -> tuple[type[BaseException], ...]:
    try:
        import torch
    except ImportError:
        return ()
    return (torch.cuda.OutOfMemoryError,)


def run_with_oom_backoff(run, chunk: list[Request], start: int, seed: int, batch_size: int, prepared=None):
    """Run ``chunk`` (planned batch at sorted position ``start``) in pieces of ``batch_size``; on CUDA OOM halve
    the piece size and retry. Returns (rows, batch size that worked). Piece seed = seed + its sorted position.
    ``prepared``: the whole chunk's inputs made ahead (backend.prepare), used while the chunk runs in one piece."""
    rows: list[dict] = []
    done = 0
    while done < len(chunk):
        piece = chunk[done:done + batch_size]
        piece_seed = seed + start + done
        whole = prepared is not None and len(piece) == len(chunk)
        try:
            out = run(piece, piece_seed, prepared) if whole else run(piece, piece_seed)
        except oom_errors() as err:
            if batch_size == 1:
                raise PipelineError(f"CUDA out of memory at batch size 1 ({str(err).splitlines()[0]}); use a "
                                    "bigger GPU or a smaller dtype (models.<name>.dtype)") from err
            batch_size = max(1, batch_size // 2)
            log.warning("CUDA out of memory with %d requests; halving the batch to %d and retrying",
                        len(piece), batch_size)
            _free_cuda()
            continue
        for r in out:
            r.setdefault("seed", piece_seed)
        rows.extend(out)
        done += len(piece)
    return rows, batch_size


def _free_cuda() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def kv_cache_need(per_token: int, tokens: int, batch: int, free: int, share: float = 0.8) -> tuple[int, int]:
    """Bytes of KV cache a batch of ``batch`` requests of ``tokens`` tokens needs, and the largest batch whose cache
    fits in ``share`` of ``free`` bytes (the rest: activations, the vision encoder's, the allocator's slack)."""
    per_request = per_token * tokens
    return batch * per_request, int(free * share // per_request)


def plan_batches(requests: list[Request], sort_key, batch_size: int) -> list[tuple[int, list[Request]]]:
    """Requests sorted by prompt length (ties: sample_id), cut into batches; (sorted start position, batch)."""
    ordered = sorted(requests, key=lambda r: (sort_key(r), r.sample_id))
    return [(i, ordered[i:i + batch_size]) for i in range(0, len(ordered), batch_size)]


class Prefetch:
    """Each batch's inputs made one batch ahead in a worker thread (``prepare``: backend.prepare, or None for a
    backend that prepares nothing), so reading and processing images overlaps the model's generation. A batch that
    an out-of-memory halving has split is prepared again piece by piece; an error in preparing is raised when its
    batch's turn comes, as it would be without the worker."""

    def __init__(self, prepare, chunks: list[list[Request]]):
        self.prepare, self.chunks = prepare, chunks
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare") if prepare else None
        self.pending: dict[int, Future] = {}
        self._submit(0)

    def _submit(self, index: int) -> None:
        if self.pool and index < len(self.chunks):
            self.pending[index] = self.pool.submit(self.prepare, self.chunks[index])

    def take(self, index: int, batch_size: int):
        """Batch ``index``'s inputs (None without a worker, or when the batch will run in smaller pieces), and the
        next batch started."""
        future = self.pending.pop(index, None)
        if future is None:
            return None
        prepared = future.result()
        self._submit(index + 1)
        return prepared if len(self.chunks[index]) <= batch_size else None

    def close(self) -> None:
        if self.pool:
            self.pool.shutdown(wait=True, cancel_futures=True)


def batch_file(partial: Path, index: int) -> Path:
    return partial / f"batch-{index:05d}.parquet"


def load_checkpoints(partial: Path, fp: str, batches) -> dict[int, pl.DataFrame]:
    """Checkpoints of this exact job (fingerprint and batch contents match); anything else is deleted."""
    if not partial.is_dir():
        return {}
    done: dict[int, pl.DataFrame] = {}
    stale = 0
    for path in sorted(partial.glob("batch-*.parquet")):
        try:
            meta = read_metadata(path)
            index = int(meta.get("batch", -1))
            ok = meta.get("fingerprint") == fp and 0 <= index < len(batches)
            ok = ok and meta.get("sample_ids") == [r.sample_id for r in batches[index][1]]
            df = read_table(path, "inference") if ok else None
        except Exception:  # an unreadable leftover is as stale as a mismatching one
            ok, df = False, None
        if ok:
            done[index] = df
        else:
            stale += 1
            path.unlink(missing_ok=True)
    for leftover in partial.glob(".*.part"):  # temporary files of a write that was killed
        leftover.unlink(missing_ok=True)
    if stale:
        log.info("discarded %d stale checkpoint(s) from another config or input in %s", stale, partial)
    return done


def rows_frame(job: Job, chunk: list[Request], results: list[dict], prompts: list[str]) -> pl.DataFrame:
    records = []
    for req, res, prompt in zip(chunk, results, prompts, strict=True):
        records.append({
            "sample_id": req.sample_id, "task": req.task, "model": job.model, "setting": job.setting,
            "repeat": int(job.repeat), "image_id": req.image_id, "question": req.question, "label": req.label, "text_prompt": req.text_prompt,
            "prompt": res.get("prompt", prompt), "image_path": req.image_path, "response": res["response"],
            "n_prompt_tokens": int(res["n_prompt_tokens"]), "n_response_tokens": int(res["n_response_tokens"]),
            "finish_reason": res["finish_reason"], "seed": int(res["seed"]),
            "p_yes": None if res.get("p_yes") is None else float(res["p_yes"]),
            **{name: res.get(name) for name in SEEN_COLUMNS},
            "text_legible": is_legible(res.get("text_px_in_model"), job.legible_text_px),
        })
    return records_frame(records, COLUMNS, COLUMN_TYPES)


def with_legibility(rows: pl.DataFrame, legible_text_px: float | None) -> pl.DataFrame:
    """text_legible from text_px_in_model and the configured threshold. Applied to every unit as it is written,
    kept copies included: the threshold is no part of the fingerprint, so editing it regenerates nothing."""
    legible = [is_legible(px, legible_text_px) for px in rows["text_px_in_model"].to_list()]
    return rows.with_columns(pl.Series("text_legible", legible, dtype=pl.Boolean))


def run_requests(job: Job, requests: list[Request], backend, partial: Path,
                 fp: str | None = None, batches: list | None = None) -> tuple[pl.DataFrame, dict]:
    """Run every request once (this job's repeat), batch by batch with checkpoints; returns the rows in sample
    order and run facts. ``fp`` and ``batches``: the unit's fingerprint and batch plan when the caller has them."""
    batch_size = job.batch_size
    batches = batches or plan_batches(requests, backend.sort_key, batch_size)
    fp = fp or fingerprint(job, requests)
    done = load_checkpoints(partial, fp, batches)
    if done:
        n_rows = sum(len(d) for d in done.values())
        log.info("resuming: %d of %d batches (%d of %d samples) already done in %s", len(done), len(batches),
                 n_rows, len(requests), partial)
    partial.mkdir(parents=True, exist_ok=True)
    todo = [i for i in range(len(batches)) if i not in done]
    n_todo = sum(len(batches[i][1]) for i in todo)
    t0, n_new, effective = time.monotonic(), 0, batch_size
    ahead = Prefetch(getattr(backend, "prepare", None), [batches[i][1] for i in todo])
    try:
        for k, index in enumerate(todo, 1):
            start, chunk = batches[index]
            prompts = [backend.prompt(r) for r in chunk]
            prepared = ahead.take(k - 1, effective)
            results, effective = run_with_oom_backoff(backend.run, chunk, start, job.run_seed, effective, prepared)
            df = rows_frame(job, chunk, results, prompts)
            write_table(df, batch_file(partial, index), "inference", types=ARROW_TYPES,
                        metadata={"fingerprint": fp, "batch": index, "sample_ids": [r.sample_id for r in chunk]})
            done[index] = df
            n_new += len(chunk)
            rate = n_new / max(time.monotonic() - t0, 1e-9)
            eta = (n_todo - n_new) / rate if rate > 0 else float("nan")
            log.info("batch %d/%d done (%d/%d samples this run, %d/%d total): %.2f samples/s, ETA %s", k, len(todo),
                     n_new, n_todo, sum(len(d) for d in done.values()), len(requests), rate, _fmt_eta(eta))
    finally:
        ahead.close()
    frames = [done[i] for i in range(len(batches))]
    # relaxed: a checkpoint whose label or text prompt column holds only nulls has the null type
    result = pl.concat(frames, how="vertical_relaxed") if frames else rows_frame(job, [], [], [])
    order = {r.sample_id: i for i, r in enumerate(requests)}
    position = np.array([order.get(sid, len(order)) for sid in result["sample_id"].to_list()], dtype=np.int64)
    result = result[np.argsort(position, kind="stable")]
    if len(result) != len(requests) or result["sample_id"].is_duplicated().any():
        raise PipelineError(f"{partial}: checkpoints do not add up to one row per sample; delete the folder and rerun")
    facts = {"n_batches": len(batches), "resumed_batches": len(batches) - len(todo), "final_batch_size": effective}
    return result, facts


def _fmt_eta(seconds: float) -> str:
    if seconds != seconds:  # nan
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


# --- the job ------------------------------------------------------------------------------------------------


def run_job(job: Job, sample_path, manifest_path, out, partial, threads: int | None = None, device=None,
            backend=None, cache=None, models: SharedModel | None = None) -> pl.DataFrame:
    """One unit: its requests, resumed from ``partial`` checkpoints, written to ``out``. With ``cache`` (a file
    path), a kept copy of this exact unit is copied instead of generating, and a finished unit is kept there."""
    if threads:
        try:
            import torch

            torch.set_num_threads(int(threads))
        except ImportError:
            pass
    sample = read_table(sample_path, "sample")
    source = job.task_cfg.get("source") or job.task  # a task may ask the questions of another's sample
    sample = sample.filter(pl.col("task") == source) if "task" in sample.columns else sample
    if sample.is_empty():
        raise PipelineError(f"{sample_path}: no sampled row of task '{source}'; rerun sampling "
                            f"(snakemake {sample_path} --forcerun)")
    manifest = read_table(manifest_path, "manifest")
    requests = build_requests(sample, manifest, job, manifest_name=str(manifest_path))
    check_images(requests, str(manifest_path))
    cache = Path(cache) if cache else None
    # the key needs no weights: file hashes (memoised), the commit, and prompts from the processor alone
    weights = model_identity(job, hash_memo(cache))
    builder = backend or prompt_builder(job, weights)
    prompts = [builder.prompt(r) for r in requests]
    batches = plan_batches(requests, builder.sort_key, job.batch_size)
    fp = fingerprint(job, requests, prompts, weights, [r.sample_id for _, chunk in batches for r in chunk])
    kept, why_not = cached_unit(cache, fp, requests, prompts)
    unit = f"{job.task} / {job.model} / {job.setting}, repeat {job.repeat}"
    if kept is not None:
        relabelled = with_legibility(kept, job.legible_text_px)
        if relabelled.equals(kept):
            copy_file(cache, out)
        else:  # only the legibility threshold changed
            write_table(relabelled, out, "inference", metadata=read_metadata(cache), types=ARROW_TYPES)
            copy_file(Path(out), cache)
        log.info("%s: unchanged, copied from %s", unit, cache)
        return relabelled
    if why_not:
        log.info("%s: kept copy %s not used (%s); generating again", unit, cache, why_not)
    log.info("%s / %s / %s, repeat %d (seed %d): %d requests, backend %s, batch size %d", job.task, job.model,
             job.setting, job.repeat, job.run_seed, len(requests), job.backend_name, job.batch_size)
    backend = backend or (models.backend(job) if models else make_backend(job, device=device))
    if hasattr(backend, "check_memory"):
        backend.check_memory(batches, job.task_cfg["max_new_tokens"])
    t0 = time.monotonic()
    df, facts = run_requests(job, requests, backend, Path(partial), fp, batches)
    df = with_legibility(df, job.legible_text_px)  # checkpoints written under another threshold included
    backend_meta = backend.metadata()
    metadata = {
        "task": job.task, "model": job.model, "setting": job.setting, "backend": backend.name,
        "model_id": job.entry["path"], "revision": job.entry.get("revision"),
        "decoding": job.decoding, "max_new_tokens": job.task_cfg["max_new_tokens"], "seed": job.seed,
        "repeat": job.repeat, "repeat_seed": job.run_seed, "n_p_yes": int(df["p_yes"].fill_nan(None).is_not_null().sum()),
        "batch_size": job.batch_size, "config_hash": config_hash(row_config(job.cfg)), "fingerprint": fp,
        "python": platform.python_version(), "resolved_commit": weights.get("commit"),
        "model_files_sha256": weights.get("files"),
        "wall_s_this_run": round(time.monotonic() - t0, 3), **facts, **backend_meta,
        "versions": {**library_versions(), **(backend_meta.get("versions") or {})},
    }
    loaded = backend_meta.get("commit_hash")
    if loaded and weights.get("commit") and loaded != weights["commit"]:
        log.warning("%s: loaded commit %s, but the unit is keyed by commit %s (the branch moved during the run?); "
                    "pin models.%s.revision", unit, loaded, weights["commit"], job.model)
    write_table(df, out, "inference", metadata=metadata, types=ARROW_TYPES)
    if cache is not None:
        copy_file(Path(out), cache)
    shutil.rmtree(partial, ignore_errors=True)
    log.info("wrote %s (%d rows); removed checkpoints %s", out, len(df), partial)
    return df


def unit_of(path: str) -> tuple[str, str, int]:
    """(task, setting, repeat) of an output path results/inference/{task}/{model}/{setting}/r{repeat}.parquet."""
    parts = Path(path).parts
    return parts[-4], parts[-2], int(Path(path).stem.removeprefix("r"))


def main(snakemake) -> None:
    model, params = snakemake.wildcards.model, snakemake.params
    models = SharedModel()
    try:
        run_units(snakemake, model, params, models)
    finally:
        models.close()


def run_units(snakemake, model: str, params, models: SharedModel) -> None:
    for out in snakemake.output:
        task, setting, repeat = unit_of(out)
        # the unit's config, in the shape of the one-unit command line (and of its fingerprint)
        cfg = {f"models.{model}": params.model, f"tasks.{task}": params.tasks[task],
               f"settings.{setting}": params.settings[setting], "decoding": params.decoding, "seed": params.seed,
               "inference": params.inference}
        job = Job(task=task, model=model, setting=setting, cfg=cfg,
                  settings=dict(snakemake.config["inference"]["openai"]), repeat=repeat)
        unit = Path(task, model, setting, f"r{repeat}")
        run_job(job, snakemake.input[f"sample_{task}"], snakemake.input[f"manifest_{task}_{setting}"], out,
                Path(params.checkpoints, unit), threads=snakemake.threads,
                cache=Path(params.cache, unit).with_suffix(".parquet"), models=models)


def cli(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Run one inference job outside Snakemake (same code path).")
    ap.add_argument("--config", required=True, help="JSON file: the job's canonical config subtrees")
    ap.add_argument("--task", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--setting", required=True)
    ap.add_argument("--repeat", type=int, default=0, help="decoding repeat, 0-based (default 0)")
    ap.add_argument("--sample", required=True)
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--partial", required=True)
    ap.add_argument("--log", default=None)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    ap.add_argument("--device", default=None)
    args = ap.parse_args(argv)
    setup_logging(args.log)

    def job():
        cfg = json.loads(Path(args.config).read_text(encoding="utf-8"))
        run_job(Job(task=args.task, model=args.model, setting=args.setting, cfg=cfg, repeat=args.repeat), args.sample,
                args.manifest, args.out, args.partial, threads=args.threads, device=args.device)

    run_stage(job, f"infer ({args.task}/{args.model}/{args.setting}/r{args.repeat})")


if "snakemake" in globals():
    # one device per job on a multi-GPU workstation; the unit cache must take the finished units
    run_main(main, snakemake, gpu=True, writes=(snakemake.params.cache,))
elif __name__ == "__main__":
    cli()
