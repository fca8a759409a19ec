"""CHAIR: vocabulary, caption parsing, ground truth and the metric's counting rules."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import yaml
from conftest import row

from pii.scoring import chair, chair_mentions

COCO_80 = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
]


@pytest.fixture(scope="module")
def vocab() -> chair_mentions.Vocabulary:
    return chair_mentions.Vocabulary.load()


def objects(vocab, caption):
    return vocab.caption_objects(caption)[1]


def test_table_covers_the_80_categories_and_each_word_has_one_category(vocab):
    assert vocab.categories == sorted(COCO_80)
    raw = yaml.safe_load(open(chair_mentions.SYNONYMS_FILE))["categories"]
    seen: dict[str, str] = {}
    for category, synonyms in raw.items():
        for word in [category, *synonyms]:
            assert seen.setdefault(word, category) == category, f"{word} under {seen[word]} and {category}"
    # every one- and two-word entry is reachable from a caption and lands on its own category
    # (two-word synonyms only through the double-word list, as in the original)
    for word, category in vocab.to_category.items():
        if len(word.split()) == 1 or word in vocab.pairs:
            assert objects(vocab, f"a {word} here") == [category], word


def test_duplicate_synonym_is_rejected(tmp_path):
    bad = tmp_path / "syn.yaml"
    bad.write_text("categories:\n  dog: [pup]\n  cat: [pup]\n")
    with pytest.raises(chair_mentions.ChairError, match="pup"):
        chair_mentions.Vocabulary.load(bad)


@pytest.mark.parametrize("caption, expected", [
    ("A puppy sleeps.", ["dog"]),
    ("A man on a motorbike.", ["person", "motorcycle"]),
    ("Three dogs and two cats", ["dog", "cat"]),                 # plurals
    ("Knives, mice and children", ["knife", "mouse", "person"]),  # irregular plurals
    ("He eats a hot dog", ["hot dog"]),                          # double word, not a dog
    ("Two hot dogs", ["hot dog"]),
    ("A teddy bear on the bed", ["teddy bear", "bed"]),
    ("A baby elephant", ["elephant"]),                           # not a person
    ("An adult giraffe and a baby", ["giraffe", "person"]),
    ("A passenger train", ["train"]),
    ("The toilet seat is up", ["toilet"]),
    ("A toilet and a seat", ["toilet"]),                         # seat dropped when toilet present
    ("A seat in the park", ["chair"]),
    ("Wine glasses on the dining table", ["wine glass", "dining table"]),
    ("A man wearing a bow tie", ["person", "tie"]),
    ("Traffic lights at the crossing", ["traffic light"]),
    ("The dog's bowl", ["dog", "bowl"]),                          # clitic split off
    ("A corgi", ["dog"]),                                        # table words are never re-lemmatized
    ("A sunny beach with sand", []),
])
def test_caption_objects(vocab, caption, expected):
    assert objects(vocab, caption) == expected


def test_repeated_mentions_all_count(vocab):
    cs = chair_mentions.score_caption(vocab, "A dog. Another dog and a cat.", {"cat"})
    assert cs.mentioned_objects == ["dog", "dog", "cat"]
    assert cs.hallucinated_objects == ["dog", "dog"]
    assert (cs.n_mentions, cs.n_hallucinated, cs.n_gt_mentioned, cs.n_words) == (3, 2, 1, 7)


def _coco():
    instances = {
        "images": [{"id": 1}, {"id": 2}],
        "categories": [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}, {"id": 62, "name": "chair"}],
        "annotations": [{"image_id": 1, "category_id": 18}, {"image_id": 2, "category_id": 1}],
    }
    captions = {
        "images": [{"id": 1}, {"id": 2}],
        "annotations": [{"image_id": 1, "caption": "A puppy next to a wooden bench."},
                        {"image_id": 2, "caption": "A woman sitting on a chair."}],
    }
    return instances, captions


def test_ground_truth_joins_instances_and_reference_captions(vocab):
    instances, captions = _coco()
    gt = chair_mentions.ground_truth(vocab, instances, captions, [1, 2])
    # bench appears only in a reference caption and still counts as present
    assert gt == {1: {"dog", "bench"}, 2: {"person", "chair"}}
    with pytest.raises(chair_mentions.ChairError, match=r"\[3\]"):
        chair_mentions.ground_truth(vocab, instances, captions, [3])
    instances["categories"].append({"id": 99, "name": "spaceship"})
    with pytest.raises(chair_mentions.ChairError, match="spaceship"):
        chair_mentions.ground_truth(vocab, instances, captions, [1])


def test_chair_metrics_hand_computed(vocab):
    instances, captions = _coco()
    gt = chair_mentions.ground_truth(vocab, instances, captions, [1, 2])
    df = pl.DataFrame({
        "sample_id": ["c1", "c2", "c1", "c2"], "task": "caption", "model": "m",
        "setting": ["baseline", "baseline", "pii", "pii"], "image_id": [1, 2, 1, 2],
        "response": ["A dog on a bench with a cat and a cat.",   # 4 mentions, 2 hallucinated (cat x2)
                     "A person on a chair.",                     # 2 mentions, 0 hallucinated
                     "A dog.", "A man, a chair and a toaster."],  # 1 + 3 mentions, 1 hallucinated
    })
    captions_df = chair.score_captions(df, vocab, gt)
    m = chair.chair_metrics(captions_df, seed=0, resamples=200, confidence=0.95)
    base, pii = row(m, setting="baseline"), row(m, setting="pii")
    assert base["chair_s"] == pytest.approx(1 / 2)
    assert base["chair_i"] == pytest.approx(2 / 6)
    assert base["recall"] == pytest.approx(4 / 4)
    assert pii["chair_i"] == pytest.approx(1 / 4)
    assert pii["recall"] == pytest.approx(3 / 4)
    assert pii["chair_i_delta"] == pytest.approx(1 / 4 - 2 / 6)
    assert pii["n_paired"] == 2
    assert base["mean_length"] == pytest.approx((11 + 5) / 2)
    assert np.isnan(base["chair_s_p_value"])
    assert 0 < pii["chair_s_p_value"] <= 1


def test_caption_without_objects_and_empty_group(vocab):
    df = pl.DataFrame({"sample_id": ["c1"], "task": "caption", "model": "m", "setting": ["baseline"],
                       "image_id": [1], "response": [""]})
    caps = chair.score_captions(df, vocab, {1: {"dog"}})
    m = chair.chair_metrics(caps, 0, 100, 0.95, groups=[("caption", "m", "baseline"), ("caption", "m", "x")])
    assert m["chair_s"][0] == 0 and np.isnan(m["chair_i"][0])   # no mention: CHAIRi undefined
    assert m["n"][1] == 0 and np.isnan(m["chair_s"][1])          # no caption at all: NaN, no crash


@pytest.mark.parametrize("caption, kept", [
    ("A man rides a horse. There is a dog and", "A man rides a horse."),
    ("The pole is 3.5 m tall. Beside it", "The pole is 3.5 m tall."),  # a decimal point ends no sentence
    ("Look! A cat? And a", "Look! A cat?"),
    ("A dog running across the", ""),  # no sentence was finished
    ("A dog.", "A dog."),
])
def test_drop_incomplete_sentence(caption, kept):
    assert chair.drop_incomplete_sentence(caption) == kept


def test_only_cut_captions_lose_their_last_sentence(vocab):
    """A caption that stopped by itself keeps its words even without a final full stop; a cut one loses the
    unfinished sentence, and its counts with it."""
    df = pl.DataFrame({"sample_id": ["a", "b"], "task": "caption", "model": "m", "setting": "s", "image_id": [1, 1],
                       "response": ["A cat. A dog on a", "A cat. A dog on a"], "finish_reason": ["length", "stop"]})
    caps = chair.score_captions(df, vocab, {1: {"cat"}}, drop_incomplete=True)
    assert caps["response_complete"].to_list() == ["A cat.", "A cat. A dog on a"]
    assert caps["n_hallucinated"].to_list() == [1, 1] and caps["n_hallucinated_complete"].to_list() == [0, 1]
    assert caps["n_mentions_complete"].to_list() == [1, 2]
    metrics = chair.chair_metrics(caps, seed=0, resamples=200, confidence=0.95)
    assert metrics["chair_s"][0] == 1.0 and metrics["chair_s_complete"][0] == 0.5
    assert metrics["chair_i_complete"][0] == pytest.approx(1 / 3)
    plain = chair.score_captions(df, vocab, {1: {"cat"}})
    assert "response_complete" not in plain.columns
    assert "chair_s_complete" not in chair.chair_metrics(plain, 0, 200, 0.95).columns
