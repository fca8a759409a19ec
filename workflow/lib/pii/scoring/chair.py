"""CHAIR scoring (Rohrbach et al. 2018): per-caption mentioned and hallucinated COCO objects (``chair``), and per
task/model/setting CHAIRs, CHAIRi, recall and caption length with clustered bootstrap intervals and paired
bootstrap deltas and p-values against the baseline setting (``scoring``). One caption per image and repeat, so
resampling images is resampling captions; every mention counts, repeated ones too."""

import math
import re

import numpy as np
import polars as pl

from pii.core.stage import PipelineError, log
from pii.core.tables import records_frame
from pii.scoring import chair_mentions
from pii.scoring import stats as st
from pii.scoring.inference_files import (
    BASELINE,
    REPEATS_METADATA,
    delta_columns,
    empty_paired,
    mean_stat,
    n_repeats,
    paired_frames,
    repeats_of,
    split_groups,
    spread_columns,
)
from pii.scoring.stats import bootstrap_p, group_rng, percentile_interval

CHAIR_METRICS = ("chair_s", "chair_i", "recall", "mean_length")
CHAIR_INTERVAL = ("percentile bootstrap over images (clustered by image_id; one caption per image, so captions are "
                  "resampled); paired bootstrap for deltas resamples images too")
CHAIR_METADATA = {"chair": "Rohrbach et al. 2018; every mention counts (repeats included)",
                  "tests": "paired bootstrap over images", "repeats": REPEATS_METADATA}


def load_ground_truth(captions: pl.DataFrame, synonyms: str, instances: str, coco_captions: str
                      ) -> tuple[chair_mentions.Vocabulary, dict[int, set[str]]]:
    """(vocabulary, image id -> its ground-truth objects) for the images of the captions, from the synonym table
    and the COCO instances and captions files; a problem with those files is a PipelineError."""
    try:
        vocab = chair_mentions.Vocabulary.load(synonyms)
        images = sorted(set(captions["image_id"].cast(pl.Int64).to_list())) if len(captions) else []
        gt = chair_mentions.ground_truth(vocab, chair_mentions.load_json(instances), chair_mentions.load_json(coco_captions), images,
                                str(instances), str(coco_captions))
    except chair_mentions.ChairError as err:
        raise PipelineError(str(err)) from err
    return vocab, gt


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


# A sentence ends at . ! or ? followed by white space or the end of the caption ("3.5 m" goes on).
SENTENCE_END = re.compile(r"[.!?](?=\s|$)")
COMPLETE = "_complete"  # suffix of the per-caption counts and metrics scored without an unfinished last sentence


def drop_incomplete_sentence(text: str) -> str:
    """The caption up to the end of its last finished sentence; empty when no sentence was finished (the whole
    caption is the unfinished sentence)."""
    ends = [m.end() for m in SENTENCE_END.finditer(text)]
    return text[:ends[-1]] if ends else ""


def score_captions(df: pl.DataFrame, vocab: chair_mentions.Vocabulary, gt: dict[int, set[str]],
                   drop_incomplete: bool = False) -> pl.DataFrame:
    """Per-caption CHAIR detail: mentioned and hallucinated objects, ground truth, counts; the repeat column is
    kept when present. With ``drop_incomplete`` (scoring.chair.drop_incomplete_sentence), each caption is also
    scored without its unfinished last sentence when it was cut at max_new_tokens (``response_complete`` and the
    counts with the suffix ``_complete``; a caption that ended by itself is scored as it is)."""
    has_repeat = "repeat" in df.columns
    records = []
    for row in df.iter_rows(named=True):
        truth = gt[int(row["image_id"])]
        cs = chair_mentions.score_caption(vocab, row["response"], truth)
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
            # a caption that stopped at max_new_tokens (finish_reason length) ends mid-sentence; counted per group
            "truncated": row.get("finish_reason") == "length", "n_response_tokens": row.get("n_response_tokens"),
        })
        if drop_incomplete:
            kept = drop_incomplete_sentence(row["response"]) if record["truncated"] else row["response"]
            cc = cs if kept == row["response"] else chair_mentions.score_caption(vocab, kept, truth)
            record.update({"response_complete": kept, f"hallucinated{COMPLETE}": cc.n_hallucinated > 0,
                           f"n_hallucinated{COMPLETE}": cc.n_hallucinated, f"n_mentions{COMPLETE}": cc.n_mentions,
                           f"n_gt_mentioned{COMPLETE}": cc.n_gt_mentioned, f"n_gt{COMPLETE}": len(cc.gt_objects),
                           f"n_words{COMPLETE}": cc.n_words})
        records.append(record)
    columns = ["sample_id", "task", "model", "setting"] + (["repeat"] if has_repeat else []) + [
        "image_id", "response", "mentioned_words", "mentioned_objects", "hallucinated_words", "hallucinated_objects",
        "gt_objects", "n_words", "n_mentions", "n_hallucinated", "hallucinated", "n_gt", "n_gt_mentioned",
        "truncated", "n_response_tokens"]
    if drop_incomplete:
        columns += ["response_complete"] + [f"{c}{COMPLETE}" for c in _CHAIR_SUMS]
    types = {"n_response_tokens": pl.Int64, **({"repeat": pl.Int64} if has_repeat else {})}
    return records_frame(records, columns, types)


