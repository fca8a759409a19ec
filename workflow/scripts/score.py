"""Stage: scoring. POPE and CHAIR metrics with bootstrap intervals and paired tests, and the paper's tables.

Rules served (one script, dispatched on the rule name): ``score_pope``, ``score_chair``, ``table1_pope``,
``table2_chair``, ``table_pope_pyes``.

Uncertainty: every metric gets a percentile bootstrap interval from a *clustered* bootstrap over images
(``stats``): POPE asks up to six questions about one image and those answers are correlated, so a resample
draws images with replacement and takes all of a drawn image's questions with it; CHAIR has one caption per
image, so drawing images is drawing captions (the same clustering code, one row per cluster).
``scoring.bootstrap_resamples`` resamples, generator seeded from ``seed`` and the task/model/setting names so a
group's interval does not depend on which other groups exist. Each setting is compared with the ``baseline``
setting of the same model on the samples both answered (matched by ``sample_id``): the delta's interval comes
from a paired bootstrap that also resamples images (the same resampled images for both settings). p-values:
an exact McNemar test (two-sided binomial test on the discordant pairs; per question, i.e. it treats the
questions as independent) for POPE accuracy and yes-ratio, and the paired image-level bootstrap p-value (twice
the smaller tail of the resampled deltas around 0, add-one corrected) for every other metric.

Decoding repeats (``inference.repeats``; one inference file per repeat, a frame without a ``repeat`` column is one
repeat): every metric is computed per repeat; the reported value is the mean over repeats, with its spread
(``*_repeat_sd``, ``*_repeat_min``, ``*_repeat_max``, ``n_repeats``). A bootstrap resample draws images once and
applies the same multiplicities to every repeat's rows (a drawn image brings all its questions in all repeats),
then takes the mean over repeats: intervals and delta intervals cover the sampling of images and the decoding noise
together. McNemar needs one answer per question, so with more than one repeat on either side the accuracy and
yes-ratio p-values are the paired image bootstrap's too. With one repeat every number is the single run's.

P(yes) metrics (POPE; from the inference tables' ``p_yes``, rows without it left out): AUROC of p_yes against
the label (Mann-Whitney, ties half), Brier score, expected calibration error (10 equal-width bins), and the
share of answers whose official parsed answer disagrees with ``p_yes > 0.5``; intervals and deltas as above
(deltas on the pairs where both settings have a p_yes). No p_yes at all gives NaN, not an error.
"""

import math
import re
from pathlib import Path

import chair
import numpy as np
import polars as pl
import pope_metrics as pm
import stats as st
import yaml
from paper_models import match_paper_models
from pipeline_io import (
    PipelineError,
    atomic_output,
    log,
    params_config,
    read_table,
    records_frame,
    run_main,
    write_csv,
    write_table,
)
from stats import bootstrap_p, group_rng, mcnemar_exact, percentile_interval

BASELINE = "baseline"
POPE_METRICS = pm.METRICS
PYES_METRICS = tuple(f"p_yes_{m}" for m in st.PYES_METRICS)
CHAIR_METRICS = ("chair_s", "chair_i", "recall", "mean_length")
MCNEMAR_METRICS = ("accuracy", "yes_ratio")
POPE_INTERVAL = ("percentile bootstrap over images (clustered: all questions about an image resampled together); "
                 "paired bootstrap for deltas resamples images too")
CHAIR_INTERVAL = ("percentile bootstrap over images (clustered by image_id; one caption per image, so captions are "
                  "resampled); paired bootstrap for deltas resamples images too")
REPEATS_METADATA = ("decoding repeats: every metric per repeat; value = mean over repeats, *_repeat_sd/min/max their "
                    "spread; the bootstrap draws images with all their repeats (same image weights for every repeat)")


# --- POPE ---------------------------------------------------------------------------------------------------

def floats(series: pl.Series) -> np.ndarray:
    """A column as a float64 array, null as NaN."""
    return series.cast(pl.Float64).to_numpy()


def parse_answers(df: pl.DataFrame) -> pl.DataFrame:
    """Per-row parsed answers (official + strict) and correctness; the repeat column is kept when present. A
    frame without p_yes gets a p_yes column of nulls."""
    keys = ["sample_id", "task", "model", "setting"] + (["repeat"] if "repeat" in df.columns else [])
    responses = df["response"].to_list()
    p_yes = pl.col("p_yes").cast(pl.Float64) if "p_yes" in df.columns else pl.lit(None, dtype=pl.Float64)
    return df.select(*keys, "image_id", "question", "label", "response", p_yes.alias("p_yes")).with_columns(
        answer_official=pl.Series([pm.parse_official(r) for r in responses], dtype=pl.String),
        answer_strict=pl.Series([pm.parse_strict(r) for r in responses], dtype=pl.String),
    ).with_columns(
        correct_official=pl.col("answer_official").eq_missing(pl.col("label")),
        correct_strict=pl.col("answer_strict").eq_missing(pl.col("label")),
    )


def _onehot(codes: np.ndarray) -> np.ndarray:
    return np.eye(pm.N_CELLS)[np.asarray(codes, dtype=np.int64)].reshape(-1, pm.N_CELLS)


