"""Data stage: POPE reading and sampling, caption sampling, POPE's construction method, the demo mini-COCO and
image resolution (no network here; fetching is in test_fetch.py)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import polars as pl
import pytest
import yaml
from conftest import ROOT, run_snakemake

from pii.core.stage import PipelineError
from pii.core.tables import read_table
from pii.data import pope_questions, sampling, synthetic_coco

# A copy of POPE's official adversarial file, if one lies in shared/data/pope/ beside the checkout (or where
# PII_POPE_FILE points); the tests that read it skip otherwise.
REAL_POPE = Path(os.environ.get("PII_POPE_FILE", ROOT.parent / "shared" / "data" / "pope" / "coco_pope_adversarial.json"))
QUESTION = re.compile(r"^Is there (a|an) (.+) in the image\?$")


def one_line_error(excinfo, *needles: str) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, msg
    return msg


# --- a synthetic POPE file ------------------------------------------------------------------------------------

def write_pope(path: Path, n_images: int = 40, yes_per_image: int = 3, no_per_image: int = 3) -> Path:
    rows, qid = [], 1
    for i in range(n_images):
        image = f"COCO_val2014_{100000 + 7 * i:012d}.jpg"
        labels = ["yes"] * yes_per_image + ["no"] * no_per_image
        for k, label in enumerate(labels):
            obj = ["apple", "dog", "umbrella", "car", "orange", "cat"][k % 6]
            article = "an" if obj[0] in "aeiou" else "a"
            rows.append({"question_id": qid, "image": image, "text": f"Is there {article} {obj} in the image?",
                         "label": label})
            qid += 1
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def pope_file(tmp_path) -> Path:
    return write_pope(tmp_path / "pope.json")


def test_read_pope_keeps_rows(pope_file):
    pope = sampling.read_pope(pope_file)
    assert list(pope.columns) == ["question_id", "image", "text", "label"]
    assert len(pope) == 240 and pope["question_id"].to_list() == list(range(1, 241))


@pytest.mark.parametrize("line, needle", [
    ('{"question_id": 9, "image": "x.jpg", "text": "t", "label": "yes"', "not valid JSON"),
    ('{"question_id": 9, "image": "x.jpg", "label": "yes"}', "needs the keys"),
    ('{"question_id": 9, "image": "x.jpg", "text": "t", "label": "maybe"}', "'maybe'"),
    ('{"question_id": 1, "image": "x.jpg", "text": "t", "label": "no"}', "already used on line 1"),
    ('{"question_id": "9", "image": "x.jpg", "text": "t", "label": "no"}', "not an integer"),
    ('{"question_id": 9.0, "image": "x.jpg", "text": "t", "label": "no"}', "not an integer"),
    ('{"question_id": 9, "image": "x.jpg", "text": "t", "label": "no"}', "asks about 't' in x.jpg again (line 1 asks"),
])
def test_read_pope_errors_name_file_and_line(tmp_path, line, needle):
    path = tmp_path / "bad.json"
    good = '{"question_id": 1, "image": "x.jpg", "text": "t", "label": "yes"}'
    path.write_text(f"{good}\n\n{line}\n")
    with pytest.raises(PipelineError) as excinfo:
        sampling.read_pope(path)
    one_line_error(excinfo, f"{path}:3", needle)


@pytest.mark.skipif(not REAL_POPE.exists(), reason="the official POPE file is not in the shared data folder")
def test_read_official_pope_adversarial():
    pope = sampling.read_pope(REAL_POPE)
    assert len(pope) == 3000 and pope["image"].n_unique() == 500
    assert pope["label"].to_list() == ["yes", "no"] * 1500
    ids = [sampling.image_id_of(name) for name in pope["image"]]
    assert all(i > 0 for i in ids) and len(set(ids)) == 500
    assert sampling.image_id_of("COCO_val2014_000000310196.jpg") == 310196


@pytest.mark.skipif(not REAL_POPE.exists(), reason="the official POPE file is not in the shared data folder")
def test_builder_writes_the_official_format_byte_for_byte(tmp_path):
    """Our question wording and JSON Lines writer reproduce the official adversarial file exactly, except that the
    official copy has Windows line ends (CRLF), where POPE's code writes '\n' on Linux as ours does."""
    rows = sampling.read_pope(REAL_POPE).to_dicts()
    for row in rows:
        assert pope_questions.question_text(asked_object(row["text"])) == row["text"]
    pope_questions.write_jsonl(rows, tmp_path / "copy.json")
    assert (tmp_path / "copy.json").read_bytes() == REAL_POPE.read_bytes().replace(b"\r\n", b"\n")


