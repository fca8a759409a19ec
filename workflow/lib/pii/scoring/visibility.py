"""Stage scoring / rule score_visibility: POPE and CHAIR per strip-visibility group.

Each inference row records what the model's image processor passed on (the infer job, Family.strip_geometry):
``strip_visible_fraction`` (the share of the strip's rows), ``photo_visible_fraction`` (the share of the photo's
rows) and ``text_legible`` (the text at least inference.legible_text_px high in model pixels). Rows are grouped into
whole / illegible / part / photo cut / none / unknown (transcription.visibility_group), and per task x model x
setting x group this reports the share of requests in the group and the headline metrics, each with an interval
from the bootstrap over images: POPE accuracy (POPE's official answer rule) and yes-ratio; CHAIR CHAIRs and CHAIRi.
A group "all" repeats the overall numbers beside them. Baseline rows (the original image, no strip) fall in
"unknown"."""

import numpy as np
import polars as pl

from pii.core.stage import log
from pii.core.tables import read_table, write_table
from pii.scoring.tables import write_table_files
from pii.scoring.transcription import SEEN_COLUMNS, VISIBILITY_GROUPS, ratio_with_interval, seen_groups

KEYS = ["task", "model", "setting", "repeat", "sample_id"]
GROUP_ORDER = ("all", *VISIBILITY_GROUPS)


SEEN_TYPES = {"strip_visible_fraction": pl.Float64, "photo_visible_fraction": pl.Float64, "text_legible": pl.Boolean}


def fractions(paths: list[str]) -> pl.DataFrame:
    """What each inference row's model saw (SEEN_COLUMNS; null where the file has no such column)."""
    frames = []
    for path in paths:
        df = read_table(path, "inference")
        seen = [(pl.col(c).cast(SEEN_TYPES[c]) if c in df.columns else pl.lit(None, dtype=SEEN_TYPES[c])).alias(c)
                for c in SEEN_COLUMNS]
        frames.append(df.select(*KEYS, *seen))
    return pl.concat(frames) if frames else pl.DataFrame(schema={**{k: pl.String for k in KEYS},
                                                                  "repeat": pl.Int64, **SEEN_TYPES})


def with_groups(rows: pl.DataFrame, seen: pl.DataFrame) -> pl.DataFrame:
    if "repeat" not in rows.columns:
        rows = rows.with_columns(repeat=pl.lit(0, dtype=pl.Int64))
    joined = rows.join(seen, on=KEYS, how="left")
    return joined.with_columns(visibility=pl.Series(seen_groups(joined), dtype=pl.String))


def group_metrics(rows: pl.DataFrame, task: str, metrics: dict, seed: int, resamples: int,
                  confidence: float) -> list[dict]:
    """``metrics``: name -> (numerator column, denominator column or None for a per-row mean)."""
    out = []
    for (model, setting), group in rows.group_by(["model", "setting"], maintain_order=True):
        for visibility in GROUP_ORDER:
            part = group if visibility == "all" else group.filter(pl.col("visibility") == visibility)
            if part.is_empty():
                continue
            row = {"task": task, "model": model, "setting": setting, "visibility": visibility, "n": len(part),
                   "share": len(part) / len(group), "n_images": int(part["image_id"].n_unique())}
            for name, (num_col, den_col) in metrics.items():
                num = part[num_col].cast(pl.Float64).to_numpy()
                den = np.ones_like(num) if den_col is None else part[den_col].cast(pl.Float64).to_numpy()
                value, low, high = ratio_with_interval(num, den, part["image_id"].to_numpy(),
                                                       part["repeat"].to_numpy(), seed,
                                                       (task, model, setting, visibility, name), resamples,
                                                       confidence)
                row.update({name: value, f"{name}_ci_low": low, f"{name}_ci_high": high})
            out.append(row)
    return out


METRICS = {"pope": {"accuracy": ("correct_official", None), "yes_ratio": ("answer_yes", None)},
           "caption": {"chair_s": ("hallucinated", None), "chair_i": ("n_hallucinated", "n_mentions")}}
COLUMNS = {"task": pl.String, "model": pl.String, "setting": pl.String, "visibility": pl.String, "n": pl.Int64,
           "share": pl.Float64, "n_images": pl.Int64}
for _metric in [m for task in METRICS.values() for m in task]:
    COLUMNS.update({_metric: pl.Float64, f"{_metric}_ci_low": pl.Float64, f"{_metric}_ci_high": pl.Float64})


def markdown(table: pl.DataFrame, confidence: float) -> str:
    def pct(r, m):
        v = r.get(m)
        if v is None or not np.isfinite(v):
            return "–"
        return f"{100 * v:.1f} [{100 * r[m + '_ci_low']:.1f}, {100 * r[m + '_ci_high']:.1f}]"

    level = f"{round(100 * confidence)}%"
    lines = [f"Values in %, [{level} interval, images resampled]. *Strip seen*: whole = every strip row and photo "
             "row reached the vision encoder, the text legible; illegible = all of them, the text smaller than "
             "inference.legible_text_px in model pixels; part = some strip rows cut; photo cut = some of the strip "
             "reached it but not every photo row (a centre crop of a tall canvas cuts both); none = the processor cut the strip off; unknown = "
             "no strip (baseline) or not recorded.", "",
             "| Task | Model | Setting | Strip seen | n | Share | Accuracy | Yes-ratio | CHAIRs | CHAIRi |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in table.iter_rows(named=True):
        lines.append(f"| {r['task']} | {r['model']} | {r['setting']} | {r['visibility']} | {r['n']} | "
                     f"{100 * r['share']:.0f} | {pct(r, 'accuracy')} | {pct(r, 'yes_ratio')} | {pct(r, 'chair_s')} | "
                     f"{pct(r, 'chair_i')} |")
    return "\n".join(lines) + "\n"


def score_visibility(pope_answers: str, chair_captions: str, pope_inference: list[str],
                     caption_inference: list[str], seed: int, resamples: int, confidence: float,
                     metrics_path: str, csv_path: str, md_path: str) -> None:
    """POPE's scored answers and CHAIR's scored captions per visibility group (the groups read from the inference
    files): the metrics table and its CSV and Markdown copies."""
    records = []
    pope = read_table(pope_answers, "pope_answers").with_columns(answer_yes=pl.col("answer_official") == "yes")
    pope = with_groups(pope, fractions(pope_inference))
    records += group_metrics(pope, "pope", METRICS["pope"], seed, resamples, confidence)
    captions = read_table(chair_captions, "chair_captions")
    captions = with_groups(captions, fractions(caption_inference))
    records += group_metrics(captions, "caption", METRICS["caption"], seed, resamples, confidence)
    table = pl.DataFrame(records, schema=COLUMNS)
    write_table(table, metrics_path, "visibility_metrics",
                metadata={"interval": "percentile bootstrap over images", "confidence": confidence,
                          "resamples": resamples})
    write_table_files(table, markdown(table, confidence), csv_path, md_path,
                      "POPE and CHAIR by how much of the strip each model saw")
    log.info("visibility groups: %s", dict(table.filter(pl.col("visibility") != "all")
                                           .group_by("visibility").agg(pl.col("n").sum()).iter_rows()))