def _cells(answers: pl.DataFrame, column: str, suffix: str = "") -> np.ndarray:
    if not len(answers):
        return np.zeros(0, dtype=np.int8)
    return pm.cell_codes(answers[f"label{suffix}"].to_numpy(), answers[f"{column}{suffix}"].to_numpy())


def _pyes_inputs(answers: pl.DataFrame, rows: np.ndarray, suffix: str = ""):
    """(p_yes, label is yes, official answer is yes) of the chosen rows (a boolean mask)."""
    p = floats(answers[f"p_yes{suffix}"])
    return (p[rows], answers[f"label{suffix}"].to_numpy()[rows] == pm.YES,
            answers[f"answer_official{suffix}"].to_numpy()[rows] == pm.YES)


def _pyes_values(inputs, weights: np.ndarray, clusters: np.ndarray | None = None) -> dict[str, np.ndarray]:
    return {f"p_yes_{k}": v for k, v in st.pyes_metrics(*inputs, weights, clusters).items()}


def repeats_of(frame: pl.DataFrame) -> list[np.ndarray]:
    """Row masks of the frame's decoding repeats (one mask for a frame without a repeat column)."""
    return st.repeat_masks(frame["repeat"].to_numpy() if "repeat" in frame.columns else None, len(frame))


def n_repeats(frame: pl.DataFrame) -> int:
    """Decoding repeats present in the frame (0 without rows)."""
    return len(repeats_of(frame)) if len(frame) else 0


def _mean_stat(per_repeat: list[dict], metric: str) -> np.ndarray:
    """The mean over repeats of one metric from per-repeat result dicts (point values or bootstrap arrays)."""
    return st.mean_over_repeats([r[metric] for r in per_repeat])


def _answer_stats(frame: pl.DataFrame, column: str, clusters: np.ndarray, n_images: int, weights: np.ndarray,
                  masks: list[np.ndarray]) -> tuple[list[dict], list[dict]]:
    """Per repeat: (point metrics, bootstrap metrics) of one answer column; every repeat with the same weights."""
    codes = _cells(frame, column)
    points = [pm.metrics_from_counts(pm.counts_of(codes[m])) for m in masks]
    boots = [pm.metrics_from_counts(weights @ st.cluster_sums(clusters[m], n_images, _onehot(codes[m])))
             for m in masks]
    return points, boots


def _pyes_stats(frame: pl.DataFrame, rows: np.ndarray, clusters: np.ndarray, weights: np.ndarray,
                masks: list[np.ndarray]) -> tuple[list[dict], list[dict]]:
    """Per repeat: (point, bootstrap) P(yes) metrics over the chosen rows of that repeat."""
    points, boots = [], []
    for m in masks:
        use = rows & m
        inputs = _pyes_inputs(frame, use)
        points.append(_pyes_values(inputs, np.ones((1, int(use.sum())))))
        boots.append(_pyes_values(inputs, weights, clusters[use]))
    return points, boots


def _spread_columns(spread: dict, key: str, per_repeat: list[dict], metric: str) -> None:
    values = [float(np.asarray(r[metric]).reshape(-1)[0]) for r in per_repeat]
    for suffix, value in st.repeat_spread(values).items():
        spread[f"{key}_{suffix}"] = value


def pope_group_metrics(answers: pl.DataFrame, seed: int, resamples: int, confidence: float,
                       names: tuple[str, str, str]) -> tuple[dict, dict]:
    """Point estimates, counts and clustered-bootstrap intervals of one task/model/setting: the answer metrics
    for both parsers and the P(yes) metrics. Resampling unit: the image, with all its questions in all repeats.
    Each metric is computed per decoding repeat; the value is the mean over repeats and the interval that of the
    resampled mean. Counts (n, tp, ...) are summed over repeats. Returns (columns, spread columns)."""
    clusters, n_images = st.clusters_of(answers["image_id"])
    masks = repeats_of(answers)
    row: dict = {"n_images": n_images}
    spread: dict = {"n_repeats": n_repeats(answers)}
    weights = st.cluster_weights(group_rng(seed, "ci", *names), n_images, resamples)
    for prefix, column in (("", "answer_official"), ("strict_", "answer_strict")):
        counts = pm.counts_of(_cells(answers, column))
        points, boots = _answer_stats(answers, column, clusters, n_images, weights, masks)
        for key, value in pm.confusion(counts).items():
            if key == "n_unknown":  # only the strict parser can say "unknown"; one column, unprefixed
                if prefix:
                    row["n_unknown"] = value
            elif prefix == "" or key != "n":
                row[f"{prefix}{key}"] = value
        for metric in POPE_METRICS:
            row[f"{prefix}{metric}"] = float(_mean_stat(points, metric))
            row[f"{prefix}{metric}_ci_low"], row[f"{prefix}{metric}_ci_high"] = percentile_interval(
                _mean_stat(boots, metric), confidence)
            _spread_columns(spread, f"{prefix}{metric}", points, metric)
    has = np.isfinite(floats(answers["p_yes"]))
    row["n_p_yes"] = int(has.sum())
    points, boots = _pyes_stats(answers, has, clusters, weights, masks)
    for metric in PYES_METRICS:
        row[metric] = float(_mean_stat(points, metric)[0])
        row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = percentile_interval(_mean_stat(boots, metric), confidence)
        _spread_columns(spread, metric, points, metric)
    return row, spread


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


