"""Stage data / demo: a synthetic mini-COCO with drawn objects, in the official COCO 2017 file formats.

Images are JPEGs named like COCO val2017 (``val2017/000000xxxxxx.jpg``) with simple, recognisable drawings of
COCO categories grouped by scene (street, park, kitchen, living room, beach), so that co-occurrence statistics
(POPE's adversarial negatives) have structure. ``annotations/instances_val2017.json`` carries real bbox, area and
polygon segmentation fields and all 80 official categories; ``annotations/captions_val2017.json`` carries five
reference captions per image that name the drawn objects with synonyms and plurals ("two dogs", "a man",
"a motorbike"), as CHAIR's caption-derived ground truth expects. Everything is drawn from ``seed``: the same
config gives byte-identical files.
"""


import io
import json
import math
import random
from pathlib import Path

from PIL import Image, ImageDraw

from pii.core.stage import PipelineError, log
from pii.core.tables import atomic_output

# The 80 official COCO categories: (id, name, supercategory), ids as in instances_*2017.json (gaps included).
COCO_CATEGORIES = [
    (1, "person", "person"), (2, "bicycle", "vehicle"), (3, "car", "vehicle"), (4, "motorcycle", "vehicle"),
    (5, "airplane", "vehicle"), (6, "bus", "vehicle"), (7, "train", "vehicle"), (8, "truck", "vehicle"),
    (9, "boat", "vehicle"), (10, "traffic light", "outdoor"), (11, "fire hydrant", "outdoor"),
    (13, "stop sign", "outdoor"), (14, "parking meter", "outdoor"), (15, "bench", "outdoor"),
    (16, "bird", "animal"), (17, "cat", "animal"), (18, "dog", "animal"), (19, "horse", "animal"),
    (20, "sheep", "animal"), (21, "cow", "animal"), (22, "elephant", "animal"), (23, "bear", "animal"),
    (24, "zebra", "animal"), (25, "giraffe", "animal"), (27, "backpack", "accessory"),
    (28, "umbrella", "accessory"), (31, "handbag", "accessory"), (32, "tie", "accessory"),
    (33, "suitcase", "accessory"), (34, "frisbee", "sports"), (35, "skis", "sports"), (36, "snowboard", "sports"),
    (37, "sports ball", "sports"), (38, "kite", "sports"), (39, "baseball bat", "sports"),
    (40, "baseball glove", "sports"), (41, "skateboard", "sports"), (42, "surfboard", "sports"),
    (43, "tennis racket", "sports"), (44, "bottle", "kitchen"), (46, "wine glass", "kitchen"), (47, "cup", "kitchen"),
    (48, "fork", "kitchen"), (49, "knife", "kitchen"), (50, "spoon", "kitchen"), (51, "bowl", "kitchen"),
    (52, "banana", "food"), (53, "apple", "food"), (54, "sandwich", "food"), (55, "orange", "food"),
    (56, "broccoli", "food"), (57, "carrot", "food"), (58, "hot dog", "food"), (59, "pizza", "food"),
    (60, "donut", "food"), (61, "cake", "food"), (62, "chair", "furniture"), (63, "couch", "furniture"),
    (64, "potted plant", "furniture"), (65, "bed", "furniture"), (67, "dining table", "furniture"),
    (70, "toilet", "furniture"), (72, "tv", "electronic"), (73, "laptop", "electronic"), (74, "mouse", "electronic"),
    (75, "remote", "electronic"), (76, "keyboard", "electronic"), (77, "cell phone", "electronic"),
    (78, "microwave", "appliance"), (79, "oven", "appliance"), (80, "toaster", "appliance"), (81, "sink", "appliance"),
    (82, "refrigerator", "appliance"), (84, "book", "indoor"), (85, "clock", "indoor"), (86, "vase", "indoor"),
    (87, "scissors", "indoor"), (88, "teddy bear", "indoor"), (89, "hair drier", "indoor"),
    (90, "toothbrush", "indoor"),
]
CATEGORY_ID = {name: cid for cid, name, _ in COCO_CATEGORIES}

