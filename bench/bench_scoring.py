"""Scoring time for the paper's full matrix on one core, synthetic data:
15,000 POPE rows (3 models x 5 settings x 1,000 questions sampled from 500 images x 6 questions, so ~456 images
with 1-6 questions each) and 1,500 captions (3 settings x 500 images), with the config's 2,000 bootstrap
resamples, clustered by image; P(yes) metrics included. Prints the figures and whether the total stays within
the 10 s budget; asserts nothing. ``--repeats N``: every request decoded N times (inference.repeats), N times the
rows; the budget is for N = 1.

Run: OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python bench/bench_scoring.py [--repeats 1]
"""

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "workflow" / "lib"))

import numpy as np
import polars as pl

from pii.scoring import chair, chair_mentions
from pii.scoring import pope as scoring_pope

MODELS = ["qwen2_5_vl", "llava_1_5", "instructblip"]
SETTINGS = ["baseline", "control", "hybrid", "prompt_in_image", "prompt_in_image_instructed"]
ANSWERS = ["Yes, there is a {o} in the image.", "No, there is no {o}.", "Yes.", "No.", "I am not sure.",
           "There is a {o} on the left."]
WORDS = ["a", "man", "dog", "sitting", "on", "the", "bench", "with", "two", "cats", "near", "hot", "dogs", "table",
         "while", "people", "walk", "by", "cars", "and", "a", "toilet", "seat", "baby", "elephant", "grass", "tree"]
RESAMPLES = 2000
BUDGET_S = 10.0


def pope_rows(rng, repeats=None):
    """``repeats`` None: one run without a repeat column (as before repeats existed); N: N repeats, numbered."""
    n = 1000
    question = np.sort(rng.choice(3000, n, replace=False))   # the paper: 1,000 of POPE's 500 images x 6 questions
    image_id = question // 6
    label_yes = question % 2 == 0
    frames = []
    for m in MODELS:
        for s in SETTINGS:
            for r in range(repeats or 1):
                picks = rng.integers(0, len(ANSWERS), n)
                p_yes = 1 / (1 + np.exp(-(1.5 * (2 * label_yes - 1) + rng.normal(0, 1.5, n))))
                frame = pl.DataFrame({
                    "sample_id": [f"pope-{q}" for q in question], "task": "pope", "model": m, "setting": s,
                    "image_id": image_id, "question": "Is there a dog in the image?",
                    "label": np.where(label_yes, "yes", "no"),
                    "response": [ANSWERS[k].format(o="dog") for k in picks], "p_yes": p_yes})
                frames.append(frame if repeats is None else frame.with_columns(repeat=pl.lit(r, dtype=pl.Int64)))
    return pl.concat(frames)


def caption_rows(rng, repeats=None):
    n = 500
    frames = []
    for s in ["baseline", "hybrid", "prompt_in_image"]:
        for r in range(repeats or 1):
            caps = [" ".join(rng.choice(WORDS, rng.integers(40, 120))) + "." for _ in range(n)]
            frame = pl.DataFrame({"sample_id": [f"caption-{i}" for i in range(n)], "task": "caption",
                                  "model": "qwen2_5_vl", "setting": s, "image_id": np.arange(n), "response": caps})
            frames.append(frame if repeats is None else frame.with_columns(repeat=pl.lit(r, dtype=pl.Int64)))
    return pl.concat(frames)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=None, help="decoding repeats (default: one, no repeat column)")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    pope = pope_rows(rng, args.repeats)
    t0 = time.perf_counter()
    answers = scoring_pope.parse_answers(pope)
    t1 = time.perf_counter()
    metrics, _ = scoring_pope.score_pope(pope, 0, RESAMPLES, 0.95)
    t2 = time.perf_counter()
    print(f"POPE: {len(pope):,} rows, {len(metrics)} groups, {metrics['n_images'][0]} images per group, "
          f"{RESAMPLES} resamples (clustered by image), P(yes) metrics included, "
          f"{int(metrics['n_repeats'][0])} decoding repeat(s)")
    print(f"  parse both answer rules : {t1 - t0:6.2f} s")
    print(f"  full score_pope         : {t2 - t1:6.2f} s  (parsing + metrics + intervals + paired tests)")
    print(f"  strict unknown share    : {(answers['answer_strict'] == 'unknown').mean():.3f}")

    caps = caption_rows(rng, args.repeats)
    vocab = chair_mentions.Vocabulary.load()
    gt = {i: {"person", "dog", "bench", "dining table"} for i in range(500)}
    # reference captions: 5 per image, parsed like the real ground truth
    refs = [" ".join(rng.choice(WORDS, 12)) for _ in range(2500)]
    t3 = time.perf_counter()
    for text in refs:
        vocab.caption_objects(text)
    t4 = time.perf_counter()
    detail = chair.score_captions(caps, vocab, gt)
    t5 = time.perf_counter()
    cm = chair.chair_metrics(detail, 0, RESAMPLES, 0.95)
    t6 = time.perf_counter()
    print(f"CHAIR: {len(caps):,} captions ({detail['n_words'].mean():.0f} words on average), {len(cm)} groups")
    print(f"  2,500 reference captions: {t4 - t3:6.2f} s")
    print(f"  parse generated captions: {t5 - t4:6.2f} s")
    print(f"  metrics + intervals     : {t6 - t5:6.2f} s")
    total = (t2 - t0) + (t6 - t3)
    print(f"total                     : {total:6.2f} s  ({'within' if total < BUDGET_S else 'OVER'} the "
          f"{BUDGET_S:.0f} s budget)")


if __name__ == "__main__":
    main()
