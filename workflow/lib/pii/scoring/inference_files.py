"""Shared scoring helpers for the POPE and CHAIR scorers (``pope``, ``chair``): reading and checking
the inference files of a task, decoding repeats, pairing a setting's rows with the baseline's, the groups to report
and the metadata stamped into the metrics tables.

Uncertainty: every metric gets a percentile bootstrap interval from a *clustered* bootstrap over images
(``stats``): POPE asks up to six questions about one image and those answers are correlated, so a resample
draws images with replacement and takes all of a drawn image's questions with it; CHAIR has one caption per
image, so drawing images is drawing captions (the same clustering code, one row per cluster).
``scoring.bootstrap_resamples`` resamples, generator seeded from ``seed`` and the task/model/setting names so a
group's interval does not depend on which other groups exist. Each setting is compared with the ``baseline``
setting of the same model on the samples both answered (matched by ``sample_id``): the delta's interval comes
from a paired bootstrap that also resamples images (the same resampled images for both settings); p-values are
the paired image-level bootstrap's (twice the smaller tail of the resampled deltas around 0, add-one corrected),
except POPE's McNemar tests (``pope``).

Decoding repeats (``inference.repeats``; one inference file per repeat, a frame without a ``repeat`` column is one
repeat): every metric is computed per repeat; the reported value is the mean over repeats, with its spread
(``*_repeat_sd``, ``*_repeat_min``, ``*_repeat_max``, ``n_repeats``). A bootstrap resample draws images once and
applies the same multiplicities to every repeat's rows (a drawn image brings all its questions in all repeats),
then takes the mean over repeats: intervals and delta intervals cover the sampling of images and the decoding noise
together. With one repeat every number is the single run's.
"""

import math
import re
from pathlib import Path

import numpy as np
import polars as pl

from pii.core.stage import PipelineError, log
from pii.core.tables import read_table
from pii.scoring import pope_answers as pm
from pii.scoring import stats as st
from pii.scoring.stats import percentile_interval

BASELINE = "baseline"
REPEATS_METADATA = ("decoding repeats: every metric per repeat; value = mean over repeats, *_repeat_sd/min/max their "
                    "spread; the bootstrap draws images with all their repeats (same image weights for every repeat)")


def floats(series: pl.Series) -> np.ndarray:
    """A column as a float64 array, null as NaN."""
    return series.cast(pl.Float64).to_numpy()



def repeats_of(frame: pl.DataFrame) -> list[np.ndarray]:
    """Row masks of the frame's decoding repeats (one mask for a frame without a repeat column)."""
    return st.repeat_masks(frame["repeat"].to_numpy() if "repeat" in frame.columns else None, len(frame))


def n_repeats(frame: pl.DataFrame) -> int:
    """Decoding repeats present in the frame (0 without rows)."""
    return len(repeats_of(frame)) if len(frame) else 0


def mean_stat(per_repeat: list[dict], metric: str) -> np.ndarray:
    """The mean over repeats of one metric from per-repeat result dicts (point values or bootstrap arrays)."""
    return st.mean_over_repeats([r[metric] for r in per_repeat])




def spread_columns(spread: dict, key: str, per_repeat: list[dict], metric: str) -> None:
    values = [float(np.asarray(r[metric]).reshape(-1)[0]) for r in per_repeat]
    for suffix, value in st.repeat_spread(values).items():
        spread[f"{key}_{suffix}"] = value



def _values(values) -> list:
    return values.to_list() if isinstance(values, pl.Series) else list(values)


def member(values, pool) -> np.ndarray:
    """values[i] in pool, as a boolean array (by hashing)."""
    pool = set(_values(pool))
    values = _values(values)
    return np.fromiter((v in pool for v in values), dtype=bool, count=len(values))


def first_positions(values) -> dict:
    """Each distinct value -> its number in order of first appearance."""
    positions: dict = {}
    for v in _values(values):
        positions.setdefault(v, len(positions))
    return positions