def _delta_columns(row: dict, key: str, point_delta: float, deltas: np.ndarray, confidence: float) -> None:
    row[f"{key}_delta"] = float(point_delta)
    row[f"{key}_delta_ci_low"], row[f"{key}_delta_ci_high"] = percentile_interval(deltas, confidence)


def single_repeat(*frames: pl.DataFrame) -> bool:
    """True when every frame holds one decoding repeat (McNemar then has one answer per question)."""
    return all(n_repeats(f) <= 1 for f in frames)


def pope_paired(base: pl.DataFrame, other: pl.DataFrame, seed: int, resamples: int, confidence: float,
                names: tuple[str, str, str]) -> dict:
    """Deltas (setting - baseline, each side's mean over its repeats) on the shared samples, their paired
    clustered-bootstrap intervals (images resampled, the same images for both settings and all repeats) and
    p-values: exact McNemar per question for accuracy and yes-ratio when both settings have one repeat (one answer
    per question), the paired image bootstrap otherwise and for every other metric. P(yes) deltas use the samples
    that have a p_yes on both sides."""
    b, s, clusters_b, clusters_s, n_images, n_paired = paired_frames(base, other, names)
    row: dict = {"n_paired": n_paired}
    weights = st.cluster_weights(group_rng(seed, "paired", *names), n_images, resamples)
    sides = {"b": (b, clusters_b, repeats_of(b)), "s": (s, clusters_s, repeats_of(s))}
    mcnemar = single_repeat(b, s)
    if mcnemar:  # one row per sample on each side: align the setting's rows with the baseline's
        row_of = {sid: i for i, sid in enumerate(s["sample_id"].to_list())}
        s_aligned = s[[row_of[sid] for sid in b["sample_id"].to_list()]]
    for prefix, column in (("", "answer_official"), ("strict_", "answer_strict")):
        stats = {k: _answer_stats(f, column, c, n_images, weights, m) for k, (f, c, m) in sides.items()}
        for metric in POPE_METRICS:
            key = f"{prefix}{metric}"
            deltas = _mean_stat(stats["s"][1], metric) - _mean_stat(stats["b"][1], metric)
            _delta_columns(row, key, _mean_stat(stats["s"][0], metric) - _mean_stat(stats["b"][0], metric), deltas,
                           confidence)
            if mcnemar and metric == "accuracy":
                _, _, row[f"{key}_p_value"] = mcnemar_exact(b[column].to_numpy() == b["label"].to_numpy(),
                                                            s_aligned[column].to_numpy() == s_aligned["label"].to_numpy())
            elif mcnemar and metric == "yes_ratio":
                _, _, row[f"{key}_p_value"] = mcnemar_exact(b[column].to_numpy() == pm.YES,
                                                            s_aligned[column].to_numpy() == pm.YES)
            else:
                row[f"{key}_p_value"] = bootstrap_p(deltas)
    with_p = {k: np.isfinite(floats(f["p_yes"])) for k, (f, _, _) in sides.items()}
    ids = {k: np.asarray(f["sample_id"].to_list(), dtype=object) for k, (f, _, _) in sides.items()}
    both_ids = list(first_positions(ids["b"][with_p["b"] & member(ids["b"], ids["s"][with_p["s"]])]))
    row["n_paired_p_yes"] = len(both_ids)
    stats = {k: _pyes_stats(f, with_p[k] & member(ids[k], both_ids), c, weights, m)
             for k, (f, c, m) in sides.items()}
    for metric in PYES_METRICS:
        deltas = _mean_stat(stats["s"][1], metric) - _mean_stat(stats["b"][1], metric)
        _delta_columns(row, metric, (_mean_stat(stats["s"][0], metric) - _mean_stat(stats["b"][0], metric))[0],
                       deltas, confidence)
        row[f"{metric}_p_value"] = bootstrap_p(deltas)
    return row


def _empty_paired(prefixes=("", "strict_"), metrics=POPE_METRICS, extra_metrics=PYES_METRICS,
                  counts=("n_paired", "n_paired_p_yes")) -> dict:
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


