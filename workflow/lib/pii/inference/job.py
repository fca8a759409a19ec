"""What one unit is asked: the job's config (``Job``), one ``Request`` per sample with the image of the setting's
variant, and the rows an inference file holds (``COLUMNS``).

Decoding repeats (``inference.repeats``): repeat ``r`` runs the same requests again with its own base seed,
``repeat_seed(seed, r)``: repeat 0 uses the config seed itself (so ``repeats: 1`` is the single run of the paper and
its rows are those of a run without repeats), repeat r > 0 a seed derived from (seed, r) by sha256. Each repeat is
its own job, output files and checkpoint folders, so raising ``repeats`` runs only the new repeats' jobs."""


import hashlib
import math
from dataclasses import dataclass

import polars as pl
import pyarrow as pa

from pii.core.stage import PipelineError
from pii.core.tables import records_frame, sha256_file

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
        from pii import tasks

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


def is_legible(text_px: float | None, legible_text_px: float | None) -> bool | None:
    """Whether text of ``text_px`` model pixels (font size) counts as legible: at least ``legible_text_px``
    (inference.legible_text_px); None when either is unknown."""
    if text_px is None or legible_text_px is None or not math.isfinite(text_px):
        return None
    return float(text_px) >= float(legible_text_px)


def finite_or_none(value) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


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