# --- POPE sampling -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [20, 21])
def test_sample_pope_balanced_and_deterministic(pope_file, n):
    pope = sampling.read_pope(pope_file)
    a = sampling.sample_pope(pope, n, True, seed=7)
    b = sampling.sample_pope(pope, n, True, seed=7)
    c = sampling.sample_pope(pope, n, True, seed=8)
    assert a["question_id"].to_list() == b["question_id"].to_list()
    assert a["question_id"].to_list() != c["question_id"].to_list()
    assert len(a) == n and a["question_id"].is_unique().all()
    labels = a["label"].to_list()
    assert labels.count("yes") == n - n // 2 and labels.count("no") == n // 2
    # labels, images and texts are the source's, row by row
    merged = a.join(pope, on="question_id", suffix="_src")
    assert len(merged) == n
    for col in ("image", "text", "label"):
        assert (merged[col] == merged[f"{col}_src"]).all()


def test_sample_pope_unbalanced_follows_the_source(tmp_path):
    pope = sampling.read_pope(write_pope(tmp_path / "skewed.json", yes_per_image=5, no_per_image=1))
    picked = sampling.sample_pope(pope, 60, False, seed=3)
    assert len(picked) == 60 and picked["question_id"].is_unique().all()
    assert (picked["label"] == "yes").sum() > 40  # about 50 of 60 expected; a forced 30/30 would be a bug
    assert picked["question_id"].to_list() == sampling.sample_pope(pope, 60, False, seed=3)["question_id"].to_list()


def test_sample_pope_too_many(tmp_path, pope_file):
    pope = sampling.read_pope(pope_file)
    with pytest.raises(PipelineError) as excinfo:
        sampling.sample_pope(pope, len(pope) + 1, True, seed=0)
    one_line_error(excinfo, "sampling.pope.n")
    skewed = sampling.read_pope(write_pope(tmp_path / "skewed.json", n_images=10, yes_per_image=5, no_per_image=1))
    with pytest.raises(PipelineError) as excinfo:
        sampling.sample_pope(skewed, 40, True, seed=0)
    one_line_error(excinfo, "'no'", "balanced: false")


def fake_coco_root(root: Path, image_ids, split: str = "val2017") -> Path:
    (root / split).mkdir(parents=True, exist_ok=True)
    for i in image_ids:
        (root / split / f"{i:012d}.jpg").write_bytes(b"jpeg")
    return root


def test_pope_sample_parquet_and_id_list(tmp_path, pope_file):
    pope = sampling.read_pope(pope_file)
    sampled = sampling.sample_pope(pope, 30, True, seed=1)
    table = sampling.pope_sample_table(sampled)
    coco = {"root": str(fake_coco_root(tmp_path / "coco", table["image_id"].unique().to_list())), "download": False}
    table = sampling.attach_images(table, coco)
    parquet, ids = tmp_path / "out" / "pope_sample.parquet", tmp_path / "out" / "pope_sample_ids.txt"
    sampling.write_sample(table, parquet, ids, "question_id", metadata={"seed": 1})
    back = read_table(parquet, "sample")  # checks the `sample` table schema
    assert back["sample_id"].to_list() == [f"pope-{q}" for q in sampled["question_id"]]
    assert back["sample_id"].is_unique().all() and set(back["task"]) == {"pope"}
    assert [int(v) for v in ids.read_text().split()] == back["question_id"].to_list()
    assert back["image_id"].to_list() == [int(n[-16:-4]) for n in sampled["image"]]
    assert all(Path(p).is_file() and Path(p).parent.name == "val2017" for p in back["image_path"])
    for text, obj in zip(back["question"], back["object"], strict=True):
        assert QUESTION.match(text).group(2) == obj


def test_sample_tables_hold_questions_in_nfc(pope_file):
    """A decomposed question (e + U+0301) enters the sample table, hence prompts, rendering and scoring, as NFC."""
    sampled = sampling.sample_pope(sampling.read_pope(pope_file), 2, True, seed=1)
    sampled = sampled.with_columns(pl.Series("text", ["Is there a cafe\u0301 in the image?"] * 2))
    assert sampling.pope_sample_table(sampled)["question"].to_list() == ["Is there a caf\u00e9 in the image?"] * 2
    table = sampling.caption_sample_table(pl.DataFrame({"image_id": [1], "image_file": ["x.jpg"]}), "De\u0301cris")
    assert table["question"].to_list() == ["D\u00e9cris"]


