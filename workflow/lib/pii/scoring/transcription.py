"""Can the model read the strip? Scoring of the ``transcribe`` task: the model is shown a question image and asked
to write out the text of its white strip; its answer is compared with the text that was rendered there.

- ``normalise``: case folded, punctuation removed, runs of white space made one space, ends stripped. A reply
  that differs only in case, punctuation or spacing counts as exact.
- ``cer``: character error rate, the Levenshtein distance (insertions, deletions, substitutions, each 1) between
  the normalised reply and the normalised rendered text, divided by the length of the normalised rendered text.
  It is not capped at 1: a reply much longer than the text scores above 1.
- Metrics per model x setting, overall and per strip-visibility group (``visibility_group``), each with a
  percentile interval from the bootstrap over images (stats.py), the mean over decoding repeats as the value.
"""

from __future__ import annotations

import math
import re
import unicodedata

import numpy as np
import polars as pl

from pii.core.stage import PipelineError, log
from pii.core.tables import read_table, write_table
from pii.scoring import stats
from pii.scoring.tables import write_table_files

# What each request's model saw (visibility_group), in reading order: from all of it to nothing known.
VISIBILITY_GROUPS = ("whole", "illegible", "part", "photo cut", "none", "unknown")
# The inference columns the groups are read from (the infer job's rows; null where not recorded).
SEEN_COLUMNS = ("strip_visible_fraction", "photo_visible_fraction", "text_legible")
_SPACE = re.compile(r"\s+")


def normalise(text: str | None) -> str:
    folded = unicodedata.normalize("NFKC", text or "").casefold()
    kept = "".join(" " if unicodedata.category(c).startswith("P") else c for c in folded)
    return _SPACE.sub(" ", kept).strip()


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance between two strings (two-row dynamic programme)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def cer(reply: str | None, reference: str | None) -> float:
    ref = normalise(reference)
    return edit_distance(normalise(reply), ref) / max(1, len(ref))


def exact_match(reply: str | None, reference: str | None) -> bool:
    return normalise(reply) == normalise(reference)


def visibility_group(fraction: float | None, photo_fraction: float | None = None,
                     legible: bool | None = None) -> str:
    """What of the strip and the photo reached the encoder, first match wins:

    - unknown: strip visibility not recorded (no strip, as in baseline, or the openai backend);
    - none: the processor cut the whole strip off;
    - photo cut: some of the strip reached the encoder but not all of the photo's rows (a centre crop of a canvas
      taller than wide cuts top and bottom together; a very tall one keeps only strip);
    - part: some strip rows were cut, the photo's rows all reached it;
    - illegible: the whole strip and photo, but the text is below inference.legible_text_px in model pixels;
    - whole: every strip row and photo row, text legible (or legibility not recorded).
    photo_fraction and legible None (not recorded, e.g. older inference files) never move a row out of whole."""
    if _missing(fraction):
        return "unknown"
    if fraction <= 1e-9:
        return "none"
    if not _missing(photo_fraction) and photo_fraction < 1.0 - 1e-9:
        return "photo cut"
    if fraction < 1.0 - 1e-9:
        return "part"
    return "illegible" if legible is False else "whole"


def _missing(value) -> bool:
    return value is None or not math.isfinite(value)


def seen_groups(rows: pl.DataFrame) -> list[str]:
    """visibility_group of every row, from those of SEEN_COLUMNS the frame has."""
    columns = [rows[c].to_list() if c in rows.columns else [None] * len(rows) for c in SEEN_COLUMNS]
    return [visibility_group(f, p, legible) for f, p, legible in zip(*columns, strict=True)]


def score_rows(rows: pl.DataFrame) -> pl.DataFrame:
    """Per request: exact_match, cer and the visibility group, from ``response`` and the rendered ``text``."""
    groups = seen_groups(rows)
    return rows.with_columns(
        pl.Series("exact_match", [exact_match(r, t) for r, t in zip(rows["response"], rows["text"], strict=True)],
                  dtype=pl.Boolean),
        pl.Series("cer", [cer(r, t) for r, t in zip(rows["response"], rows["text"], strict=True)],
                  dtype=pl.Float64),
        pl.Series("visibility", groups, dtype=pl.String),
    )


def ratio_with_interval(num: np.ndarray, den: np.ndarray, images: np.ndarray, repeats: np.ndarray, seed: int,
                        names: tuple, resamples: int, confidence: float) -> tuple[float, float, float]:
    """sum(num) / sum(den) (per repeat, then the mean over repeats) and its percentile interval from the bootstrap
    over images: a drawn image brings all its rows in every repeat. A mean is the case den = 1."""
    if len(num) == 0:
        return math.nan, math.nan, math.nan
    codes, n_images = stats.clusters_of(images)
    weights = stats.cluster_weights(stats.group_rng(seed, *names), n_images, resamples)
    points, boots = [], []
    for mask in stats.repeat_masks(repeats, len(num)):
        sums = stats.cluster_sums(codes[mask], n_images, np.c_[num[mask], den[mask]])
        points.append(stats.ratio(sums[:, 0].sum(), sums[:, 1].sum()))
        boot = weights @ sums
        boots.append(stats.ratio(boot[:, 0], boot[:, 1]))
    low, high = stats.percentile_interval(stats.mean_over_repeats(boots), confidence)
    return float(stats.mean_over_repeats(points)), low, high