def score_pope(df: pl.DataFrame, seed: int, resamples: int, confidence: float,
               groups: list[tuple[str, str, str]] | None = None,
               baseline: str = BASELINE) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(metrics, answers) for POPE inference rows (every decoding repeat; a frame without a ``repeat`` column is
    one repeat). ``groups`` lists every (task, model, setting) to report, also those with no rows (their metrics
    are NaN); default: the groups present in ``df``."""
    answers = parse_answers(df)
    groups, by_group, empty = split_groups(answers, groups)
    rows = []
    for names in groups:
        task, model, setting = names
        current = by_group.get(names, empty)
        row = {"task": task, "model": model, "setting": setting, "baseline": baseline}
        values, spread = pope_group_metrics(current, seed, resamples, confidence, names)
        row.update(values)
        base = by_group.get((task, model, baseline))
        if setting != baseline and base is not None:
            row.update(pope_paired(base, current, seed, resamples, confidence, names))
        else:
            row.update(_empty_paired())
        row.update(spread)
        rows.append(row)
        log.info("pope %s/%s: n=%d (%d repeat(s)) accuracy=%.3f unknown(strict)=%d", model, setting, row["n"],
                 row["n_repeats"], row["accuracy"], row["n_unknown"])
    return records_frame(rows), answers


# --- CHAIR --------------------------------------------------------------------------------------------------

_CHAIR_SUMS = ("hallucinated", "n_hallucinated", "n_mentions", "n_gt_mentioned", "n_gt", "n_words")


def chair_from_sums(sums: np.ndarray, n: np.ndarray | float) -> dict[str, np.ndarray]:
    """CHAIR metrics from per-caption sums in the order of ``_CHAIR_SUMS`` (shape (..., 6)), n captions."""
    s = np.asarray(sums, dtype=float)
    return {
        "chair_s": st.ratio(s[..., 0], n),
        "chair_i": st.ratio(s[..., 1], s[..., 2]),
        "recall": st.ratio(s[..., 3], s[..., 4]),
        "mean_length": st.ratio(s[..., 5], n),
    }


def score_captions(df: pl.DataFrame, vocab: chair.Vocabulary, gt: dict[int, set[str]]) -> pl.DataFrame:
    """Per-caption CHAIR detail: mentioned and hallucinated objects, ground truth, counts; the repeat column is
    kept when present."""
    has_repeat = "repeat" in df.columns
    records = []
    for row in df.iter_rows(named=True):
        cs = chair.score_caption(vocab, row["response"], gt[int(row["image_id"])])
        record = {"sample_id": row["sample_id"], "task": row["task"], "model": row["model"],
                  "setting": row["setting"]}
        if has_repeat:
            record["repeat"] = int(row["repeat"])
        record.update({
            "image_id": int(row["image_id"]), "response": row["response"],
            "mentioned_words": cs.mentioned_words, "mentioned_objects": cs.mentioned_objects,
            "hallucinated_words": cs.hallucinated_words, "hallucinated_objects": cs.hallucinated_objects,
            "gt_objects": cs.gt_objects, "n_words": cs.n_words, "n_mentions": cs.n_mentions,
            "n_hallucinated": cs.n_hallucinated, "hallucinated": cs.n_hallucinated > 0,
            "n_gt": len(cs.gt_objects), "n_gt_mentioned": cs.n_gt_mentioned,
        })
        records.append(record)
    columns = ["sample_id", "task", "model", "setting"] + (["repeat"] if has_repeat else []) + [
        "image_id", "response", "mentioned_words", "mentioned_objects", "hallucinated_words", "hallucinated_objects",
        "gt_objects", "n_words", "n_mentions", "n_hallucinated", "hallucinated", "n_gt", "n_gt_mentioned"]
    return records_frame(records, columns, {"repeat": pl.Int64} if has_repeat else None)


def _sums_matrix(captions: pl.DataFrame, suffix: str = "") -> np.ndarray:
    """Per-caption sums in the order of ``_CHAIR_SUMS``, then a column of ones (the caption count)."""
    x = np.asarray(captions.select(pl.col(f"{c}{suffix}").cast(pl.Float64) for c in _CHAIR_SUMS).to_numpy(),
                   dtype=float).reshape(-1, len(_CHAIR_SUMS))
    return np.hstack([x, np.ones((len(x), 1))])


def _chair_point_and_boot(x: np.ndarray, clusters: np.ndarray, n_images: int, weights: np.ndarray):
    boot = weights @ st.cluster_sums(clusters, n_images, x)
    total = x.sum(axis=0)
    return chair_from_sums(total[:-1], total[-1]), chair_from_sums(boot[:, :-1], boot[:, -1])


def _chair_stats(captions: pl.DataFrame, clusters: np.ndarray, n_images: int, weights: np.ndarray):
    """Per repeat: (point, bootstrap) CHAIR metrics, every repeat with the same image weights."""
    x = _sums_matrix(captions)
    per = [_chair_point_and_boot(x[m], clusters[m], n_images, weights) for m in repeats_of(captions)]
    return [p for p, _ in per], [b for _, b in per]


def chair_metrics(captions: pl.DataFrame, seed: int, resamples: int, confidence: float,
                  groups: list[tuple[str, str, str]] | None = None, baseline: str = BASELINE) -> pl.DataFrame:
    """CHAIR metrics per task/model/setting with clustered-bootstrap intervals (the image is the unit, with all
    its repeats; with one caption per image and repeat that is the caption) and paired-bootstrap deltas and
    p-values against the baseline. Per decoding repeat, then the mean over repeats, as for POPE; the counts (n,
    mentions, ...) are summed over repeats."""
    groups, by_group, empty = split_groups(captions, groups)
    rows = []
    for names in groups:
        task, model, setting = names
        current = by_group.get(names, empty)
        x = _sums_matrix(current)
        n = len(current)
        clusters, n_images = st.clusters_of(current["image_id"])
        weights = st.cluster_weights(group_rng(seed, "ci", *names), n_images, resamples)
        points, boots = _chair_stats(current, clusters, n_images, weights)
        row = {"task": task, "model": model, "setting": setting, "baseline": baseline, "n": n,
               "n_images": n_images, "n_mentions": int(x[:, 2].sum()), "n_hallucinated_mentions": int(x[:, 1].sum()),
               "n_hallucinated_captions": int(x[:, 0].sum())}
        spread: dict = {"n_repeats": n_repeats(current)}
        for metric in CHAIR_METRICS:
            row[metric] = float(_mean_stat(points, metric))
            row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = percentile_interval(_mean_stat(boots, metric),
                                                                                    confidence)
            _spread_columns(spread, metric, points, metric)
        base = by_group.get((task, model, baseline))
        if setting != baseline and base is not None:
            b, s, clusters_b, clusters_s, n_images, row["n_paired"] = paired_frames(base, current, names, baseline)
            weights = st.cluster_weights(group_rng(seed, "paired", *names), n_images, resamples)
            sides = {"b": _chair_stats(b, clusters_b, n_images, weights),
                     "s": _chair_stats(s, clusters_s, n_images, weights)}
            for metric in CHAIR_METRICS:
                deltas = _mean_stat(sides["s"][1], metric) - _mean_stat(sides["b"][1], metric)
                _delta_columns(row, metric, _mean_stat(sides["s"][0], metric) - _mean_stat(sides["b"][0], metric),
                               deltas, confidence)
                row[f"{metric}_p_value"] = bootstrap_p(deltas)
        else:
            row.update(_empty_paired(("",), CHAIR_METRICS, (), ("n_paired",)))
        row.update(spread)
        rows.append(row)
        log.info("chair %s/%s: n=%d (%d repeat(s)) CHAIRs=%.3f CHAIRi=%.3f", model, setting, n, row["n_repeats"],
                 row["chair_s"], row["chair_i"])
    return records_frame(rows)


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


def read_inference(paths: list[str], task: str) -> tuple[pl.DataFrame, list[tuple[str, str, str]]]:
    """Every inference file of one task (all repeats), checked against its file name; (rows, groups in order)."""
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
        if task == "pope":
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


def baseline_of(cfg: dict) -> str:
    """The setting every other is compared with (scoring.baseline, validated at start)."""
    return cfg["scoring"].get("baseline", BASELINE)


def _metadata(cfg: dict, interval: str, extra: dict | None = None) -> dict:
    meta = {"seed": cfg["seed"], "scoring": cfg["scoring"], "baseline_setting": baseline_of(cfg),
            "interval": interval, "numpy": np.__version__}
    meta.update(extra or {})
    return meta


# --- tables ----------------------------------------------------------------------------------------------------

TABLE1 = [("accuracy", "Acc (%)", 100.0, 1), ("f1", "F1", 1.0, 2), ("yes_ratio", "Yes-ratio", 1.0, 2)]
TABLE2 = [("chair_s", "CHAIRs (%)", 100.0, 1), ("chair_i", "CHAIRi (%)", 100.0, 1)]


def _fmt(value: float, decimals: int, sign: bool = False) -> str:
    if value is None or not np.isfinite(value):
        return "—"
    if sign and round(value, decimals) == 0:
        return f"±{0:.{decimals}f}"
    text = f"{value:+.{decimals}f}" if sign else f"{value:.{decimals}f}"
    return text.replace("-", "−")


def _fmt_p(p: float) -> str:
    if p is None or not np.isfinite(p):
        return ""
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


PYES_TABLE = [("p_yes_auroc", "AUROC", 1.0, 3), ("p_yes_brier", "Brier", 1.0, 3), ("p_yes_ece", "ECE", 1.0, 3),
              ("p_yes_disagreement", "Disagree (%)", 100.0, 1)]
PYES_SUFFIXES = ("", "_ci_low", "_ci_high", "_delta", "_delta_ci_low", "_delta_ci_high", "_p_value")


def metric_rows(metrics: pl.DataFrame) -> dict[tuple[str, str], dict]:
    """(model, setting) -> that metrics row as a dict, a missing value as NaN."""
    return {(r["model"], r["setting"]): {k: math.nan if v is None else v for k, v in r.items()}
            for r in metrics.iter_rows(named=True)}


def _cell(r: dict, metric: str, scale: float, decimals: int) -> str:
    """'value [low, high] · Δ delta, p' for one metric of one metrics row (— when there is no value)."""
    value = float(r[metric]) * scale
    if not np.isfinite(value):
        return "—"
    low, high = float(r[f"{metric}_ci_low"]) * scale, float(r[f"{metric}_ci_high"]) * scale
    cell = f"{_fmt(value, decimals)} [{_fmt(low, decimals)}, {_fmt(high, decimals)}]"
    delta, p = float(r[f"{metric}_delta"]) * scale, float(r[f"{metric}_p_value"])
    if np.isfinite(delta):
        cell += f" · Δ {_fmt(delta, decimals, sign=True)}"
        if _fmt_p(p):
            cell += f", {_fmt_p(p)}"
    return cell


def build_table(metrics: pl.DataFrame, paper: dict, table_key: str, spec, models: dict[str, dict],
                settings: list[str], confidence: float, notes: tuple[str, ...] = (),
                strict: bool = False, unit: str = "images resampled") -> tuple[pl.DataFrame, str]:
    """(CSV frame, markdown text): settings as rows, one column group per model (config order), for each
    metric our value with its interval, the delta vs baseline with its p-value, and the paper's number.
    ``unit`` names what the bootstrap resamples, for the table's caption."""
    present_models = [m for m in models if m in set(metrics["model"])]
    present_settings = [s for s in settings if s in set(metrics["setting"])]
    matched = match_paper_models({m: models[m] for m in present_models}, paper.get("models", {}))
    setting_of_row = paper.get("settings", {})
    published: dict[tuple[str, str], dict] = {}
    for theirs, rows in (paper.get(table_key) or {}).items():
        for row_name, values in rows.items():
            published[(theirs, setting_of_row.get(row_name, row_name))] = values or {}
    labels = {m: paper["models"][matched[m]]["label"] if m in matched else m for m in present_models}
    by_key = metric_rows(metrics)
    repeats = repeats_in(metrics)

    paper_name = {ours: theirs for theirs, ours in setting_of_row.items() if theirs.lower() != ours.lower()}
    csv_rows, md_rows, strict_rows, spread_rows = [], [], [], []
    for setting in present_settings:
        csv_row: dict = {"setting": setting}
        md_cells = [f"{setting} ({paper_name[setting]})" if setting in paper_name else setting]
        strict_cells = [md_cells[0]]
        spread_cells = [md_cells[0]]
        for model in present_models:
            r = by_key.get((model, setting))
            paper_values = published.get((matched.get(model), setting), {})
            for metric, _, scale, decimals in spec:
                get = (lambda k, r=r: float(r[k]) if r is not None else math.nan)  # noqa: E731
                value, low, high = (get(metric) * scale, get(f"{metric}_ci_low") * scale,
                                    get(f"{metric}_ci_high") * scale)
                delta, p = get(f"{metric}_delta") * scale, get(f"{metric}_p_value")
                theirs = paper_values.get(metric)
                prefix = f"{model}:{metric}"
                csv_row.update({prefix: value, f"{prefix}_ci_low": low, f"{prefix}_ci_high": high,
                                f"{prefix}_delta": delta, f"{prefix}_p_value": p,
                                f"{prefix}_paper": math.nan if theirs is None else float(theirs)})
                cell = "—" if r is None else _cell(r, metric, scale, decimals)
                md_cells += [cell, "—" if theirs is None else f"{theirs:.{decimals}f}"]
                if repeats > 1:  # the per-repeat spread (with one repeat the CSV keeps its old columns)
                    sd, lo, hi = (get(f"{metric}_repeat_{k}") * scale for k in ("sd", "min", "max"))
                    csv_row.update({f"{prefix}_repeat_sd": sd, f"{prefix}_repeat_min": lo,
                                    f"{prefix}_repeat_max": hi})
                    spread_cells.append(_spread_cell(sd, lo, hi, decimals))
            if strict and r is not None:
                csv_row[f"{model}:strict_accuracy"] = r["strict_accuracy"] * 100
                csv_row[f"{model}:n_unknown"] = int(r["n_unknown"])
                strict_cells += [f"{_fmt(r['strict_accuracy'] * 100, 1)} [{_fmt(r['strict_accuracy_ci_low'] * 100, 1)}, "
                                 f"{_fmt(r['strict_accuracy_ci_high'] * 100, 1)}]",
                                 f"{int(r['n_unknown'])} / {int(r['n'])}"]
            elif strict:
                strict_cells += ["—", "—"]
        csv_rows.append(csv_row)
        md_rows.append(md_cells)
        strict_rows.append(strict_cells)
        spread_rows.append(spread_cells)

    header = ["Setting"]
    for model in present_models:
        for _, label, _, _ in spec:
            header += [f"{labels[model]} {label}", "paper"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in md_rows]
    pct = round(confidence * 100)
    lines += ["", f"Ours: value [{pct}% percentile bootstrap interval, {unit}]; Δ: difference to the baseline "
              "setting of the same model on the same samples, with its p-value; paper: the published number "
              "(— not reported)."]
    lines += list(notes)
    if repeats > 1:
        lines.append(repeats_note(repeats, unit))
        header = ["Setting"] + [f"{labels[m]} {label}" for m in present_models for _, label, _, _ in spec]
        lines += ["", f"Spread over the {repeats} decoding repeats: SD (min–max) of the per-repeat values:", "",
                  "| " + " | ".join(header) + " |", "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
        lines += ["| " + " | ".join(cells) + " |" for cells in spread_rows]
    if strict:
        header = ["Setting"] + [h for m in present_models for h in (f"{labels[m]} strict Acc (%)", "unknown / n")]
        lines += ["", "Strict parser (yes / no / unknown; unknown counts as wrong):", "",
                  "| " + " | ".join(header) + " |", "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
        lines += ["| " + " | ".join(cells) + " |" for cells in strict_rows]
    return records_frame(csv_rows), "\n".join(lines) + "\n"


def repeats_in(metrics: pl.DataFrame) -> int:
    """The most decoding repeats any group of a metrics table has (1 for a table without the column)."""
    if "n_repeats" not in metrics.columns or metrics["n_repeats"].drop_nulls().is_empty():
        return 1
    return max(1, int(metrics["n_repeats"].max()))


def _spread_cell(sd: float, low: float, high: float, decimals: int) -> str:
    if not np.isfinite(low):
        return "—"
    return f"{_fmt(sd, decimals)} ({_fmt(low, decimals)}–{_fmt(high, decimals)})"


def repeats_note(repeats: int, unit: str) -> str:
    """The tables' note on decoding repeats (only shown with more than one)."""
    return (f"Decoding repeats: every request was run {repeats} times (repeat 0 with the config seed, the others "
            "with seeds derived from it); each value is the mean of the per-repeat values, its interval comes from "
            f"the same clustered bootstrap ({unit}, each image with all its repeats), so it covers the sampling of "
            "images and the decoding noise together; the per-repeat spread is shown below.")


def build_pyes_table(metrics: pl.DataFrame, paper: dict, models: dict[str, dict], settings: list[str],
                     confidence: float) -> tuple[pl.DataFrame, str]:
    """(CSV frame, markdown text) of the P(yes) metrics: one row per model x setting (config order). The CSV
    holds the metrics table's own columns (fractions); the markdown shows disagreement in percent."""
    present_models = [m for m in models if m in set(metrics["model"])]
    present_settings = [s for s in settings if s in set(metrics["setting"])]
    matched = match_paper_models({m: models[m] for m in present_models}, paper.get("models", {}))
    labels = {m: paper["models"][matched[m]]["label"] if m in matched else m for m in present_models}
    by_key = metric_rows(metrics)
    repeats = repeats_in(metrics)
    columns = ["model", "setting", "n", "n_p_yes"] + [f"{m}{s}" for m, *_ in PYES_TABLE for s in PYES_SUFFIXES]
    if repeats > 1:  # with one repeat the CSV keeps its old columns
        columns += ["n_repeats"] + [f"{m}_repeat_{k}" for m, *_ in PYES_TABLE for k in ("sd", "min", "max")]
    csv_rows, md_rows = [], []
    for model in present_models:
        first = True
        for setting in present_settings:
            r = by_key.get((model, setting))
            if r is None:
                continue
            csv_rows.append({c: r[c] for c in columns})
            md_rows.append([labels[model] if first else "", setting, f"{int(r['n_p_yes'])} / {int(r['n'])}"]
                           + [_cell(r, metric, scale, decimals) for metric, _, scale, decimals in PYES_TABLE])
            first = False
    header = ["Model", "Setting", "with P(yes) / n"] + [label for _, label, _, _ in PYES_TABLE]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":---", ":---"] + ["---:"] * (len(header) - 2)) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in md_rows]
    pct = round(confidence * 100)
    lines += ["", "P(yes) = P(Yes) / (P(Yes) + P(No)) at the first generated step, where the backend gives it (rows "
              "without it are left out; — no P(yes) at all). AUROC: of P(yes) against the label (Mann–Whitney, ties "
              "count half); Brier: mean (P(yes) − label)²; ECE: expected calibration error over 10 equal-width bins; "
              "Disagree: answers whose parsed answer (POPE's official rule) differs from P(yes) > 0.5. ECE is biased "
              "upwards in small samples and more so in a resample, so its interval can lie above the value.",
              f"Value [{pct}% percentile bootstrap interval, images resampled with all their questions]; Δ: "
              "difference to the baseline setting of the same model on the questions both answered with a P(yes), "
              "with its paired image-level bootstrap p-value."]
    if repeats > 1:
        lines.append(repeats_note(repeats, "images resampled with all their questions").replace(
            "shown below", "in the CSV (*_repeat_sd, *_repeat_min, *_repeat_max)"))
    return records_frame(csv_rows, columns), "\n".join(lines) + "\n"


