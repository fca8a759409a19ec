"""Shared statistics for the scoring stage: seeded generators, the clustered bootstrap, percentile intervals,
paired tests, and the P(yes) metrics.

Clustered bootstrap. Answers about one image are correlated (POPE asks up to six questions per image), so the
unit of resampling is the image, not the row: a resample draws as many images as the group has, with
replacement, and every row of a drawn image comes along with the image's multiplicity. ``cluster_weights``
gives the (resamples, clusters) multiplicity matrix ``W``; a statistic that is a ratio of sums is then
``W @ cluster_sums(...)`` for every resample at once (one matrix product, no per-resample loop), and a
statistic that needs per-row weights (AUROC) takes ``W[:, codes]``. With one row per cluster (CHAIR: one
caption per image) this is the ordinary bootstrap over rows, with the same random numbers.

Weighted metrics. ``pyes_metrics`` and ``auroc`` take a (resamples, n) matrix of row weights; the point
estimate is the same code with all weights 1, so a resample and the reported value can never disagree in
definition.

Decoding repeats. With several repeats of every request, a metric is computed per repeat and the reported value is
the mean over repeats (``mean_over_repeats``; with one repeat, that repeat's value exactly). The clustered
bootstrap draws images once per resample and applies the same multiplicities to every repeat's rows, then takes
the mean over repeats of the resampled metric: a drawn image brings all its questions in all repeats, so the
interval covers the sampling of images and the decoding noise together. ``repeat_spread`` gives the spread of the
per-repeat values (sample SD, min, max).
"""

from __future__ import annotations

import math
import warnings
import zlib

import numpy as np
from scipy.stats import binomtest

ECE_BINS = 10


# --- generators and resampling -------------------------------------------------------------------------------

def group_rng(seed: int, *names: str) -> np.random.Generator:
    """A generator seeded by the global seed and the group's names (stable across runs and group orders)."""
    return np.random.default_rng([int(seed), zlib.crc32("/".join(names).encode())])


def resample_weights(rng: np.random.Generator, n: int, resamples: int) -> np.ndarray:
    """(resamples, n) multiplicities of each of n units in each bootstrap resample (rows sum to n): n draws
    with replacement per resample."""
    if n == 0:
        return np.zeros((resamples, 0), dtype=np.float64)
    idx = rng.integers(0, n, size=(resamples, n))
    idx += np.arange(resamples)[:, None] * n
    return np.bincount(idx.ravel(), minlength=resamples * n).reshape(resamples, n).astype(np.float64)


def clusters_of(keys) -> tuple[np.ndarray, int]:
    """(cluster index of each row, number of clusters) for cluster keys such as image ids. Clusters are numbered
    in order of first appearance, so unique keys give cluster i = row i."""
    keys = keys.to_numpy() if hasattr(keys, "to_numpy") else np.asarray(keys)
    if keys.dtype.kind in "biufUS":  # sortable: numbered through np.unique, then renumbered by first appearance
        _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        rank = np.empty(first.size, dtype=np.int64)
        rank[np.argsort(first, kind="stable")] = np.arange(first.size)
        return rank[inverse.reshape(-1)], int(first.size)
    index: dict = {}
    codes = np.fromiter((index.setdefault(k, len(index)) for k in keys.tolist()), dtype=np.int64, count=keys.size)
    return codes, len(index)


def cluster_weights(rng: np.random.Generator, n_clusters: int, resamples: int) -> np.ndarray:
    """(resamples, n_clusters) multiplicities of each cluster: the clustered bootstrap draws clusters."""
    return resample_weights(rng, n_clusters, resamples)


def cluster_sums(codes: np.ndarray, n_clusters: int, x: np.ndarray) -> np.ndarray:
    """Per-cluster column sums of ``x`` (rows, d) -> (n_clusters, d)."""
    x = np.asarray(x, dtype=np.float64)
    x = x.reshape(len(codes), -1) if x.ndim != 2 else x
    out = np.empty((n_clusters, x.shape[1]), dtype=np.float64)
    for j in range(x.shape[1]):
        out[:, j] = np.bincount(codes, weights=x[:, j], minlength=n_clusters)
    return out


# --- decoding repeats ---------------------------------------------------------------------------------------

def repeat_masks(repeats, n: int) -> list[np.ndarray]:
    """One boolean mask over ``n`` rows per decoding repeat, in ascending repeat order. ``repeats`` None (a table
    without a repeat column) or no rows: one mask covering every row (a single repeat)."""
    if repeats is None or n == 0:
        return [np.ones(n, dtype=bool)]
    r = np.asarray(repeats)
    return [r == k for k in np.unique(r)]