# --- caption sampling ----------------------------------------------------------------------------------------

def write_instances(path: Path, image_ids) -> Path:
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "width": 64, "height": 48} for i in image_ids]
    path.write_text(json.dumps({"images": images, "annotations": [], "categories": []}))
    return path


def test_caption_sampling(tmp_path):
    ids = [1000 + 13 * k for k in range(50)]
    instances = write_instances(tmp_path / "instances_val2017.json", ids)
    a = sampling.sample_caption_images(instances, 12, seed=5)
    assert a["image_id"].to_list() == sampling.sample_caption_images(instances, 12, seed=5)["image_id"].to_list()
    assert a["image_id"].to_list() != sampling.sample_caption_images(instances, 12, seed=6)["image_id"].to_list()
    assert len(a) == 12 and a["image_id"].is_sorted() and set(a["image_id"]) <= set(ids)
    assert a["image_file"].to_list() == [f"{i:012d}.jpg" for i in a["image_id"]]
    table = sampling.caption_sample_table(a, "Describe this image.")
    coco = {"root": str(fake_coco_root(tmp_path / "coco", a["image_id"])), "download": False}
    table = sampling.attach_images(table, coco)
    parquet, id_list = tmp_path / "caption_sample.parquet", tmp_path / "caption_sample_ids.txt"
    sampling.write_sample(table, parquet, id_list, "image_id", metadata={})
    back = read_table(parquet, "sample")
    assert back["sample_id"].to_list() == [f"caption-{i}" for i in a["image_id"]]
    assert back["label"].is_null().all() and back["question_id"].is_null().all()
    assert [int(v) for v in id_list.read_text().split()] == back["image_id"].to_list()
    with pytest.raises(PipelineError) as excinfo:
        sampling.sample_caption_images(instances, 51, seed=5)
    one_line_error(excinfo, "sampling.caption.n")


# --- image resolution ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["val2014", "val2017", "train2017"])
def test_resolve_val2014_name(tmp_path, where):
    name, image_id = "COCO_val2014_000000310196.jpg", 310196
    target = tmp_path / where / (name if where == "val2014" else "000000310196.jpg")
    target.parent.mkdir(parents=True)
    target.write_bytes(b"jpeg")
    got = sampling.resolve_image({"root": str(tmp_path), "download": False}, name, image_id)
    assert Path(got) == target


def test_resolve_missing_image_without_download(tmp_path):
    coco = {"root": str(tmp_path), "download": False, "image_url": "http://127.0.0.1:9/{split}/{file_name}"}
    with pytest.raises(PipelineError) as excinfo:
        sampling.resolve_image(coco, "COCO_val2014_000000310196.jpg", 310196)
    one_line_error(excinfo, str(tmp_path / "val2014" / "COCO_val2014_000000310196.jpg"), "download")


# --- POPE's construction method ------------------------------------------------------------------------------

HAND_CATEGORIES = ["person", "dog", "cat", "apple", "car", "umbrella", "bus", "orange", "elephant", "kite"]
HAND_IMAGES = {
    1: ["person", "dog", "car", "kite", "dog"],
    2: ["person", "dog", "umbrella"],
    3: ["person", "car", "bus"],
    4: ["apple", "orange", "person", "cat"],
    5: ["dog", "cat", "umbrella", "elephant"],
    6: ["person", "car", "bus", "dog"],
    7: ["apple", "orange"],  # too few categories: never asked about, not counted
}