def write_table_files(frame: pl.DataFrame, markdown: str, csv_path: str, md_path: str, title: str) -> None:
    with atomic_output(csv_path, "w") as f:
        write_csv(frame, f, float_format="%.6g")
    with atomic_output(md_path, "w") as f:
        f.write(f"# {title}\n\n{markdown}")


# --- rule entry points ---------------------------------------------------------------------------------------------

def main_score_pope(smk) -> None:
    cfg = params_config(smk)
    sc = cfg["scoring"]
    data, groups = read_inference(list(smk.input.inference), "pope")
    log.info("scoring %d POPE rows in %d files", len(data), len(groups))
    metrics, answers = score_pope(data, cfg["seed"], sc["bootstrap_resamples"], sc["confidence"], groups,
                                  baseline_of(cfg))
    repeats = repeats_in(metrics)
    meta = _metadata(cfg, POPE_INTERVAL, {
        "answer_rule": "POPE evaluate.py (official); strict parser beside (strict_*)",
        "tests": ("accuracy, yes_ratio: exact McNemar per question; others: paired bootstrap over images"
                  if repeats == 1 else "paired bootstrap over images (all repeats) for every metric"),
        "repeats": REPEATS_METADATA,
        "p_yes": "p_yes_* over rows with a p_yes; AUROC Mann-Whitney (ties half), Brier, ECE with "
                 f"{st.ECE_BINS} equal-width bins, disagreement of the official answer with p_yes > 0.5"})
    write_table(answers, smk.output.answers, "pope_answers", meta)
    write_table(metrics, smk.output.metrics, "pope_metrics", meta)