def metrics(scored: pl.DataFrame, seed: int, resamples: int, confidence: float) -> pl.DataFrame:
    """One row per model x setting x visibility ("all", then each group present)."""
    out = []
    for (model, setting), group in scored.group_by(["model", "setting"], maintain_order=True):
        parts = [("all", group)] + [(v, group.filter(pl.col("visibility") == v)) for v in VISIBILITY_GROUPS]
        for visibility, rows in parts:
            if visibility != "all" and rows.is_empty():
                continue
            images = rows["image_id"].to_numpy()
            repeats = rows["repeat"].to_numpy()
            row = {"task": "transcribe", "model": model, "setting": setting, "visibility": visibility,
                   "n": len(rows), "n_images": int(rows["image_id"].n_unique()),
                   "n_repeats": int(rows["repeat"].n_unique())}
            for metric in ("exact_match", "cer"):
                values = rows[metric].cast(pl.Float64).to_numpy()
                value, low, high = ratio_with_interval(values, np.ones_like(values), images, repeats, seed,
                                                       ("transcribe", model, setting, visibility, metric),
                                                       resamples, confidence)
                row.update({metric: value, f"{metric}_ci_low": low, f"{metric}_ci_high": high})
            out.append(row)
    return pl.DataFrame(out, schema={"task": pl.String, "model": pl.String, "setting": pl.String,
                                     "visibility": pl.String, "n": pl.Int64, "n_images": pl.Int64,
                                     "n_repeats": pl.Int64, "exact_match": pl.Float64,
                                     "exact_match_ci_low": pl.Float64, "exact_match_ci_high": pl.Float64,
                                     "cer": pl.Float64, "cer_ci_low": pl.Float64, "cer_ci_high": pl.Float64})


def markdown(table: pl.DataFrame, confidence: float) -> str:
    """The metrics as a Markdown table: exact match and CER in percent with their intervals."""
    def pct(v, lo, hi):
        if v is None or not math.isfinite(v):
            return "–"
        return f"{100 * v:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]" if math.isfinite(lo) else f"{100 * v:.1f}"

    level = f"{round(100 * confidence)}%"
    lines = [f"| Model | Setting | Strip seen | n | Exact match (%) [{level} CI] | CER (%) [{level} CI] |",
             "| --- | --- | --- | ---: | ---: | ---: |"]
    for r in table.iter_rows(named=True):
        lines.append(f"| {r['model']} | {r['setting']} | {r['visibility']} | {r['n']} | "
                     f"{pct(r['exact_match'], r['exact_match_ci_low'], r['exact_match_ci_high'])} | "
                     f"{pct(r['cer'], r['cer_ci_low'], r['cer_ci_high'])} |")
    return "\n".join(lines) + "\n"


def rendered_text(manifests: list[str]) -> pl.DataFrame:
    """sample_id -> the text rendered into the strip, from the question manifests."""
    frames = [read_table(path, "manifest").select("sample_id", "text") for path in manifests]
    return pl.concat(frames).unique("sample_id", keep="first", maintain_order=True)


def score_transcriptions(inference: list[str], manifests: list[str], seed: int, resamples: int, confidence: float,
                         metrics_path: str, csv_path: str, md_path: str) -> pl.DataFrame:
    """Every transcription against the text rendered into its strip: the metrics table (overall and per
    visibility group) and its CSV and Markdown copies."""
    rows = pl.concat([read_table(p, "inference") for p in inference], how="diagonal_relaxed")
    rows = rows.with_columns(pl.col("response").cast(pl.String).fill_null(""))
    joined = rows.join(rendered_text(manifests), on="sample_id", how="left")
    missing = joined.filter(pl.col("text").is_null())
    if len(missing):
        raise PipelineError(f"transcribe: sample '{missing['sample_id'][0]}' has no rendered text in "
                            f"{manifests}; its strip image must be a question variant (rerun rendering)")
    table = metrics(score_rows(joined), seed, resamples, confidence)
    write_table(table, metrics_path, "transcribe_metrics",
                metadata={"interval": "percentile bootstrap over images", "confidence": confidence,
                          "normalisation": "NFKC, case folded, punctuation removed, white space collapsed"})
    write_table_files(table, markdown(table, confidence), csv_path, md_path,
                      "Transcription of the strip: exact match and character error rate")
    for r in table.filter(pl.col("visibility") == "all").iter_rows(named=True):
        log.info("%s %s: exact match %.3f, CER %.3f over %d requests", r["model"], r["setting"], r["exact_match"],
                 r["cer"], r["n"])
    return table