def hand_coco(path: Path) -> Path:
    cats = [{"id": 10 + k, "name": n, "supercategory": "x"} for k, n in enumerate(HAND_CATEGORIES)]
    cid = {c["name"]: c["id"] for c in cats}
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "width": 10, "height": 10} for i in HAND_IMAGES]
    anns = [{"id": len(HAND_IMAGES) * 10 + k, "image_id": i, "category_id": cid[n]}
            for k, (i, n) in enumerate((i, n) for i, names in HAND_IMAGES.items() for n in names)]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def objects_by_file(instances: Path) -> tuple[dict[str, set[str]], list[str]]:
    coco = json.loads(instances.read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    files = {im["id"]: im["file_name"] for im in coco["images"]}
    out: dict[str, set[str]] = {f: set() for f in files.values()}
    for a in coco["annotations"]:
        out[files[a["image_id"]]].add(names[a["category_id"]])
    return out, sorted(names.values())


def asked_object(text: str) -> str:
    match = QUESTION.match(text)
    assert match, text
    article, obj = match.groups()
    assert article == ("an" if obj[0] in "aeiou" else "a"), text
    return obj


def check_pope_invariants(rows: dict, instances: Path, n_per_label: int) -> None:
    """Format, presence/absence of objects, popular and adversarial negatives recomputed with plain loops."""
    objects, all_cats = objects_by_file(instances)
    per_image = {}
    for strategy in ("random", "popular", "adversarial"):
        qs = rows[strategy]
        assert [q["question_id"] for q in qs] == list(range(1, len(qs) + 1))
        assert all(list(q) == ["question_id", "image", "text", "label"] for q in qs)
        assert [q["label"] for q in qs] == ["yes", "no"] * (len(qs) // 2)
        grouped: dict[str, dict[str, list[str]]] = {}
        for q in qs:
            obj = asked_object(q["text"])
            assert (obj in objects[q["image"]]) == (q["label"] == "yes"), q
            grouped.setdefault(q["image"], {"yes": [], "no": []})[q["label"]].append(obj)
        for g in grouped.values():
            assert len(g["yes"]) == len(set(g["yes"])) == n_per_label
            assert len(g["no"]) == len(set(g["no"])) == n_per_label
        per_image[strategy] = grouped
    images = list(per_image["random"])
    for strategy in ("popular", "adversarial"):
        assert list(per_image[strategy]) == images
        assert all(per_image[strategy][im]["yes"] == per_image["random"][im]["yes"] for im in images)
    # image-level frequency and co-occurrence over the sampled images only
    freq = {c: 0 for c in all_cats}
    together = {a: {b: 0 for b in all_cats} for a in all_cats}
    for im in images:
        for a in objects[im]:
            freq[a] += 1
            for b in objects[im]:
                if a != b:
                    together[a][b] += 1
    for im in images:
        present = objects[im]
        absent = [c for c in all_cats if c not in present]
        by_popularity = sorted(absent, key=lambda c: (-freq[c], c))
        assert per_image["popular"][im]["no"] == by_popularity[:n_per_label], im
        expected: list[str] = []
        order = per_image["random"][im]["yes"] + sorted(present - set(per_image["random"][im]["yes"]))
        for obj in order:
            if len(expected) == n_per_label:
                break
            best, best_count = None, 0
            for c in sorted(absent):
                if c not in expected and together[obj][c] > best_count:
                    best, best_count = c, together[obj][c]
            if best is not None:
                expected.append(best)
        for c in by_popularity:
            if len(expected) < n_per_label and c not in expected:
                expected.append(c)
        assert per_image["adversarial"][im]["no"] == expected, im


def test_build_pope_on_hand_made_coco(tmp_path):
    instances = hand_coco(tmp_path / "instances.json")
    rows = pope_questions.build_pope(instances, n_images=6, n_per_label=2, min_objects=3, seed=0)
    assert len(rows["random"]) == 6 * 4
    assert "000000000007.jpg" not in {q["image"] for q in rows["random"]}
    check_pope_invariants(rows, instances, 2)
    # spot check: the popular negatives of image 4 (person, apple, orange, cat) are dog (4 images) and car (3)
    pop4 = [asked_object(q["text"]) for q in rows["popular"] if q["image"] == "000000000004.jpg" and q["label"] == "no"]
    assert pop4 == ["dog", "car"]
    assert rows == pope_questions.build_pope(instances, n_images=6, n_per_label=2, min_objects=3, seed=0)
    with pytest.raises(PipelineError) as excinfo:
        pope_questions.build_pope(instances, n_images=7, n_per_label=2, min_objects=3, seed=0)
    one_line_error(excinfo, "n_images")


def test_build_pope_too_few_absent_categories(tmp_path):
    """A category set so small that an image leaves fewer absent categories than negatives needed."""
    path = tmp_path / "tiny.json"
    cats = [{"id": k, "name": n, "supercategory": "x"} for k, n in enumerate(["dog", "cat", "car", "bus"], 1)]
    images = [{"id": 1, "file_name": "000000000001.jpg", "width": 9, "height": 9}]
    anns = [{"id": k, "image_id": 1, "category_id": k} for k in (1, 2, 3)]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    with pytest.raises(PipelineError) as excinfo:
        pope_questions.build_pope(path, n_images=1, n_per_label=2, min_objects=3, seed=0)
    one_line_error(excinfo, "000000000001.jpg", "lower n_per_label")


def test_question_text_articles():
    assert pope_questions.question_text("apple") == "Is there an apple in the image?"
    assert pope_questions.question_text("umbrella") == "Is there an umbrella in the image?"
    assert pope_questions.question_text("dog") == "Is there a dog in the image?"


def test_written_pope_reads_back(tmp_path):
    instances = hand_coco(tmp_path / "instances.json")
    rows = pope_questions.build_pope(instances, n_images=5, n_per_label=2, min_objects=3, seed=3)
    pope_questions.write_jsonl(rows["adversarial"], tmp_path / "adv.json")
    first = (tmp_path / "adv.json").read_text().splitlines()[0]
    assert list(json.loads(first)) == ["question_id", "image", "text", "label"]
    assert sampling.read_pope(tmp_path / "adv.json").to_dicts() == rows["adversarial"]


# --- the demo mini-COCO --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo_coco")
    synthetic_coco.build_demo_coco(out, n_images=48, min_size=160, max_size=400, seed=11)
    return out


def test_demo_coco_loads_and_matches_images(demo):
    from PIL import Image
    from pycocotools.coco import COCO

    instances = COCO(str(demo / "annotations" / "instances_val2017.json"))
    captions = COCO(str(demo / "annotations" / "captions_val2017.json"))
    assert len(instances.getImgIds()) >= 40
    used = {a["category_id"] for a in instances.dataset["annotations"]}
    assert len(used) >= 12
    sizes = set()
    for image_id, info in instances.imgs.items():
        path = demo / "val2017" / info["file_name"]
        with Image.open(path) as im:
            assert im.size == (info["width"], info["height"])
        sizes.add((info["width"], info["height"]))
        assert len(captions.getAnnIds(imgIds=[image_id])) == 5
        assert instances.getAnnIds(imgIds=[image_id])
    assert len(sizes) > 10


def test_demo_coco_is_byte_identical(demo, tmp_path):
    synthetic_coco.build_demo_coco(tmp_path, n_images=48, min_size=160, max_size=400, seed=11)
    for name in ("instances_val2017.json", "captions_val2017.json"):
        assert (tmp_path / "annotations" / name).read_bytes() == (demo / "annotations" / name).read_bytes()


def test_build_pope_on_demo_coco(demo):
    instances = demo / "annotations" / "instances_val2017.json"
    rows = pope_questions.build_pope(instances, n_images=40, n_per_label=3, min_objects=3, seed=0)
    assert len(rows["adversarial"]) == 240
    check_pope_invariants(rows, instances, 3)
    pope = pl.DataFrame(rows["adversarial"])
    assert pope["image"].n_unique() == 40


# --- the data rules of the demo DAG --------------------------------------------------------------------------

DATA_TARGETS = ["results/data/pope_sample.parquet", "results/data/caption_sample.parquet",
                "results/data/pope_sample_ids.txt", "results/data/caption_sample_ids.txt"]


def test_demo_dag_through_data(tmp_path):
    """demo COCO -> POPE built by POPE's method -> both samples, through Snakemake with the demo config."""
    demo = yaml.safe_load((ROOT / "config.demo.yaml").read_text())
    run_snakemake(tmp_path, *DATA_TARGETS, timeout=300)
    built = sampling.read_pope(tmp_path / demo["data"]["pope"]["file"])
    n_built = demo["data"]["pope_build"]["n_images"]
    assert len(built) == 6 * n_built and built["image"].n_unique() == n_built
    for task, id_column in (("pope", "question_id"), ("caption", "image_id")):
        table = read_table(tmp_path / f"results/data/{task}_sample.parquet", "sample")
        assert len(table) == demo["sampling"][task]["n"] and table["sample_id"].is_unique().all()
        ids = [int(v) for v in (tmp_path / f"results/data/{task}_sample_ids.txt").read_text().split()]
        assert ids == table[id_column].to_list()
        assert all((tmp_path / p).is_file() and p.startswith("resources/demo/coco/val2017/")
                   for p in table["image_path"])
    pope = read_table(tmp_path / "results/data/pope_sample.parquet")
    assert (pope["label"] == "yes").sum() == (pope["label"] == "no").sum()
    merged = pope.join(built, on="question_id", suffix="_built")
    assert (merged["label"] == merged["label_built"]).all() and (merged["question"] == merged["text"]).all()
    assert "Nothing to be done" in run_snakemake(tmp_path, "-n", *DATA_TARGETS, timeout=120).stdout