def main_score_chair(smk) -> None:
    cfg = params_config(smk)
    sc = cfg["scoring"]
    data, groups = read_inference(list(smk.input.inference), "caption")
    try:
        vocab = chair.Vocabulary.load(smk.input.synonyms)
        images = sorted(set(data["image_id"].cast(pl.Int64).to_list())) if len(data) else []
        gt = chair.ground_truth(vocab, chair.load_json(smk.input.instances), chair.load_json(smk.input.captions),
                                images, str(smk.input.instances), str(smk.input.captions))
    except chair.ChairError as err:
        raise PipelineError(str(err)) from err
    log.info("CHAIR ground truth for %d images; scoring %d captions", len(gt), len(data))
    captions = score_captions(data, vocab, gt)
    metrics = chair_metrics(captions, cfg["seed"], sc["bootstrap_resamples"], sc["confidence"], groups,
                            baseline_of(cfg))
    meta = _metadata(cfg, CHAIR_INTERVAL, {"chair": "Rohrbach et al. 2018; every mention counts (repeats included)",
                                           "tests": "paired bootstrap over images", "repeats": REPEATS_METADATA})
    write_table(captions, smk.output.captions, "chair_captions", meta)
    write_table(metrics, smk.output.metrics, "chair_metrics", meta)


TABLE1_NOTES = ("Answers read with POPE's official rule (text before the first '.', a word 'No'/'not'/'no' -> no). "
                "Intervals (and Δ intervals) come from a clustered bootstrap that resamples images, each with all its "
                "questions, because answers about one image are correlated. p: exact McNemar test for accuracy and "
                "yes-ratio (per question, treating questions as independent), paired image-level bootstrap for F1.",)