def paired_frames(base: pl.DataFrame, other: pl.DataFrame, names: tuple[str, ...], baseline: str = BASELINE):
    """The rows of the samples both settings answered (matched by sample_id, every repeat of each), and the image
    cluster of each side's rows: images numbered in order of first appearance among the baseline's rows, the same
    numbers on both sides. Both sides must show the same image, or the two inference files came from different
    samples. Returns (baseline rows, setting rows, baseline clusters, setting clusters, n_images, n_paired)."""
    b = base.filter(member(base["sample_id"], other["sample_id"]))
    s = other.filter(member(other["sample_id"], base["sample_id"]))
    image_b = dict(zip(*(b.unique("sample_id", keep="first", maintain_order=True)[c].to_list()
                         for c in ("sample_id", "image_id")), strict=True))
    image_s = dict(zip(*(s.unique("sample_id", keep="first", maintain_order=True)[c].to_list()
                         for c in ("sample_id", "image_id")), strict=True))
    for sid, image in image_b.items():
        if image_s[sid] != image:
            raise PipelineError(f"{'/'.join(names)}: sample_id '{sid}' is image {image} in the {baseline} setting and "
                                f"image {image_s[sid]} here; rerun inference for both settings from the same sample")
    # the setting's rows in the baseline's sample order (repeats in their order within a sample), so that sums
    # over both sides run in the same order
    position = {sid: i for i, sid in enumerate(image_b)}
    s = s[np.argsort(np.array([position[sid] for sid in s["sample_id"].to_list()], dtype=np.int64), kind="stable")]
    clusters_b, n_images = st.clusters_of(b["image_id"])
    image_number = first_positions(b["image_id"])
    clusters_s = np.array([image_number[i] for i in s["image_id"].to_list()], dtype=np.int64)
    return b, s, clusters_b, clusters_s, n_images, len(image_b)


def delta_columns(row: dict, key: str, point_delta: float, deltas: np.ndarray, confidence: float) -> None:
    row[f"{key}_delta"] = float(point_delta)
    row[f"{key}_delta_ci_low"], row[f"{key}_delta_ci_high"] = percentile_interval(deltas, confidence)


def single_repeat(*frames: pl.DataFrame) -> bool:
    """True when every frame holds one decoding repeat (McNemar then has one answer per question)."""
    return all(n_repeats(f) <= 1 for f in frames)


def empty_paired(prefixes: tuple[str, ...], metrics: tuple[str, ...], extra_metrics: tuple[str, ...],
                 counts: tuple[str, ...]) -> dict:
    """The paired columns of a group without a baseline to compare with: counts 0, deltas and p-values NaN."""
    row: dict = dict.fromkeys(counts, 0)
    keys = [f"{prefix}{metric}" for prefix in prefixes for metric in metrics] + list(extra_metrics)
    for key in keys:
        for suffix in ("delta", "delta_ci_low", "delta_ci_high", "p_value"):
            row[f"{key}_{suffix}"] = math.nan
    return row


def split_groups(df: pl.DataFrame, groups: list[tuple[str, str, str]] | None):
    """(groups to report, rows by (task, model, setting) in their order, an empty frame for groups without rows);
    ``groups`` defaults to those present in ``df``."""
    keys = ["task", "model", "setting"]
    if groups is None:
        groups = sorted(set(df.select(keys).rows()))
    by_group = df.partition_by(keys, as_dict=True, maintain_order=True) if len(df) else {}
    return groups, by_group, df.clear()



# --- reading inference files ----------------------------------------------------------------------------------

_REPEAT_FILE = re.compile(r"r(\d+)")


def key_of_path(path: str | Path) -> tuple[str, str, str, int]:
    """(task, model, setting, repeat) from results/inference/{task}/{model}/{setting}/r{repeat}.parquet."""
    p = Path(path)
    match = _REPEAT_FILE.fullmatch(p.stem)
    if match is None or len(p.parents) < 4:
        raise PipelineError(f"{path}: not an inference file (results/inference/<task>/<model>/<setting>/"
                            "r<repeat>.parquet); fix the rule's input")
    return p.parents[2].name, p.parents[1].name, p.parent.name, int(match.group(1))


