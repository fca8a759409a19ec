"""The transcribe task's scoring (transcription.py) and the per-visibility scoring (score_visibility.py)."""

from __future__ import annotations

import math

import polars as pl
import pytest

from pii.scoring import transcription as tr
from pii.scoring import visibility


@pytest.mark.parametrize("a, b, distance", [
    ("kitten", "sitting", 3), ("flaw", "lawn", 2), ("", "abc", 3), ("abc", "", 3), ("same", "same", 0),
    ("intention", "execution", 5),
])
def test_edit_distance_is_levenshtein(a, b, distance):
    assert tr.edit_distance(a, b) == distance == tr.edit_distance(b, a)


def test_normalisation_ignores_case_punctuation_and_spacing_only():
    text = "Is there a dog in the image?"
    assert tr.normalise("  is THERE a dog,   in the image ") == "is there a dog in the image"
    assert tr.exact_match("IS THERE A DOG IN THE IMAGE.", text)
    assert tr.exact_match("“Is there a dog in the image?”", text)  # typographic quotes are punctuation too
    assert not tr.exact_match("Is there a cat in the image?", text)
    assert not tr.exact_match("Is there a dog in the image? Yes.", text)


def test_cer_against_the_rendered_text():
    ref = "Is there a dog in the image?"  # 27 characters once normalised
    assert tr.cer(ref, ref) == 0.0
    assert tr.cer("", ref) == 1.0
    assert tr.cer("is there a cat in the image", ref) == pytest.approx(3 / 27)
    assert tr.cer("x" * 54, ref) > 1.0  # not capped: a long wrong reply scores above 1


@pytest.mark.parametrize("fraction, group", [(1.0, "whole"), (0.4999, "part"), (0.0, "none"), (None, "unknown"),
                                             (math.nan, "unknown")])
def test_visibility_groups(fraction, group):
    assert tr.visibility_group(fraction) == group


@pytest.mark.parametrize("strip, photo, legible, group", [
    (1.0, 1.0, True, "whole"), (1.0, 1.0, None, "whole"), (1.0, None, None, "whole"),
    (1.0, 1.0, False, "illegible"),  # all of it seen, the text too small
    (0.5, 1.0, True, "part"), (0.5, 1.0, False, "part"),
    (0.33, 0.0, True, "photo cut"),  # LLaVA's centre crop of a tall canvas: only strip left
    (0.49, 0.97, True, "photo cut"), (1.0, 0.9, True, "photo cut"),
    (0.0, 0.75, True, "none"), (0.0, 1.0, False, "none"), (None, 1.0, None, "unknown")])
def test_visibility_groups_with_photo_and_legibility(strip, photo, legible, group):
    assert tr.visibility_group(strip, photo, legible) == group
    assert group in tr.VISIBILITY_GROUPS


def test_groups_are_read_from_the_inference_columns():
    rows = pl.DataFrame({"strip_visible_fraction": [1.0, 1.0, 0.3, None], "photo_visible_fraction": [1.0, 1.0, 0.0, 1.0],
                         "text_legible": [True, False, True, None]})
    assert tr.seen_groups(rows) == ["whole", "illegible", "photo cut", "unknown"]
    assert tr.seen_groups(rows.select("strip_visible_fraction")) == ["whole", "whole", "part", "unknown"]


def _rows(model: str, replies: list[str], fractions: list[float | None]) -> pl.DataFrame:
    n = len(replies)
    return pl.DataFrame({"model": [model] * n, "setting": ["transcribe"] * n, "repeat": [0] * n,
                         "image_id": list(range(n)), "sample_id": [f"s{i}" for i in range(n)],
                         "response": replies, "text": ["Is there a dog in the image?"] * n,
                         "strip_visible_fraction": fractions}, schema_overrides={"strip_visible_fraction": pl.Float64})


def test_metrics_per_model_and_visibility_group():
    good, bad = "Is there a dog in the image?", "Is there a cat?"
    rows = pl.concat([_rows("a", [good] * 6 + [bad] * 2, [1.0] * 6 + [0.0] * 2),
                      _rows("b", [bad] * 4, [None] * 4)])
    table = tr.metrics(tr.score_rows(rows), seed=0, resamples=200, confidence=0.95)
    a = {r["visibility"]: r for r in table.filter(pl.col("model") == "a").iter_rows(named=True)}
    assert set(a) == {"all", "whole", "none"}
    assert a["all"]["n"] == 8 and a["all"]["exact_match"] == pytest.approx(6 / 8)
    assert a["whole"]["exact_match"] == 1.0 and a["none"]["exact_match"] == 0.0
    assert a["all"]["exact_match_ci_low"] <= 0.75 <= a["all"]["exact_match_ci_high"]
    assert a["all"]["exact_match_ci_low"] < a["all"]["exact_match_ci_high"]
    b = table.filter(pl.col("model") == "b")
    assert b["visibility"].to_list() == ["all", "unknown"] and b["exact_match"][0] == 0.0
    assert b["cer"][0] == pytest.approx(tr.cer(bad, good))
    md = tr.markdown(table, 0.95)
    assert "| a | transcribe | whole | 6 | 100.0 [100.0, 100.0] |" in md


def test_visibility_metrics_split_pope_and_chair_by_what_the_model_saw():
    answers = pl.DataFrame({"task": ["pope"] * 4, "model": ["m"] * 4, "setting": ["hybrid"] * 4, "repeat": [0] * 4,
                            "sample_id": ["a", "b", "c", "d"], "image_id": [1, 2, 3, 4],
                            "correct_official": [True, True, False, False], "answer_yes": [True, False, True, True]})
    seen = pl.DataFrame({"task": ["pope"] * 4, "model": ["m"] * 4, "setting": ["hybrid"] * 4, "repeat": [0] * 4,
                         "sample_id": ["a", "b", "c", "d"], "strip_visible_fraction": [1.0, 1.0, 0.0, 0.5]})
    rows = visibility.with_groups(answers, seen)
    out = {r["visibility"]: r for r in visibility.group_metrics(
        rows, "pope", visibility.METRICS["pope"], seed=0, resamples=100, confidence=0.95)}
    assert list(out) == ["all", "whole", "part", "none"]
    seen = seen.with_columns(photo_visible_fraction=pl.Series([1.0, 1.0, 0.8, 0.0]),
                             text_legible=pl.Series([True, False, True, True]))
    groups = visibility.with_groups(answers, seen)["visibility"].to_list()
    assert groups == ["whole", "illegible", "none", "photo cut"]
    assert out["all"]["accuracy"] == 0.5 and out["whole"]["accuracy"] == 1.0 and out["none"]["accuracy"] == 0.0
    assert out["whole"]["share"] == 0.5 and out["part"]["n"] == 1
    assert out["all"]["yes_ratio"] == 0.75
    captions = pl.DataFrame({"task": ["caption"] * 2, "model": ["m"] * 2, "setting": ["hybrid"] * 2,
                             "repeat": [0] * 2, "sample_id": ["x", "y"], "image_id": [1, 2],
                             "hallucinated": [True, False], "n_hallucinated": [1, 0], "n_mentions": [4, 0]})
    rows = visibility.with_groups(captions, seen.head(0))
    (only,) = [r for r in visibility.group_metrics(rows, "caption", visibility.METRICS["caption"], 0, 50,
                                                         0.95) if r["visibility"] == "unknown"]
    assert only["chair_s"] == 0.5 and only["chair_i"] == 0.25  # CHAIRi: a ratio of sums, not a mean of ratios