TABLE2_NOTES = ("CHAIRs: captions with at least one hallucinated COCO object; CHAIRi: hallucinated object mentions / "
                "object mentions (repeats count). One caption per image, so resampling captions is resampling "
                "images. p: paired bootstrap over images.",)
# With decoding repeats McNemar's one answer per question no longer exists: every p-value is the paired bootstrap.
TABLE1_NOTES_REPEATS = ("Answers read with POPE's official rule (text before the first '.', a word 'No'/'not'/'no' -> "
                        "no). Intervals (and Δ intervals) come from a clustered bootstrap that resamples images, each "
                        "with all its questions, because answers about one image are correlated. p: paired "
                        "image-level bootstrap for every metric (an exact McNemar test needs one answer per question; "
                        "with several decoding repeats the bootstrap uses them all).",)
TABLE2_NOTES_REPEATS = ("CHAIRs: captions with at least one hallucinated COCO object; CHAIRi: hallucinated object "
                        "mentions / object mentions (repeated mentions count). One caption per image and repeat. p: "
                        "paired bootstrap over images.",)
TABLE1_UNIT = "images resampled with all their questions"
TABLE2_UNIT = "captions resampled (one per image)"


def _read_paper(path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as err:
        raise PipelineError(f"{path}: cannot read the paper's numbers ({err})") from err


def _main_table(smk, table_key: str, spec, title: str, schema: str, notes, strict: bool, unit: str) -> None:
    """``notes``: (with one repeat, with several decoding repeats)."""
    cfg = params_config(smk)
    metrics = read_table(smk.input.metrics, schema)
    notes = notes[0] if repeats_in(metrics) == 1 else notes[1]
    paper = _read_paper(smk.input.paper)
    models = {m["key"]: m for m in cfg["models"]}  # a list in params, to keep the config's order
    frame, markdown = build_table(metrics, paper, table_key, spec, models, cfg["settings"],
                                  cfg["scoring"]["confidence"], notes, strict, unit)
    write_table_files(frame, markdown, smk.output.csv, smk.output.md, title)


def main_pyes_table(smk) -> None:
    cfg = params_config(smk)
    metrics = read_table(smk.input.metrics, "pope_metrics")
    models = {m["key"]: m for m in cfg["models"]}
    frame, markdown = build_pyes_table(metrics, _read_paper(smk.input.paper), models, cfg["settings"],
                                       cfg["scoring"]["confidence"])
    write_table_files(frame, markdown, smk.output.csv, smk.output.md, "POPE: P(yes) discrimination and calibration")


def main(smk) -> None:
    entry = {
        "score_pope": main_score_pope,
        "score_chair": main_score_chair,
        "table1_pope": lambda s: _main_table(s, "table1_pope", TABLE1, "Table 1: POPE adversarial", "pope_metrics",
                                             (TABLE1_NOTES, TABLE1_NOTES_REPEATS), strict=True, unit=TABLE1_UNIT),
        "table2_chair": lambda s: _main_table(s, "table2_chair", TABLE2, "Table 2: CHAIR on COCO captions",
                                              "chair_metrics", (TABLE2_NOTES, TABLE2_NOTES_REPEATS), strict=False,
                                              unit=TABLE2_UNIT),
        "table_pope_pyes": main_pyes_table,
    }
    if smk.rule not in entry:
        raise PipelineError(f"score.py: no entry for rule '{smk.rule}'")
    entry[smk.rule](smk)


if "snakemake" in globals():
    run_main(main, snakemake)