def mean_over_repeats(values) -> np.ndarray:
    """The mean over repeats (axis 0) of per-repeat values, repeats where a value is NaN left out (NaN only where
    every repeat is NaN). One repeat: its values unchanged, bit for bit."""
    stack = np.asarray(values, dtype=float)
    if stack.shape[0] == 1:
        return stack[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices: NaN is the answer
        return np.nanmean(stack, axis=0)


def repeat_spread(values) -> dict[str, float]:
    """Spread of one metric's per-repeat values (NaN values left out): sample SD (n - 1; NaN with fewer than two
    values), min and max (NaN without values)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return {"repeat_sd": float(np.std(v, ddof=1)) if v.size > 1 else math.nan,
            "repeat_min": float(v.min()) if v.size else math.nan,
            "repeat_max": float(v.max()) if v.size else math.nan}


# --- intervals and tests ------------------------------------------------------------------------------------

def percentile_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """Percentile interval of bootstrap values, NaN resamples ignored; (NaN, NaN) if every resample is NaN."""
    values = np.asarray(values, dtype=float)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return math.nan, math.nan
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(finite, [alpha, 1.0 - alpha])
    return float(low), float(high)


def bootstrap_p(deltas: np.ndarray) -> float:
    """Two-sided paired-bootstrap p-value for "no difference": twice the smaller share of resampled deltas on
    either side of 0 (add-one corrected so it is never 0)."""
    deltas = np.asarray(deltas, dtype=float)
    deltas = deltas[np.isfinite(deltas)]
    if deltas.size == 0:
        return math.nan
    lower = (np.sum(deltas <= 0) + 1) / (deltas.size + 1)
    upper = (np.sum(deltas >= 0) + 1) / (deltas.size + 1)
    return float(min(1.0, 2.0 * min(lower, upper)))


def mcnemar_exact(first: np.ndarray, second: np.ndarray) -> tuple[int, int, float]:
    """Exact McNemar test of paired binary outcomes: (first-only count, second-only count, two-sided p).
    Every pair (here: every question) is one independent trial. With no discordant pair there is no evidence
    of a difference: p = 1."""
    first = np.asarray(first, dtype=bool)
    second = np.asarray(second, dtype=bool)
    b = int(np.sum(first & ~second))
    c = int(np.sum(~first & second))
    if b + c == 0:
        return b, c, 1.0
    return b, c, float(binomtest(b, b + c, 0.5).pvalue)


# --- weighted metrics ---------------------------------------------------------------------------------------

def ratio(num, den) -> np.ndarray:
    """num / den, NaN where den is 0 (never an exception, never a silent 0)."""
    num = np.asarray(num, dtype=float)
    den = np.asarray(den, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _row_clusters(n: int, clusters) -> np.ndarray:
    return np.arange(n) if clusters is None else np.asarray(clusters, dtype=np.int64)


def auroc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray, clusters=None) -> np.ndarray:
    """Weighted AUROC (the Mann-Whitney statistic: P(score of a positive > score of a negative), ties count
    half) for every row of ``weights``; NaN where a resample has no positive or no negative. ``weights`` is
    (resamples, n) per row, or (resamples, n_clusters) with ``clusters`` giving each row's cluster.

    Sort the negatives once; per resample, the cumulative negative weight up to each positive's score (found by
    binary search, once) counts its wins: O(resamples * n) with no per-resample sort. The weight matrices are
    float32 (exact for bootstrap multiplicities, whose sums stay below 2**24); the final sum is float64."""
    scores = np.asarray(scores, dtype=float)
    positive = np.asarray(positive, dtype=bool)
    clusters = _row_clusters(scores.size, clusters)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float32))
    order = np.argsort(scores[~positive], kind="stable")
    negatives = scores[~positive][order]
    pos_scores = scores[positive]
    low = np.searchsorted(negatives, pos_scores, side="left")      # negatives strictly below
    high = np.searchsorted(negatives, pos_scores, side="right")    # ... or tied
    cum = np.zeros((w.shape[0], negatives.size + 1), dtype=np.float32)
    np.cumsum(w[:, clusters[~positive][order]], axis=1, out=cum[:, 1:])
    w_pos = w[:, clusters[positive]]
    below_twice = cum[:, low]
    below_twice += cum[:, high]                       # 2 x (weight below + half the tied weight)
    wins = 0.5 * np.sum(w_pos * below_twice, axis=1, dtype=np.float64)
    return ratio(wins, w_pos.sum(axis=1, dtype=np.float64) * cum[:, -1].astype(np.float64))


def ece_bins(p: np.ndarray, bins: int = ECE_BINS) -> np.ndarray:
    """Equal-width bin of each probability: [0, 1/bins), [1/bins, 2/bins), ..., [(bins-1)/bins, 1]."""
    return np.clip(np.floor(np.asarray(p, dtype=float) * bins), 0, bins - 1).astype(np.int64)


PYES_METRICS = ("auroc", "brier", "ece", "disagreement")


def pyes_metrics(p: np.ndarray, label_yes: np.ndarray, answer_yes: np.ndarray, weights: np.ndarray,
                 clusters=None) -> dict[str, np.ndarray]:
    """P(yes) metrics for every row of ``weights`` ((resamples, n) per row, or (resamples, n_clusters) with
    ``clusters``); the inputs' rows are the answers that have a P(yes). auroc: of p against the label; brier:
    mean (p - label)^2; ece: sum over 10 equal-width bins of (bin share) * |mean label - mean p| (= |sum of
    (label - p)| over the bin / n); disagreement: share of answers whose parsed answer (yes/no) differs from
    p > 0.5. All NaN without rows."""
    p = np.asarray(p, dtype=float)
    y = np.asarray(label_yes, dtype=bool)
    weights = np.atleast_2d(np.asarray(weights, dtype=float))
    codes = _row_clusters(p.size, clusters)
    x = np.empty((p.size, ECE_BINS + 3))
    x[:, :ECE_BINS] = np.eye(ECE_BINS)[ece_bins(p)] * (y - p)[:, None]
    x[:, ECE_BINS] = (p - y) ** 2
    x[:, ECE_BINS + 1] = np.asarray(answer_yes, dtype=bool) != (p > 0.5)
    x[:, ECE_BINS + 2] = 1.0
    sums = weights @ cluster_sums(codes, weights.shape[1], x)
    total = sums[:, ECE_BINS + 2]
    return {
        "auroc": auroc(p, y, weights, codes),
        "brier": ratio(sums[:, ECE_BINS], total),
        "ece": ratio(np.abs(sums[:, :ECE_BINS]).sum(axis=1), total),
        "disagreement": ratio(sums[:, ECE_BINS + 1], total),
    }