# How captions name each drawn category: (singular, plural) pairs, the first is the plain COCO word.
NOUNS = {
    "person": [("man", "men"), ("woman", "women"), ("person", "people"), ("boy", "boys"), ("child", "children")],
    "bicycle": [("bicycle", "bicycles"), ("bike", "bikes")],
    "car": [("car", "cars"), ("sedan", "sedans"), ("taxi", "taxis")],
    "motorcycle": [("motorcycle", "motorcycles"), ("motorbike", "motorbikes"), ("scooter", "scooters")],
    "airplane": [("airplane", "airplanes"), ("plane", "planes"), ("jet", "jets")],
    "bus": [("bus", "buses")],
    "boat": [("boat", "boats"), ("sailboat", "sailboats"), ("ship", "ships")],
    "traffic light": [("traffic light", "traffic lights"), ("stoplight", "stoplights")],
    "stop sign": [("stop sign", "stop signs")],
    "bird": [("bird", "birds"), ("pigeon", "pigeons")],
    "cat": [("cat", "cats"), ("kitten", "kittens")],
    "dog": [("dog", "dogs"), ("puppy", "puppies")],
    "horse": [("horse", "horses"), ("pony", "ponies")],
    "umbrella": [("umbrella", "umbrellas")],
    "sports ball": [("ball", "balls"), ("soccer ball", "soccer balls")],
    "kite": [("kite", "kites")],
    "bottle": [("bottle", "bottles")],
    "cup": [("cup", "cups"), ("mug", "mugs")],
    "banana": [("banana", "bananas")],
    "apple": [("apple", "apples")],
    "orange": [("orange", "oranges")],
    "pizza": [("pizza", "pizzas")],
    "chair": [("chair", "chairs")],
    "tv": [("television", "televisions"), ("tv", "tvs")],
    "laptop": [("laptop", "laptops")],
    "clock": [("clock", "clocks")],
}

# Scenes: (name, background top, background bottom, categories drawn there, places named in captions).
SCENES = [
    ("street", (150, 190, 230), (110, 110, 115), ["person", "car", "bus", "bicycle", "motorcycle", "traffic light",
                                                  "stop sign", "dog"], ["on a city street", "at an intersection"]),
    ("park", (140, 200, 240), (90, 170, 80), ["person", "dog", "sports ball", "kite", "bird", "horse", "bicycle"],
     ["in a park", "on a grassy field"]),
    ("kitchen", (235, 225, 205), (170, 130, 90), ["cup", "bottle", "banana", "apple", "orange", "pizza", "person"],
     ["on a kitchen table", "on a wooden counter"]),
    ("living room", (225, 215, 190), (150, 110, 80), ["chair", "tv", "laptop", "clock", "cat", "person", "cup"],
     ["in a living room", "inside a small room"]),
    ("beach", (120, 180, 235), (230, 210, 150), ["boat", "umbrella", "person", "bird", "airplane", "dog", "kite"],
     ["at the beach", "near the water"]),
]

COUNT_WORDS = {2: "two", 3: "three", 4: "four"}


# --- drawing --------------------------------------------------------------------------------------------------

def _ellipse_polygon(x0, y0, x1, y1, n=16):
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    return [(cx + rx * math.cos(2 * math.pi * k / n), cy + ry * math.sin(2 * math.pi * k / n)) for k in range(n)]


