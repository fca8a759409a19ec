"""How an infer job runs: one job = one model and decoding repeat, every task x setting of it ("unit"), each unit's
requests through one backend, once, into its own output file. The model is loaded once per job, and only when some
unit has requests left to run.

Requests are sorted by length and cut into batches (``models.<m>.batch_size`` or ``inference.batch_size``). Each
finished batch is checkpointed outside the declared outputs, in ``results/inference/.partial/...``, stamped with the
unit's fingerprint (unit_cache.py); a rerun after a crash or SIGKILL reuses matching checkpoints and redoes only the
rest. A finished unit is kept in ``results/inference/.cache/...``, so when the job reruns (one setting edited, a
task's token limit changed) every unit whose fingerprint still matches is copied, not generated again. A CUDA
out-of-memory error halves the batch and retries. Batch ``i`` is generated with the torch seed ``seed + (position
of its first request in the sorted order)``, so a resumed run gives the same rows.
Before anything runs, every image is checked against the sha256 its manifest recorded, so a PNG deleted or replaced
after rendering fails the job with the command that renders it again."""


import platform
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import polars as pl

from pii.core.stage import PipelineError, log
from pii.core.tables import config_hash, read_metadata, read_table, write_table
from pii.inference.backends import SharedModel, library_versions, make_backend, prompt_builder
from pii.inference.job import ARROW_TYPES, Job, Request, build_requests, check_images, rows_frame, with_legibility
from pii.inference.unit_cache import (
    batch_file,
    cached_unit,
    copy_file,
    fingerprint,
    hash_memo,
    load_checkpoints,
    model_identity,
    row_config,
)

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


def run_model_units(model: str, outputs: list[str], inputs: dict, entry: dict, tasks: dict, settings: dict,
                    decoding: dict, seed: int, inference: dict, openai_settings: dict, checkpoints: str, cache: str,
                    threads: int | None = None) -> None:
    """Every unit of one infer job (``outputs``: results/inference/{task}/{model}/{setting}/r{repeat}.parquet), the
    model loaded once. ``inputs``: the job's named inputs (sample_<task>, manifest_<task>_<setting>);
    ``openai_settings``: the run's inference.openai block, which no key covers."""
    models = SharedModel()
    try:
        for out in outputs:
            task, setting, repeat = unit_of(out)
            # the unit's config, in the shape of the one-unit command line (and of its fingerprint)
            cfg = {f"models.{model}": entry, f"tasks.{task}": tasks[task], f"settings.{setting}": settings[setting],
                   "decoding": decoding, "seed": seed, "inference": inference}
            job = Job(task=task, model=model, setting=setting, cfg=cfg, settings=openai_settings, repeat=repeat)
            unit = Path(task, model, setting, f"r{repeat}")
            run_job(job, inputs[f"sample_{task}"], inputs[f"manifest_{task}_{setting}"], out,
                    Path(checkpoints, unit), threads=threads, cache=Path(cache, unit).with_suffix(".parquet"),
                    models=models)
    finally:
        models.close()
