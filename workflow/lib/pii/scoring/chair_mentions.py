"""CHAIR (Rohrbach et al. 2018, "Object Hallucination in Image Captioning"), reimplemented offline.

Behaviour follows the original ``utils/chair.py`` of github.com/LisaAnne/Hallucination:

* a caption is lower-cased, tokenized and every token singularized;
* consecutive token pairs listed as COCO double words are merged ("hot dog", "teddy bear"), qualifier pairs are
  reduced to their noun ("baby elephant" -> "elephant", "passenger train" -> "train") and a few pairs are
  rewritten ("toilet seat" -> "toilet"); merging runs left to right and never overlaps;
* when "toilet" occurs anywhere in the caption, every "seat" is dropped;
* the remaining tokens found in the synonym table are the caption's object mentions, each mapped to its COCO
  category (the "node word");
* ground truth per image = categories of its instance annotations + objects mentioned in its reference captions.

Repeated mentions: like the original, every mention counts. "A dog next to another dog" has two mentions of
``dog``; if the image has no dog both are hallucinated, so CHAIRi counts 2 of 2. CHAIRs counts the caption once.

Differences that cannot be avoided offline: nltk's Treebank tokenizer and pattern's ``singularize`` are replaced
by a regex tokenizer and lemminflect's noun lemmatizer (both ship their data in the wheel). Both read English
plurals the same way on COCO-style captions; rare words may be singularized differently.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import yaml
from lemminflect import getLemma

from pii import WORKFLOW_DIR

SYNONYMS_FILE = WORKFLOW_DIR / "data" / "chair_synonyms.yaml"

# Words (with inner hyphens), clitics split off like the Treebank tokenizer does ("dog's" -> "dog", "'s"),
# anything else one character at a time.
_TOKEN = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*|'[a-z]+|[^\sa-z0-9]")
_WORD = re.compile(r"[a-z0-9]")


class ChairError(ValueError):
    """Bad CHAIR input (vocabulary or annotations); the message names the file and the key."""


@lru_cache(maxsize=200_000)
def singularize(token: str) -> str:
    """The singular of an English noun, or the token itself when it is not a plain word."""
    if not token.isalpha():
        return token
    lemmas = getLemma(token, upos="NOUN")
    return lemmas[0] if lemmas else token


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def count_words(text: str) -> int:
    """Caption length in words: tokens holding a letter or digit (punctuation does not count)."""
    return sum(1 for t in tokenize(text) if _WORD.search(t))


@dataclass
class Vocabulary:
    """The synonym table and rewrite rules of ``chair_synonyms.yaml``."""

    to_category: dict[str, str]
    pairs: dict[str, str]
    drop_when_present: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Words of the table are kept as they are: they are already singular (or a plural that the table lists
        # itself, "children", "skis"), and a lemmatizer guessing at a rare singular ("corgi") must not break them.
        self.known = set(self.to_category) | {w for pair in self.pairs for w in pair.split()}

    @property
    def categories(self) -> list[str]:
        return sorted(set(self.to_category.values()))

    @classmethod
    def load(cls, path: str | Path = SYNONYMS_FILE) -> Vocabulary:
        path = Path(path)
        try:
            with open(path, encoding="utf-8") as f:
                data = yaml.safe_load(f)
        except OSError as err:
            raise ChairError(f"{path}: cannot read the CHAIR synonym table ({err})") from err
        to_category: dict[str, str] = {}
        for category, synonyms in (data.get("categories") or {}).items():
            for word in [category, *(synonyms or [])]:
                word = str(word).strip().lower()
                if to_category.get(word, category) != category:
                    raise ChairError(
                        f"{path}: '{word}' is listed under both '{to_category[word]}' and '{category}'; keep one"
                    )
                to_category[word] = category
        if not to_category:
            raise ChairError(f"{path}: no 'categories' found; see the file's header for the format")
        pairs = {w: w for w in data.get("double_words") or []}
        for qualifier, nouns in (data.get("qualifiers") or {}).items():
            for noun in nouns:
                pairs[f"{qualifier} {noun}"] = noun
        pairs.update(data.get("rewrites") or {})
        for key in pairs:
            if len(key.split()) != 2:
                raise ChairError(f"{path}: '{key}' is not a two-word entry; double words are pairs of tokens")
        return cls(to_category, pairs, dict(data.get("drop_when_present") or {}))

    def caption_objects(self, caption: str) -> tuple[list[str], list[str]]:
        """(mentioned words, their categories), in caption order, repeats kept."""
        words = [t if t in self.known else singularize(t) for t in tokenize(caption)]
        merged: list[str] = []
        i = 0
        while i < len(words):
            pair = f"{words[i]} {words[i + 1]}" if i + 1 < len(words) else None
            if pair in self.pairs:
                merged.append(self.pairs[pair])
                i += 2
            else:
                merged.append(words[i])
                i += 1
        present = set(merged)
        for trigger, dropped in self.drop_when_present.items():
            if trigger in present:
                merged = [w for w in merged if w not in dropped]
        mentioned = [w for w in merged if w in self.to_category]
        return mentioned, [self.to_category[w] for w in mentioned]


@dataclass
class CaptionScore:
    mentioned_words: list[str]
    mentioned_objects: list[str]
    hallucinated_words: list[str]
    hallucinated_objects: list[str]
    gt_objects: list[str]
    n_words: int

    @property
    def n_mentions(self) -> int:
        return len(self.mentioned_objects)

    @property
    def n_hallucinated(self) -> int:
        return len(self.hallucinated_objects)

    @property
    def n_gt_mentioned(self) -> int:
        return len(set(self.mentioned_objects) & set(self.gt_objects))


def score_caption(vocab: Vocabulary, caption: str, gt_objects: set[str]) -> CaptionScore:
    words, objects = vocab.caption_objects(caption)
    halluc = [(w, o) for w, o in zip(words, objects, strict=True) if o not in gt_objects]
    return CaptionScore(
        mentioned_words=words,
        mentioned_objects=objects,
        hallucinated_words=[w for w, _ in halluc],
        hallucinated_objects=[o for _, o in halluc],
        gt_objects=sorted(gt_objects),
        n_words=count_words(caption),
    )


def ground_truth(vocab: Vocabulary, instances: dict, captions: dict, image_ids,
                 instances_name: str = "instances file", captions_name: str = "captions file") -> dict[int, set[str]]:
    """Objects per image: instance categories (mapped through the table) + objects named by reference captions.

    Raises ChairError when an image is in neither file or a category is missing from the synonym table."""
    wanted = {int(i) for i in image_ids}
    known = {int(im["id"]) for im in instances.get("images", [])} | {int(im["id"]) for im in captions.get("images", [])}
    missing = sorted(wanted - known)
    if missing:
        raise ChairError(
            f"{instances_name} / {captions_name}: image id(s) {missing[:5]} not annotated; "
            "CHAIR needs the COCO annotations of the split the captions were generated on"
        )
    names = {int(c["id"]): c["name"] for c in instances.get("categories", [])}
    unknown = sorted({n for n in names.values() if n.lower() not in vocab.to_category})
    if unknown:
        raise ChairError(f"{instances_name}: categories {unknown} are not in the CHAIR synonym table; add them")
    gt: dict[int, set[str]] = {i: set() for i in wanted}
    for ann in instances.get("annotations", []):
        image_id = int(ann["image_id"])
        if image_id in gt:
            gt[image_id].add(vocab.to_category[names[int(ann["category_id"])].lower()])
    for ann in captions.get("annotations", []):
        image_id = int(ann["image_id"])
        if image_id in gt:
            gt[image_id].update(vocab.caption_objects(ann["caption"])[1])
    return gt


def load_json(path: str | Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise ChairError(f"{path}: cannot read COCO annotations ({err}); re-download or rebuild the file") from err
