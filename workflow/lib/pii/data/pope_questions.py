"""Stage data / POPE: build POPE's yes/no object questions from any COCO instances file, by POPE's method.

Per sampled image (at least ``min_objects`` annotated categories), ``n_per_label`` "yes" questions about objects
that are present and ``n_per_label`` "no" questions about absent objects, chosen by POPE's three strategies:

- random: uniformly among the absent categories;
- popular: the categories that occur in most sampled images, among the absent ones;
- adversarial: for each object asked about (then the image's other objects), the category that co-occurs with it
  in most sampled images, among the absent ones not chosen yet (ties by name; popular fills any shortfall).

Output is POPE's JSON Lines format, questions alternating yes/no per image, ids counting from 1. The three files
share the images and the "yes" questions, as POPE's official files do.
"""

import json
import random
from collections import Counter
from pathlib import Path

from pii.core.stage import PipelineError, log
from pii.core.tables import atomic_output

STRATEGIES = ("random", "popular", "adversarial")


def question_text(category: str) -> str:
    article = "an" if category[0] in "aeiou" else "a"
    return f"Is there {article} {category} in the image?"


def load_instances(path: str | Path) -> tuple[dict[int, str], dict[int, set[str]], list[str]]:
    """(file name by image id, category names by image id, all category names) from a COCO instances file."""
    try:
        with open(path, encoding="utf-8") as f:
            coco = json.load(f)
        names = {c["id"]: c["name"] for c in coco["categories"]}
        files = {img["id"]: img["file_name"] for img in coco["images"]}
        objects: dict[int, set[str]] = {image_id: set() for image_id in files}
        for i, ann in enumerate(coco["annotations"]):
            if ann["image_id"] not in objects:
                raise PipelineError(f"{path}: annotation #{i} (id {ann.get('id')}) refers to image "
                                    f"{ann['image_id']}, which is not in 'images'; use an unmodified COCO file")
            objects[ann["image_id"]].add(names[ann["category_id"]])
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise PipelineError(f"{path}: not a COCO instances file ({type(err).__name__}: {err})") from err
    return files, objects, sorted(names.values())


def cooccurrence(objects: dict[int, set[str]], image_ids: list[int]) -> tuple[Counter, dict[str, Counter]]:
    """Image-level frequency of each category and pairwise co-occurrence counts over ``image_ids``."""
    frequency: Counter = Counter()
    together: dict[str, Counter] = {}
    for image_id in image_ids:
        present = objects[image_id]
        frequency.update(present)
        for a in present:
            together.setdefault(a, Counter()).update(b for b in present if b != a)
    return frequency, together


def ranked(counts: Counter, candidates: set[str]) -> list[str]:
    """Candidates by decreasing count, ties by name (deterministic)."""
    return sorted(candidates, key=lambda c: (-counts.get(c, 0), c))


def negatives(strategy: str, asked: list[str], present: set[str], all_categories: list[str], n: int,
              frequency: Counter, together: dict[str, Counter], rng: random.Random) -> list[str]:
    absent = set(all_categories) - present
    if strategy == "random":
        return rng.sample(sorted(absent), min(n, len(absent)))
    if strategy == "popular":
        return ranked(frequency, absent)[:n]
    chosen: list[str] = []
    for obj in asked + sorted(present - set(asked)):
        if len(chosen) == n:
            break
        for candidate in ranked(together.get(obj, Counter()), absent - set(chosen)):
            if together.get(obj, Counter()).get(candidate, 0) > 0:
                chosen.append(candidate)
            break
    for candidate in ranked(frequency, absent - set(chosen)):
        if len(chosen) == n:
            break
        chosen.append(candidate)
    return chosen


def build_pope(instances_path: str | Path, n_images: int, n_per_label: int, min_objects: int,
               seed: int) -> dict[str, list[dict]]:
    files, objects, all_categories = load_instances(instances_path)
    need = max(min_objects, n_per_label)
    eligible = sorted(i for i, present in objects.items() if len(present) >= need)
    if len(eligible) < n_images:
        raise PipelineError(f"{instances_path}: only {len(eligible)} images have >= {need} object categories, "
                            f"data.pope_build.n_images asks for {n_images}; lower it")
    rng = random.Random(seed)
    image_ids = sorted(rng.sample(eligible, n_images))
    frequency, together = cooccurrence(objects, image_ids)
    rows: dict[str, list[dict]] = {s: [] for s in STRATEGIES}
    for image_id in image_ids:
        present = objects[image_id]
        asked = rng.sample(sorted(present), n_per_label)
        negative_rng = random.Random(f"{seed}-{image_id}")  # random negatives independent of the other strategies
        for strategy in STRATEGIES:
            negs = negatives(strategy, asked, present, all_categories, n_per_label, frequency, together,
                             negative_rng)
            if len(negs) < n_per_label:
                raise PipelineError(f"{instances_path}: image {files[image_id]} leaves only {len(negs)} absent "
                                    f"categories for {n_per_label} '{strategy}' negatives; lower n_per_label")
            for yes, no in zip(asked, negs, strict=True):
                for category, label in ((yes, "yes"), (no, "no")):
                    rows[strategy].append({"question_id": len(rows[strategy]) + 1, "image": files[image_id],
                                           "text": question_text(category), "label": label})
    return rows


def write_jsonl(rows: list[dict], path: str | Path) -> None:
    with atomic_output(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def write_pope_files(instances_path: str | Path, outputs: dict[str, str], n_images: int, n_per_label: int,
                     min_objects: int, seed: int) -> None:
    """Build the questions and write one JSON-lines file per strategy (``outputs``: strategy -> path)."""
    rows = build_pope(instances_path, n_images, n_per_label, min_objects, seed)
    for strategy in STRATEGIES:
        write_jsonl(rows[strategy], outputs[strategy])
        log.info("POPE %s: %d questions on %d images -> %s", strategy, len(rows[strategy]), n_images,
                 outputs[strategy])