def _rect_polygon(x0, y0, x1, y1):
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def _draw(draw: ImageDraw.ImageDraw, cat: str, box, rng: random.Random) -> list:
    """Draw one object of category ``cat`` in ``box`` and return its outline polygon (the segmentation)."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if cat == "person":
        skin, shirt = (230, 190, 160), rng.choice([(200, 40, 40), (40, 80, 200), (40, 150, 60)])
        draw.ellipse([cx - w * 0.2, y0, cx + w * 0.2, y0 + h * 0.25], fill=skin)
        draw.rectangle([cx - w * 0.3, y0 + h * 0.25, cx + w * 0.3, y0 + h * 0.65], fill=shirt)
        draw.rectangle([cx - w * 0.25, y0 + h * 0.65, cx - w * 0.05, y1], fill=(40, 40, 60))
        draw.rectangle([cx + w * 0.05, y0 + h * 0.65, cx + w * 0.25, y1], fill=(40, 40, 60))
        return [(cx - w * 0.2, y0), (cx + w * 0.2, y0), (cx + w * 0.3, y0 + h * 0.25), (cx + w * 0.3, y0 + h * 0.65),
                (cx + w * 0.25, y1), (cx - w * 0.25, y1), (cx - w * 0.3, y0 + h * 0.65), (cx - w * 0.3, y0 + h * 0.25)]
    if cat in ("car", "bus"):
        color = rng.choice([(200, 30, 30), (30, 60, 180), (230, 200, 40)]) if cat == "car" else (240, 170, 20)
        top = y0 + (h * 0.35 if cat == "car" else h * 0.1)
        if cat == "car":
            draw.rectangle([x0 + w * 0.2, y0, x1 - w * 0.2, top], fill=color)
        draw.rectangle([x0, top, x1, y1 - h * 0.2], fill=color)
        win = (200, 230, 250)
        for k in range(2 if cat == "car" else 4):
            n = 2 if cat == "car" else 4
            wx = x0 + w * (0.25 + 0.5 * k / n) if cat == "car" else x0 + w * (0.08 + 0.23 * k)
            draw.rectangle([wx, top + h * 0.08, wx + w * (0.18 if cat == "car" else 0.16), top + h * 0.25], fill=win)
        for wx in (x0 + w * 0.22, x1 - w * 0.22):
            draw.ellipse([wx - h * 0.2, y1 - h * 0.4, wx + h * 0.2, y1], fill=(20, 20, 20))
        return _rect_polygon(x0, y0 if cat == "car" else top, x1, y1)
    if cat in ("bicycle", "motorcycle"):
        r = min(w * 0.25, h * 0.4)
        line = (30, 30, 30) if cat == "bicycle" else (90, 90, 90)
        for wx in (x0 + r, x1 - r):
            draw.ellipse([wx - r, y1 - 2 * r, wx + r, y1], outline=line, width=max(2, int(r / 5)))
        if cat == "motorcycle":
            draw.rectangle([x0 + r, y1 - 2.2 * r, x1 - r, y1 - r], fill=(180, 20, 20))
        else:
            draw.line([(x0 + r, y1 - r), (cx, y0 + h * 0.3), (x1 - r, y1 - r)], fill=(20, 120, 200), width=3)
        return _rect_polygon(x0, y0 + h * 0.2, x1, y1)
    if cat == "airplane":
        draw.ellipse([x0, cy - h * 0.12, x1, cy + h * 0.12], fill=(235, 235, 240))
        draw.polygon([(cx - w * 0.1, cy), (cx + w * 0.1, cy), (cx - w * 0.15, y1)], fill=(200, 200, 210))
        draw.polygon([(cx - w * 0.1, cy), (cx + w * 0.1, cy), (cx - w * 0.15, y0)], fill=(200, 200, 210))
        return [(x0, cy), (cx - w * 0.15, y0), (x1, cy), (cx - w * 0.15, y1)]
    if cat == "boat":
        draw.polygon([(x0, cy), (x1, cy), (x1 - w * 0.15, y1), (x0 + w * 0.15, y1)], fill=(120, 70, 30))
        draw.polygon([(cx, y0), (cx, cy), (x1 - w * 0.1, cy)], fill=(250, 250, 250))
        return [(x0, cy), (cx, y0), (x1, cy), (x1 - w * 0.15, y1), (x0 + w * 0.15, y1)]
    if cat == "traffic light":
        draw.rectangle([x0 + w * 0.25, y0, x1 - w * 0.25, y1], fill=(30, 30, 30))
        for k, color in enumerate([(230, 30, 30), (240, 200, 30), (40, 200, 60)]):
            yy = y0 + h * (0.05 + 0.32 * k)
            draw.ellipse([cx - w * 0.18, yy, cx + w * 0.18, yy + h * 0.25], fill=color)
        return _rect_polygon(x0 + w * 0.25, y0, x1 - w * 0.25, y1)
    if cat == "stop sign":
        poly = [(cx + w / 2 * math.cos(math.pi / 8 + k * math.pi / 4), cy + h / 2 * math.sin(math.pi / 8 + k * math.pi / 4))
                for k in range(8)]
        draw.polygon(poly, fill=(200, 20, 20), outline=(255, 255, 255))
        draw.rectangle([cx - w * 0.3, cy - h * 0.06, cx + w * 0.3, cy + h * 0.06], fill=(255, 255, 255))
        return poly
    if cat in ("bird", "cat", "dog", "horse"):
        color = {"bird": (60, 60, 70), "cat": (150, 150, 150), "dog": (150, 100, 50), "horse": (110, 70, 40)}[cat]
        body = [x0, cy - h * 0.1, x1 - w * 0.25, y1 - h * 0.2]
        draw.ellipse(body, fill=color)
        draw.ellipse([x1 - w * 0.35, y0, x1, cy + h * 0.1], fill=color)
        if cat != "bird":
            for lx in (x0 + w * 0.1, x1 - w * 0.45):
                draw.rectangle([lx, y1 - h * 0.3, lx + w * 0.08, y1], fill=color)
        if cat == "cat":
            draw.polygon([(x1 - w * 0.33, y0 + h * 0.05), (x1 - w * 0.28, y0 - h * 0.05 + 1), (x1 - w * 0.22, y0 + h * 0.05)],
                         fill=color)
        if cat == "bird":
            draw.polygon([(x1, cy - h * 0.15), (x1, cy - h * 0.05), (x1 + 1, cy - h * 0.1)], fill=(240, 160, 20))
        return _ellipse_polygon(x0, y0, x1, y1 - (h * 0.2 if cat == "bird" else 0))
    if cat == "umbrella":
        draw.pieslice([x0, y0, x1, y0 + h * 0.8], 180, 360, fill=rng.choice([(220, 40, 90), (40, 160, 200)]))
        draw.line([(cx, y0 + h * 0.4), (cx, y1)], fill=(40, 40, 40), width=3)
        return [(x0, y0 + h * 0.4), (cx, y0), (x1, y0 + h * 0.4), (cx, y1)]
    if cat in ("sports ball", "apple", "orange", "clock"):
        r = min(w, h) / 2
        fill = {"sports ball": (250, 250, 250), "apple": (200, 20, 30), "orange": (250, 140, 0),
                "clock": (250, 250, 240)}[cat]
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill, outline=(20, 20, 20))
        if cat == "clock":
            draw.line([(cx, cy), (cx, cy - r * 0.7)], fill=(0, 0, 0), width=2)
            draw.line([(cx, cy), (cx + r * 0.5, cy)], fill=(0, 0, 0), width=2)
        if cat == "sports ball":
            draw.polygon(_ellipse_polygon(cx - r * 0.3, cy - r * 0.3, cx + r * 0.3, cy + r * 0.3, 5), fill=(0, 0, 0))
        if cat == "apple":
            draw.line([(cx, cy - r), (cx + r * 0.2, cy - r * 1.2)], fill=(90, 60, 20), width=2)
        return _ellipse_polygon(cx - r, cy - r, cx + r, cy + r)
    if cat == "kite":
        poly = [(cx, y0), (x1, cy - h * 0.1), (cx, y1 - h * 0.2), (x0, cy - h * 0.1)]
        draw.polygon(poly, fill=rng.choice([(240, 60, 60), (250, 210, 30), (120, 60, 200)]))
        draw.line([(cx, y1 - h * 0.2), (cx - w * 0.2, y1)], fill=(40, 40, 40), width=1)
        return poly
    if cat == "bottle":
        draw.rectangle([cx - w * 0.12, y0, cx + w * 0.12, y0 + h * 0.3], fill=(30, 120, 60))
        draw.rectangle([cx - w * 0.3, y0 + h * 0.3, cx + w * 0.3, y1], fill=(30, 120, 60))
        return [(cx - w * 0.12, y0), (cx + w * 0.12, y0), (cx + w * 0.3, y0 + h * 0.3), (cx + w * 0.3, y1),
                (cx - w * 0.3, y1), (cx - w * 0.3, y0 + h * 0.3)]
    if cat == "cup":
        draw.rectangle([x0, y0 + h * 0.2, x1 - w * 0.25, y1], fill=(250, 250, 250), outline=(60, 60, 60))
        draw.ellipse([x1 - w * 0.4, cy - h * 0.1, x1, cy + h * 0.3], outline=(60, 60, 60), width=3)
        return _rect_polygon(x0, y0 + h * 0.2, x1, y1)
    if cat == "banana":
        draw.chord([x0, y0 - h, x1, y1], 30, 150, fill=(250, 220, 40))
        return _rect_polygon(x0, y0, x1, y1)
    if cat == "pizza":
        draw.ellipse([x0, y0, x1, y1], fill=(220, 160, 60))
        draw.ellipse([x0 + w * 0.08, y0 + h * 0.08, x1 - w * 0.08, y1 - h * 0.08], fill=(230, 80, 40))
        for _ in range(5):
            px, py = x0 + w * rng.uniform(0.3, 0.7), y0 + h * rng.uniform(0.3, 0.7)
            draw.ellipse([px - w * 0.05, py - h * 0.05, px + w * 0.05, py + h * 0.05], fill=(150, 20, 20))
        return _ellipse_polygon(x0, y0, x1, y1)
    if cat == "chair":
        wood = (130, 80, 40)
        draw.rectangle([x0 + w * 0.1, y0, x0 + w * 0.25, y1], fill=wood)
        draw.rectangle([x0 + w * 0.1, cy, x1 - w * 0.1, cy + h * 0.12], fill=wood)
        draw.rectangle([x1 - w * 0.25, cy, x1 - w * 0.1, y1], fill=wood)
        return _rect_polygon(x0 + w * 0.1, y0, x1 - w * 0.1, y1)
    if cat in ("tv", "laptop"):
        if cat == "tv":
            draw.rectangle([x0, y0, x1, y1 - h * 0.15], fill=(20, 20, 20))
            draw.rectangle([x0 + w * 0.06, y0 + h * 0.06, x1 - w * 0.06, y1 - h * 0.22], fill=(60, 120, 200))
            draw.rectangle([cx - w * 0.1, y1 - h * 0.15, cx + w * 0.1, y1], fill=(20, 20, 20))
        else:
            draw.rectangle([x0 + w * 0.1, y0, x1 - w * 0.1, cy + h * 0.2], fill=(170, 170, 180))
            draw.rectangle([x0 + w * 0.15, y0 + h * 0.06, x1 - w * 0.15, cy + h * 0.14], fill=(40, 60, 110))
            draw.polygon([(x0 + w * 0.1, cy + h * 0.2), (x1 - w * 0.1, cy + h * 0.2), (x1, y1), (x0, y1)],
                         fill=(130, 130, 140))
        return _rect_polygon(x0, y0, x1, y1)
    raise ValueError(f"no drawing for category {cat!r}")


def _polygon_area(poly) -> float:
    return abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(poly, poly[1:] + poly[:1], strict=True))) / 2


# --- captions -------------------------------------------------------------------------------------------------

def noun_phrase(cat: str, count: int, rng: random.Random) -> str:
    """'a man', 'two dogs', 'an orange', 'several cars': the way a person would name ``count`` objects."""
    singular, plural = rng.choice(NOUNS[cat])
    if count == 1:
        return f"{'an' if singular[0] in 'aeiou' else 'a'} {singular}"
    if singular == "person" or rng.random() < 0.25:
        return f"{'some' if count > 3 else COUNT_WORDS.get(count, 'several')} {plural}"
    return f"{COUNT_WORDS.get(count, 'several')} {plural}"


def _join(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def make_captions(counts: dict[str, int], places: list[str], rng: random.Random, n: int = 5) -> list[str]:
    """``n`` reference captions naming (a random subset of) the image's objects, in varied sentence forms."""
    cats = list(counts)
    captions = []
    for k in range(n):
        chosen = rng.sample(cats, min(len(cats), rng.randint(2, 3))) if k else list(cats)
        phrases = [noun_phrase(c, counts[c], rng) for c in chosen]
        place = rng.choice(places)
        form = (k + rng.randint(0, 3)) % 4
        if form == 0:
            text = f"{_join(phrases)} {place}."
        elif form == 1:
            text = f"A picture of {_join(phrases)} {place}."
        elif form == 2:
            text = f"{phrases[0]} next to {_join(phrases[1:])}." if len(phrases) > 1 else f"{phrases[0]} {place}."
        else:
            verb = "is" if phrases[0].split()[0] in ("a", "an") else "are"
            text = f"There {verb} {_join(phrases)} {place}."
        captions.append(text[0].upper() + text[1:])
    return captions