def read_inference(paths: list[str], task: str, kind: str | None = None, sample_ids: list[str] | None = None
                   ) -> tuple[pl.DataFrame, list[tuple[str, str, str]]]:
    """Every inference file of one task (all repeats), checked against its file name; (rows, groups in order).
    ``kind``: the task's kind (default: its name); a POPE task's rows must carry labels and valid p_yes.
    ``sample_ids``: the task's sample; every file must answer exactly these (no setting scored on fewer rows)."""
    frames, groups, seen = [], [], set()
    for path in paths:
        df = read_table(path, "inference")
        key = key_of_path(path)
        names = key[:3]
        if key in seen:
            raise PipelineError(f"{path}: given twice to the {task} scorer; fix the rule's input")
        seen.add(key)
        for col, want in zip(("task", "model", "setting", "repeat"), key, strict=True):
            other = sorted(set(df[col]) - {want})
            if other:
                raise PipelineError(f"{path}: column '{col}' holds {other}, the file name says '{want}'; "
                                    "rerun inference for this file")
        if names[0] != task:
            raise PipelineError(f"{path}: a '{names[0]}' file given to the {task} scorer; fix the rule's input")
        ids = df["sample_id"]
        dup = ids.filter(ids.is_duplicated() & ~ids.is_first_distinct())
        if len(dup):
            raise PipelineError(f"{path}: sample_id '{dup[0]}' appears twice; rerun inference for this file")
        if sample_ids is not None:
            check_rows_match_sample(path, ids.to_list(), sample_ids)
        if (kind or task) == "pope":
            labelled = (df["label"].cast(pl.String).is_in([pm.YES, pm.NO]).fill_null(False).to_numpy()
                        if "label" in df.columns else np.zeros(len(df), dtype=bool))
            bad = np.flatnonzero(~labelled)
            if len(bad):
                raise PipelineError(f"{path}: row {int(bad[0])} has no POPE label ('yes'/'no'); "
                                    "inference must carry the sample's label column")
            p_yes = floats(df["p_yes"]) if "p_yes" in df.columns else np.zeros(0)
            bad = np.flatnonzero(np.isfinite(p_yes) & ((p_yes < 0) | (p_yes > 1)))
            if len(bad):
                raise PipelineError(f"{path}: row {int(bad[0])} has p_yes = {p_yes[bad[0]]}, not a probability in "
                                    "[0, 1]; fix the backend's P(yes) and rerun inference for this file")
        if len(df) == 0:
            log.warning("%s: no rows; its metrics are NaN", path)
        frames.append(df)
        if names not in groups:
            groups.append(names)
    if not frames:
        raise PipelineError(f"no inference files given to the {task} scorer; check the rule's input")
    # files of one task may differ in which columns hold only nulls (a setting without a text prompt): relaxed
    data = pl.concat(frames, how="diagonal_relaxed")
    data = data.with_columns(pl.col("response").cast(pl.String).fill_null(""))
    return data, groups


def check_rows_match_sample(path: str, ids: list[str], sample_ids: list[str]) -> None:
    """An inference file holds one row per sample id: none missing (a cut or edited file), none foreign."""
    have, want = set(ids), set(sample_ids)
    missing = [s for s in sample_ids if s not in have]
    extra = [s for s in ids if s not in want]
    if missing or extra:
        what = []
        if missing:
            what.append(f"{len(missing)} of the sample's {len(want)} ids missing ({', '.join(missing[:5])}"
                        f"{', ...' if len(missing) > 5 else ''})")
        if extra:
            what.append(f"{len(extra)} ids not in the sample ({', '.join(extra[:5])}"
                        f"{', ...' if len(extra) > 5 else ''})")
        raise PipelineError(f"{path}: its rows do not match the task's sample: {'; '.join(what)}; delete the file "
                            "and rerun inference for it")


def repeats_in(metrics: pl.DataFrame) -> int:
    """The most decoding repeats any group of a metrics table has (1 for a table without the column)."""
    if "n_repeats" not in metrics.columns or metrics["n_repeats"].drop_nulls().is_empty():
        return 1
    return max(1, int(metrics["n_repeats"].max()))



def metadata(seed: int, resamples: int, confidence: float, baseline: str, interval: str,
             extra: dict | None = None) -> dict:
    """The metrics tables' metadata: the seed, the scoring settings (as ``scoring.*`` names them), the baseline
    setting, the interval's method and numpy's version, plus ``extra``."""
    meta = {"seed": seed, "scoring": {"bootstrap_resamples": resamples, "confidence": confidence, "baseline": baseline},
            "baseline_setting": baseline, "interval": interval, "numpy": np.__version__}
    meta.update(extra or {})
    return meta