def _sums_matrix(captions: pl.DataFrame, suffix: str = "") -> np.ndarray:
    """Per-caption sums in the order of ``_CHAIR_SUMS``, then a column of ones (the caption count)."""
    x = np.asarray(captions.select(pl.col(f"{c}{suffix}").cast(pl.Float64) for c in _CHAIR_SUMS).to_numpy(),
                   dtype=float).reshape(-1, len(_CHAIR_SUMS))
    return np.hstack([x, np.ones((len(x), 1))])


def _chair_point_and_boot(x: np.ndarray, clusters: np.ndarray, n_images: int, weights: np.ndarray):
    boot = weights @ st.cluster_sums(clusters, n_images, x)
    total = x.sum(axis=0)
    return chair_from_sums(total[:-1], total[-1]), chair_from_sums(boot[:, :-1], boot[:, -1])


def _chair_stats(captions: pl.DataFrame, clusters: np.ndarray, n_images: int, weights: np.ndarray,
                 suffix: str = ""):
    """Per repeat: (point, bootstrap) CHAIR metrics, every repeat with the same image weights."""
    x = _sums_matrix(captions, suffix)
    per = [_chair_point_and_boot(x[m], clusters[m], n_images, weights) for m in repeats_of(captions)]
    return [p for p, _ in per], [b for _, b in per]


def truncation(captions: pl.DataFrame) -> dict:
    """How many captions of a group hit max_new_tokens (share of all, repeats included) and their mean length in
    response tokens: CHAIR moves with max_new_tokens, and a looping caption is cut mid-sentence."""
    n = len(captions)
    cut = int(captions["truncated"].fill_null(False).sum()) if "truncated" in captions.columns else 0
    tokens = (captions["n_response_tokens"].drop_nulls() if "n_response_tokens" in captions.columns
              else pl.Series([], dtype=pl.Int64))
    return {"n_truncated": cut, "truncated_share": cut / n if n else math.nan,
            "mean_response_tokens": float(tokens.mean()) if len(tokens) else math.nan}


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
               "n_hallucinated_captions": int(x[:, 0].sum()), **truncation(current)}
        spread: dict = {"n_repeats": n_repeats(current)}
        for metric in CHAIR_METRICS:
            row[metric] = float(mean_stat(points, metric))
            row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = percentile_interval(mean_stat(boots, metric),
                                                                                    confidence)
            spread_columns(spread, metric, points, metric)
        if f"hallucinated{COMPLETE}" in current.columns:  # the same images resampled, so the two are comparable
            points_c, boots_c = _chair_stats(current, clusters, n_images, weights, COMPLETE)
            for metric in CHAIR_METRICS:
                row[f"{metric}{COMPLETE}"] = float(mean_stat(points_c, metric))
                row[f"{metric}{COMPLETE}_ci_low"], row[f"{metric}{COMPLETE}_ci_high"] = percentile_interval(
                    mean_stat(boots_c, metric), confidence)
        base = by_group.get((task, model, baseline))
        if setting != baseline and base is not None:
            b, s, clusters_b, clusters_s, n_images, row["n_paired"] = paired_frames(base, current, names, baseline)
            weights = st.cluster_weights(group_rng(seed, "paired", *names), n_images, resamples)
            sides = {"b": _chair_stats(b, clusters_b, n_images, weights),
                     "s": _chair_stats(s, clusters_s, n_images, weights)}
            for metric in CHAIR_METRICS:
                deltas = mean_stat(sides["s"][1], metric) - mean_stat(sides["b"][1], metric)
                delta_columns(row, metric, mean_stat(sides["s"][0], metric) - mean_stat(sides["b"][0], metric),
                               deltas, confidence)
                row[f"{metric}_p_value"] = bootstrap_p(deltas)
        else:
            row.update(empty_paired(("",), CHAIR_METRICS, (), ("n_paired",)))
        row.update(spread)
        rows.append(row)
        log.info("chair %s/%s: n=%d (%d repeat(s)) CHAIRs=%.3f CHAIRi=%.3f", model, setting, n, row["n_repeats"],
                 row["chair_s"], row["chair_i"])
    return records_frame(rows)