# --- the data set -----------------------------------------------------------------------------------------------

def _place_boxes(width: int, height: int, sizes: list[tuple[int, int]], rng: random.Random) -> list:
    """Non-overlapping boxes (where possible) of the given sizes inside the image."""
    boxes = []
    for w, h in sizes:
        best = None
        for _ in range(60):
            x0, y0 = rng.randint(0, max(0, width - w - 1)), rng.randint(0, max(0, height - h - 1))
            box = (x0, y0, x0 + w, y0 + h)
            overlap = sum(max(0, min(box[2], b[2]) - max(box[0], b[0])) * max(0, min(box[3], b[3]) - max(box[1], b[1]))
                          for b in boxes)
            if best is None or overlap < best[0]:
                best = (overlap, box)
            if overlap == 0:
                break
        boxes.append(best[1])
    return boxes


def build_demo_coco(out_dir: str | Path, n_images: int, min_size: int, max_size: int, seed: int) -> dict:
    """Write ``val2017/*.jpg`` and ``annotations/{instances,captions}_val2017.json`` under ``out_dir``.
    Returns a summary (images, annotations, categories used)."""
    if n_images < 1 or min_size > max_size:
        raise PipelineError(f"data.demo: need n_images >= 1 and min_size <= max_size, got {n_images}, "
                            f"{min_size}..{max_size}")
    out_dir = Path(out_dir)
    rng = random.Random(seed)
    images, instances, captions = [], [], []
    ann_id, cap_id = 1, 1
    for i in range(n_images):
        image_id = 1000 + 37 * i + rng.randint(0, 30)  # sparse, increasing ids like COCO's
        width, height = rng.randint(min_size, max_size), rng.randint(min_size, max_size)
        scene_name, top, bottom, cats, places = SCENES[i % len(SCENES)]
        n_cats = rng.randint(3, min(5, len(cats)))
        chosen = rng.sample(cats, n_cats)
        counts = {c: (rng.choice([2, 2, 3]) if rng.random() < 0.35 else 1) for c in chosen}
        img = Image.new("RGB", (width, height), top)
        draw = ImageDraw.Draw(img)
        horizon = int(height * rng.uniform(0.35, 0.55))
        draw.rectangle([0, horizon, width, height], fill=bottom)
        objects = [c for c in chosen for _ in range(counts[c])]
        scale = 1.0 / math.sqrt(max(1, len(objects)) / 2.5)
        sizes = []
        for c in objects:
            side = min(width, height) * rng.uniform(0.22, 0.36) * min(1.0, scale)
            aspect = {"person": 0.5, "bus": 1.8, "car": 1.6, "bicycle": 1.5, "motorcycle": 1.5, "airplane": 2.0,
                      "traffic light": 0.45, "bottle": 0.45, "horse": 1.3, "dog": 1.3, "boat": 1.4}.get(c, 1.0)
            w, h = max(12, int(side * math.sqrt(aspect))), max(12, int(side / math.sqrt(aspect)))
            sizes.append((min(w, width - 2), min(h, height - 2)))
        for c, box in zip(objects, _place_boxes(width, height, sizes, rng), strict=True):
            poly = _draw(draw, c, box, rng)
            poly = [(min(max(x, 0.0), width - 1.0), min(max(y, 0.0), height - 1.0)) for x, y in poly]
            xs, ys = [p[0] for p in poly], [p[1] for p in poly]
            bbox = [round(min(xs), 2), round(min(ys), 2), round(max(xs) - min(xs), 2), round(max(ys) - min(ys), 2)]
            instances.append({
                "segmentation": [[round(v, 2) for p in poly for v in p]],
                "area": round(_polygon_area(poly), 4),
                "iscrowd": 0,
                "image_id": image_id,
                "bbox": bbox,
                "category_id": CATEGORY_ID[c],
                "id": ann_id,
            })
            ann_id += 1
        file_name = f"{image_id:012d}.jpg"
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        with atomic_output(out_dir / "val2017" / file_name) as f:
            f.write(buf.getvalue())
        images.append({
            "license": 4, "file_name": file_name,
            "coco_url": f"http://images.cocodataset.org/val2017/{file_name}",
            "height": height, "width": width, "date_captured": "2013-11-14 17:02:52",
            "flickr_url": "", "id": image_id,
        })
        for text in make_captions(counts, places, rng):
            captions.append({"image_id": image_id, "id": cap_id, "caption": text})
            cap_id += 1
        log.info("demo image %d/%d: %s %dx%d %s scene, %s", i + 1, n_images, file_name, width, height, scene_name,
                 counts)
    info = {"description": "Synthetic mini-COCO for the offline demo (drawn objects, not photographs)",
            "url": "", "version": "1.0", "year": 2017, "contributor": "prompt-in-image pipeline",
            "date_created": "2017/09/01"}
    licenses = [{"url": "http://creativecommons.org/licenses/by/2.0/", "id": 4, "name": "Attribution License"}]
    categories = [{"supercategory": sup, "id": cid, "name": name} for cid, name, sup in COCO_CATEGORIES]
    _write_json(out_dir / "annotations" / "instances_val2017.json",
                {"info": info, "licenses": licenses, "images": images, "annotations": instances,
                 "categories": categories})
    _write_json(out_dir / "annotations" / "captions_val2017.json",
                {"info": info, "licenses": licenses, "images": images, "annotations": captions})
    used = sorted({a["category_id"] for a in instances})
    return {"images": len(images), "annotations": len(instances), "captions": len(captions), "categories": used}


def _write_json(path: Path, value: dict) -> None:
    with atomic_output(path, "w") as f:
        json.dump(value, f)
