"""Statistics shared by the scoring stage: clustered bootstrap, intervals, paired tests, P(yes) metrics."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.stats import mannwhitneyu

from pii.scoring import stats as st

# --- resampling ----------------------------------------------------------------------------------------------


def test_bootstrap_is_seeded_and_group_specific():
    a = st.resample_weights(st.group_rng(0, "pope", "m", "s"), 50, 20)
    b = st.resample_weights(st.group_rng(0, "pope", "m", "s"), 50, 20)
    c = st.resample_weights(st.group_rng(0, "pope", "m", "t"), 50, 20)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.all(a.sum(axis=1) == 50)


def test_clusters_in_order_of_first_appearance_and_their_sums():
    codes, k = st.clusters_of([7, 3, 7, 9, 3, 7])
    assert k == 3 and codes.tolist() == [0, 1, 0, 2, 1, 0]
    unique, k = st.clusters_of([5, 1, 4])
    assert k == 3 and unique.tolist() == [0, 1, 2]          # one row per cluster: cluster i is row i
    x = np.array([[1, 0], [0, 1], [1, 1], [2, 0], [0, 3], [1, 0]])
    assert st.cluster_sums(codes, 3, x).tolist() == [[3, 1], [0, 4], [2, 0]]
    assert st.cluster_sums(np.zeros(0, dtype=np.int64), 0, np.zeros((0, 6))).shape == (0, 6)


def test_bootstrap_interval_coverage_on_bernoulli():
    """A 95% percentile interval of a proportion (n=200, p=0.3) covers the truth in 90-99% of 200 simulations."""
    rng = np.random.default_rng(12345)
    hits = 0
    for sim in range(200):
        x = (rng.random(200) < 0.3).astype(float)
        weights = st.resample_weights(st.group_rng(sim, "coverage"), len(x), 1000)
        low, high = st.percentile_interval(weights @ x / len(x), 0.95)
        hits += low <= 0.3 <= high
    assert 0.90 <= hits / 200 <= 0.99


def correlated_answers(rng: np.random.Generator, n_images: int, per_image: int, truth: float):
    """(image of each row, correct or not) with strong within-image correlation: each image has its own chance
    of a correct answer, drawn from Beta(2 truth, 2 (1 - truth)) (mean = truth, intra-image correlation 1/3)."""
    p_image = rng.beta(2 * truth, 2 * (1 - truth), n_images)
    image = np.repeat(np.arange(n_images), per_image)
    return image, rng.random(image.size) < p_image[image]


def clustered_interval(rng: np.random.Generator, clusters, x: np.ndarray, resamples: int) -> tuple[float, float]:
    """95% interval of mean(x) from the clustered bootstrap, as the scorer computes it (weights @ cluster sums)."""
    codes, k = st.clusters_of(clusters)
    sums = st.cluster_sums(codes, k, np.column_stack([x, np.ones_like(x)]))
    boot = st.cluster_weights(rng, k, resamples) @ sums
    return st.percentile_interval(st.ratio(boot[:, 0], boot[:, 1]), 0.95)


def test_clustered_interval_is_wider_and_covers_at_the_nominal_rate():
    """400 simulated POPE groups (100 images x 6 questions, answers about one image correlated), 95% intervals
    of accuracy: resampling images covers the truth about 95% of the time; resampling rows is too narrow (the
    design effect 1 + 5 x 1/3 = 2.67 makes it cover ~77% in theory)."""
    truth, reps, resamples = 0.7, 400, 200
    rng = np.random.default_rng(20240613)
    hits = {"images": 0, "rows": 0}
    widths = {"images": [], "rows": []}
    for rep in range(reps):
        image, correct = correlated_answers(rng, 100, 6, truth)
        for kind, clusters in (("images", image), ("rows", np.arange(image.size))):
            low, high = clustered_interval(st.group_rng(rep, kind), clusters, correct.astype(float), resamples)
            hits[kind] += low <= truth <= high
            widths[kind].append(high - low)
    coverage = {k: v / reps for k, v in hits.items()}
    assert coverage["images"] >= 0.90, coverage
    assert coverage["rows"] <= 0.85, coverage
    assert coverage["images"] - coverage["rows"] >= 0.08, coverage
    assert np.mean(widths["images"]) > 1.4 * np.mean(widths["rows"]), widths    # sqrt(2.67) = 1.63 in theory


# --- tests --------------------------------------------------------------------------------------------------------

def test_mcnemar_hand_case():
    # baseline right / setting wrong: 2 pairs; baseline wrong / setting right: 8 pairs; 5 concordant
    first = np.array([1, 1] + [0] * 8 + [1] * 5, dtype=bool)
    second = np.array([0, 0] + [1] * 8 + [1] * 5, dtype=bool)
    b, c, p = st.mcnemar_exact(first, second)
    assert (b, c) == (2, 8)
    # exact two-sided binomial: 2 * P(X <= 2 | n=10, 1/2) = 2 * 56 / 1024
    assert p == pytest.approx(112 / 1024)
    assert st.mcnemar_exact(first, first)[2] == 1.0


def test_paired_bootstrap_p_value():
    assert st.bootstrap_p(np.full(999, 0.1)) == pytest.approx(2 / 1000)
    assert st.bootstrap_p(np.linspace(-1, 1, 1001)) == pytest.approx(1.0)
    assert math.isnan(st.bootstrap_p(np.full(10, np.nan)))


# --- P(yes) metrics -----------------------------------------------------------------------------------------------

def _auroc_pairs(scores, positive) -> float:
    """Brute force: every (positive, negative) pair, a win counts 1, a tie 1/2."""
    pos = [s for s, y in zip(scores, positive, strict=True) if y]
    neg = [s for s, y in zip(scores, positive, strict=True) if not y]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auroc_against_pairwise_count_and_mann_whitney():
    rng = np.random.default_rng(3)
    for n in (2, 7, 60, 301):
        positive = rng.random(n) < 0.5
        positive[:2] = [True, False]
        scores = np.round(rng.random(n) + 0.3 * positive, 1)      # rounding makes many ties
        value = float(st.auroc(scores, positive, np.ones((1, n)))[0])
        assert value == pytest.approx(_auroc_pairs(scores, positive))
        u = mannwhitneyu(scores[positive], scores[~positive], alternative="two-sided").statistic
        assert value == pytest.approx(u / (positive.sum() * (~positive).sum()))
    assert st.auroc([0.1, 0.9], [False, True], np.ones((1, 2)))[0] == 1.0
    assert st.auroc([0.5, 0.5], [False, True], np.ones((1, 2)))[0] == 0.5
    assert math.isnan(st.auroc([0.2, 0.9], [True, True], np.ones((1, 2)))[0])   # no negative
    assert math.isnan(st.auroc([], [], np.ones((1, 0)))[0])


def test_weights_act_as_multiplicities():
    """A weighted resample gives the same P(yes) metrics as the data with rows repeated that many times."""
    rng = np.random.default_rng(5)
    n = 40
    p = np.round(rng.random(n), 2)
    y = rng.random(n) < p
    answer = rng.random(n) < 0.5
    weights = rng.integers(0, 4, size=(3, n)).astype(float)
    got = st.pyes_metrics(p, y, answer, weights)
    for r in range(3):
        rows = np.repeat(np.arange(n), weights[r].astype(int))
        want = st.pyes_metrics(p[rows], y[rows], answer[rows], np.ones((1, rows.size)))
        for metric in st.PYES_METRICS:
            assert got[metric][r] == pytest.approx(want[metric][0]), metric
        assert got["auroc"][r] == pytest.approx(_auroc_pairs(p[rows], y[rows]))


def test_brier_ece_and_disagreement_hand_computed():
    p = np.array([0.05, 0.15, 0.12, 0.55, 0.58, 0.95, 0.99, 0.42])
    y = np.array([0, 0, 1, 1, 0, 1, 1, 0], dtype=bool)
    answer = np.array([0, 0, 0, 1, 1, 1, 0, 1], dtype=bool)   # row 6 says no at 0.99, row 7 yes at 0.42
    m = {k: float(v[0]) for k, v in st.pyes_metrics(p, y, answer, np.ones((1, 8))).items()}
    assert m["brier"] == pytest.approx(np.mean((p - y) ** 2))
    # bins: [0, .1): {0.05, y 0}; [.1, .2): {0.15 y 0, 0.12 y 1}; [.4, .5): {0.42 y 0};
    # [.5, .6): {0.55 y 1, 0.58 y 0}; [.9, 1]: {0.95 y 1, 0.99 y 1}
    ece = (1 * abs(0 - 0.05) + 2 * abs(0.5 - 0.135) + 1 * abs(0 - 0.42) + 2 * abs(0.5 - 0.565)
           + 2 * abs(1 - 0.97)) / 8
    assert m["ece"] == pytest.approx(ece)
    assert m["disagreement"] == pytest.approx(2 / 8)
    assert st.ece_bins([0.0, 0.0999, 0.1, 0.55, 0.9, 1.0]).tolist() == [0, 0, 1, 5, 9, 9]
    perfect = st.pyes_metrics(np.array([0.0, 1.0]), np.array([False, True]), np.array([False, True]), np.ones((1, 2)))
    assert perfect["ece"][0] == 0 and perfect["brier"][0] == 0 and perfect["auroc"][0] == 1


def test_pyes_metrics_with_no_rows_are_nan():
    empty = st.pyes_metrics(np.zeros(0), np.zeros(0, bool), np.zeros(0, bool), np.ones((5, 0)))
    assert all(v.shape == (5,) and np.all(np.isnan(v)) for v in empty.values())


# --- decoding repeats ---------------------------------------------------------------------------------------------

def test_repeat_masks_mean_and_spread():
    masks = st.repeat_masks(np.array([1, 0, 1, 0, 2]), 5)
    assert [m.tolist() for m in masks] == [[False, True, False, True, False], [True, False, True, False, False],
                                           [False, False, False, False, True]]
    assert [m.tolist() for m in st.repeat_masks(None, 3)] == [[True, True, True]]     # no repeat column: one
    assert [m.size for m in st.repeat_masks(np.zeros(0), 0)] == [0]
    one = np.array([0.1 + 0.2, np.nan, 7.0])
    assert st.mean_over_repeats([one]) is not None and np.array_equal(st.mean_over_repeats([one]), one, equal_nan=True)
    mean = st.mean_over_repeats([[0.5, np.nan, np.nan], [0.7, 0.2, np.nan]])
    assert mean[0] == pytest.approx(0.6) and mean[1] == 0.2 and np.isnan(mean[2])     # NaN repeats left out
    spread = st.repeat_spread([0.5, 0.7, 0.9])
    assert spread == pytest.approx({"repeat_sd": 0.2, "repeat_min": 0.5, "repeat_max": 0.9})
    single = st.repeat_spread([0.4])
    assert math.isnan(single["repeat_sd"]) and single["repeat_min"] == single["repeat_max"] == 0.4
    assert all(math.isnan(v) for v in st.repeat_spread([np.nan]).values())
