"""What a finished unit is keyed by, and the kept units: the fingerprint of what can change a unit's rows (its
config less retries, timeouts and the like, the inputs, the exact prompt strings, the weights and the run order),
what identifies the weights (a local folder's file contents, a hub checkpoint's commit), the kept copy of each
finished unit in ``results/inference/.cache/`` and the per-batch checkpoints of an unfinished one."""


import json
import os
import re
import shutil
from pathlib import Path

import polars as pl

from pii.core.stage import log
from pii.core.tables import atomic_path, config_hash, read_metadata, read_table, sha256_file
from pii.inference.job import COLUMNS, Job, Request
from pii.inference.openai_backend import row_settings


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
    from pii.core.config import is_local_model_path

    files = model_files(job.entry["path"], memo)
    if files is not None:
        return {"files": files}
    revision = job.entry.get("revision") or "main"
    if job.backend_name == "openai" or is_local_model_path(str(job.entry["path"])):
        return {"revision": revision}  # a served model, or a folder that is not there (its loading fails)
    commit = resolve_commit(job.model, job.entry)
    return {"commit": commit} if commit else {"revision": revision}


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
