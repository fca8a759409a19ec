"""POPE scoring: answers read with POPE's official rule and a strict parser, the answer metrics with clustered
bootstrap intervals and paired tests against the baseline setting, and the P(yes) metrics.

Intervals, paired deltas and decoding repeats: see ``scoring``. p-values: an exact McNemar test (two-sided binomial
test on the discordant pairs; per question, i.e. it treats the questions as independent) for accuracy and
yes-ratio when both settings have one decoding repeat, the paired image-level bootstrap p-value otherwise and for
every other metric.

P(yes) metrics (from the inference tables' ``p_yes``, rows without it left out; P(yes) is taken from the untempered
first-step distribution, ``P_YES_TEMPERATURE`` = 1, not at the sampling temperature): AUROC of p_yes against the label
(Mann-Whitney, ties half), Brier score, expected calibration error (10 equal-width bins), and the share of answers
whose official parsed answer disagrees with ``p_yes > 0.5``; intervals and deltas as for the answer metrics
(deltas on the pairs where both settings have a p_yes). No p_yes at all gives NaN, not an error.
"""

import numpy as np
import polars as pl

from pii.core.stage import log
from pii.core.tables import records_frame
from pii.scoring import pope_answers as pm
from pii.scoring import stats as st
from pii.scoring.inference_files import (
    BASELINE,
    REPEATS_METADATA,
    delta_columns,
    empty_paired,
    first_positions,
    floats,
    mean_stat,
    member,
    n_repeats,
    paired_frames,
    repeats_in,
    repeats_of,
    single_repeat,
    split_groups,
    spread_columns,
)
from pii.scoring.stats import bootstrap_p, group_rng, mcnemar_exact, percentile_interval

POPE_METRICS = pm.METRICS
PYES_METRICS = tuple(f"p_yes_{m}" for m in st.PYES_METRICS)
# The temperature of the distribution P(yes) is read from: 1, the model's own, whatever temperature the answers are
# sampled at (vlm.p_yes_from_logits says why; vLLM's logprobs are raw too; an OpenAI server decides its own).
P_YES_TEMPERATURE = 1.0
MCNEMAR_METRICS = ("accuracy", "yes_ratio")
POPE_INTERVAL = ("percentile bootstrap over images (clustered: all questions about an image resampled together); "
                 "paired bootstrap for deltas resamples images too")


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
            row[f"{prefix}{metric}"] = float(mean_stat(points, metric))
            row[f"{prefix}{metric}_ci_low"], row[f"{prefix}{metric}_ci_high"] = percentile_interval(
                mean_stat(boots, metric), confidence)
            spread_columns(spread, f"{prefix}{metric}", points, metric)
    has = np.isfinite(floats(answers["p_yes"]))
    row["n_p_yes"] = int(has.sum())
    points, boots = _pyes_stats(answers, has, clusters, weights, masks)
    for metric in PYES_METRICS:
        row[metric] = float(mean_stat(points, metric)[0])
        row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = percentile_interval(mean_stat(boots, metric), confidence)
        spread_columns(spread, metric, points, metric)
    return row, spread



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
            deltas = mean_stat(stats["s"][1], metric) - mean_stat(stats["b"][1], metric)
            delta_columns(row, key, mean_stat(stats["s"][0], metric) - mean_stat(stats["b"][0], metric), deltas,
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
        deltas = mean_stat(stats["s"][1], metric) - mean_stat(stats["b"][1], metric)
        delta_columns(row, metric, (mean_stat(stats["s"][0], metric) - mean_stat(stats["b"][0], metric))[0],
                       deltas, confidence)
        row[f"{metric}_p_value"] = bootstrap_p(deltas)
    return row



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
            row.update(empty_paired(("", "strict_"), POPE_METRICS, PYES_METRICS, ("n_paired", "n_paired_p_yes")))
        row.update(spread)
        rows.append(row)
        log.info("pope %s/%s: n=%d (%d repeat(s)) accuracy=%.3f unknown(strict)=%d", model, setting, row["n"],
                 row["n_repeats"], row["accuracy"], row["n_unknown"])
    return records_frame(rows), answers



def pope_metadata(metrics: pl.DataFrame) -> dict:
    """What the POPE tables' metadata says beyond the settings: the answer rule, the tests (McNemar needs one
    repeat), repeats and P(yes)."""
    return {
        "answer_rule": "POPE evaluate.py (official); strict parser beside (strict_*)",
        "tests": ("accuracy, yes_ratio: exact McNemar per question; others: paired bootstrap over images"
                  if repeats_in(metrics) == 1 else "paired bootstrap over images (all repeats) for every metric"),
        "repeats": REPEATS_METADATA,
        "p_yes": "p_yes_* over rows with a p_yes; AUROC Mann-Whitney (ties half), Brier, ECE with "
                 f"{st.ECE_BINS} equal-width bins, disagreement of the official answer with p_yes > 0.5",
        "p_yes_temperature": P_YES_TEMPERATURE}
