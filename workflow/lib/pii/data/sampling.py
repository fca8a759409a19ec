"""Stage data / sampling: POPE questions and COCO caption images, seeded, with their images resolved locally.

The rules sample_pope and sample_caption (one script each) write ``results/data/{task}_sample.parquet`` (schema ``sample``) and the published id list
``results/data/{task}_sample_ids.txt`` so that others can rerun exactly the same questions and images.
"""

import json
import random
import re
import unicodedata
from pathlib import Path

import polars as pl

from pii.core.stage import PipelineError, log
from pii.core.tables import atomic_output, records_frame, write_table
from pii.data.fetch import COCO_DOWNLOADS, http_get

POPE_KEYS = ("question_id", "image", "text", "label")
QUESTION_OBJECT = re.compile(r"^Is there (?:a|an) (.+) in the image\?$")
IMAGE_ID = re.compile(r"(\d+)\.(?:jpg|jpeg|png)$", re.IGNORECASE)


# --- reading POPE ------------------------------------------------------------------------------------------

def read_pope(path: str | Path) -> pl.DataFrame:
    """Read POPE's JSON Lines file, strictly: every problem names the file and line and says what to do."""
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"{path}: POPE file not found; set data.pope.file or let the workflow fetch it")
    rows, seen, asked = [], {}, {}
    with open(path, encoding="utf-8-sig") as f:  # -sig: a byte order mark some editors write is not data
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise PipelineError(f"{where}: not valid JSON ({err.msg}); fix or delete the line") from err
            if not isinstance(row, dict) or any(k not in row for k in POPE_KEYS):
                raise PipelineError(f"{where}: a POPE line needs the keys {list(POPE_KEYS)}; fix the line")
            if not isinstance(row["text"], str) or not row["text"].strip():
                raise PipelineError(f"{where}: the question text is empty; fix or delete the line")
            if row["label"] not in ("yes", "no"):
                raise PipelineError(f"{where}: label {row['label']!r} is not 'yes' or 'no'; fix the line")
            if not isinstance(row["question_id"], int) or isinstance(row["question_id"], bool):
                raise PipelineError(f"{where}: question_id {row['question_id']!r} is not an integer")
            if row["question_id"] in seen:
                raise PipelineError(f"{where}: question_id {row['question_id']} already used on line "
                                    f"{seen[row['question_id']]}; question ids must be unique")
            seen[row["question_id"]] = line_no
            # the same object asked twice about one image would count one answer twice in every metric
            text = unicodedata.normalize("NFC", row["text"]).strip()
            asked_about = (row["image"], (m.group(1) if (m := QUESTION_OBJECT.match(text)) else text).lower())
            if asked_about in asked:
                raise PipelineError(f"{where}: asks about '{asked_about[1]}' in {row['image']} again (line "
                                    f"{asked[asked_about]} asks the same); delete one of the two lines")
            asked[asked_about] = line_no
            rows.append({k: row[k] for k in POPE_KEYS})
    if not rows:
        raise PipelineError(f"{path}: no questions in the file")
    return records_frame(rows)


def image_id_of(file_name: str) -> int:
    """The COCO image id in a file name: 'COCO_val2014_000000310196.jpg' and '000000310196.jpg' -> 310196."""
    match = IMAGE_ID.search(file_name)
    if not match:
        raise PipelineError(f"image name {file_name!r} has no COCO image id (expected ...000000123456.jpg)")
    return int(match.group(1))


# --- sampling ----------------------------------------------------------------------------------------------

def sample_pope(pope: pl.DataFrame, n: int, balanced: bool, seed: int) -> pl.DataFrame:
    """``n`` questions drawn with ``seed``; with ``balanced``, half "yes" and half "no" (the extra one "yes")."""
    if n > len(pope):
        raise PipelineError(f"sampling.pope.n = {n} but the POPE file has {len(pope)} questions; lower it")
    rng = random.Random(seed)
    ordered = pope.sort("question_id", maintain_order=True)
    if balanced:
        picked = []
        for label, k in (("yes", n - n // 2), ("no", n // 2)):
            ids = ordered.filter(pl.col("label") == label)["question_id"].to_list()
            if k > len(ids):
                raise PipelineError(f"sampling.pope: {k} '{label}' questions needed, the file has {len(ids)}; "
                                    "lower sampling.pope.n or set balanced: false")
            picked += rng.sample(ids, k)
    else:
        picked = rng.sample(ordered["question_id"].to_list(), n)
    return ordered.filter(pl.col("question_id").is_in(picked))


def sample_caption_images(instances_path: str | Path, n: int, seed: int) -> pl.DataFrame:
    """``n`` images of a COCO instances file drawn with ``seed``, in image id order."""
    try:
        with open(instances_path, encoding="utf-8") as f:
            images = json.load(f)["images"]
        table = records_frame([{"image_id": int(im["id"]), "image_file": im["file_name"]} for im in images],
                              ["image_id", "image_file"], {"image_id": pl.Int64})
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise PipelineError(f"{instances_path}: not a COCO instances file ({type(err).__name__}: {err})") from err
    duplicated = table["image_id"].is_duplicated() & ~table["image_id"].is_first_distinct()
    if duplicated.any():
        dup = int(table["image_id"].filter(duplicated)[0])
        raise PipelineError(f"{instances_path}: image id {dup} is listed twice; use an unmodified COCO file")
    if n > len(table):
        raise PipelineError(f"sampling.caption.n = {n} but {instances_path} has {len(table)} images; lower it")
    ids = random.Random(seed).sample(sorted(table["image_id"]), n)
    return table.filter(pl.col("image_id").is_in(ids)).sort("image_id", maintain_order=True)


# --- finding (and fetching) images -------------------------------------------------------------------------

def image_candidates(root: str | Path, file_name: str, image_id: int) -> list[tuple[Path, str, str]]:
    """Where an image may live in a COCO root, as (local path, server split, server file name), in order."""
    root = Path(root)
    new_name = f"{image_id:012d}.jpg"
    places = []
    if file_name.startswith("COCO_val2014_"):
        places.append((root / "val2014" / file_name, "val2014", file_name))
    places += [(root / "val2017" / new_name, "val2017", new_name), (root / "train2017" / new_name, "train2017",
                                                                    new_name)]
    if file_name.startswith("COCO_train2014_"):
        places.append((root / "train2014" / file_name, "train2014", file_name))
    return places


def resolve_image(coco: dict, file_name: str, image_id: int) -> str:
    """The local path of an image: the user's COCO root first (only read), then the pipeline's downloads, where a
    missing image is fetched (that one file only) when downloads are allowed."""
    roots = [r for r in (coco.get("root"), coco.get("download_root", COCO_DOWNLOADS)) if r]
    for root in roots:
        for path, _, _ in image_candidates(root, file_name, image_id):
            if path.is_file():
                return str(path)
    path, split, name = image_candidates(roots[-1], file_name, image_id)[0]
    if not (coco.get("download") and coco.get("image_url")):
        user_root = coco.get("root")
        put = (f"put it at {image_candidates(user_root, file_name, image_id)[0][0]} (or the COCO 2017 image "
               "folders there)" if user_root else "set data.coco.root to your COCO copy")
        raise PipelineError(f"image {file_name} (id {image_id}) not found under {' or '.join(roots)}: {put}, or "
                            f"set data.coco.download: true to fetch it into {path}")
    http_get(coco["image_url"].format(split=split, file_name=name), path)
    return str(path)


def attach_images(table: pl.DataFrame, coco: dict) -> pl.DataFrame:
    paths = []
    for i, (file_name, image_id) in enumerate(zip(table["image_file"], table["image_id"], strict=True), start=1):
        paths.append(resolve_image(coco, file_name, int(image_id)))
        if i % 100 == 0 or i == len(table):
            log.info("images located: %d/%d", i, len(table))
    return table.with_columns(pl.Series("image_path", paths, dtype=pl.String))


# --- outputs -----------------------------------------------------------------------------------------------

def pope_sample_table(sampled: pl.DataFrame, task: str = "pope") -> pl.DataFrame:
    """The sample rows of a POPE task (``pope``, or a further split such as ``pope_random``): sample ids
    ``<task>-<question_id>``."""
    questions = [unicodedata.normalize("NFC", t) for t in sampled["text"]]  # as rendering draws them
    objects = [m.group(1) if (m := QUESTION_OBJECT.match(t)) else None for t in questions]
    n = len(sampled)
    return pl.DataFrame({
        "sample_id": pl.Series([f"{task}-{q}" for q in sampled["question_id"]], dtype=pl.String),
        "task": pl.Series([task] * n, dtype=pl.String),
        "image_id": pl.Series([image_id_of(name) for name in sampled["image"]], dtype=pl.Int64),
        "image_file": sampled["image"].cast(pl.String),
        "question": pl.Series(questions, dtype=pl.String),
        "label": sampled["label"].cast(pl.String),
        "question_id": sampled["question_id"].cast(pl.Int64),
        "object": pl.Series(objects),  # all null (no question names an object): Arrow's null type
    })


def caption_sample_table(sampled: pl.DataFrame, question: str) -> pl.DataFrame:
    """A caption task has no label, question id or object: those columns hold only nulls (stored with Arrow's
    null type, the question id as a null integer)."""
    n = len(sampled)
    return pl.DataFrame({
        "sample_id": pl.Series([f"caption-{i}" for i in sampled["image_id"]], dtype=pl.String),
        "task": pl.Series(["caption"] * n, dtype=pl.String),
        "image_id": sampled["image_id"].cast(pl.Int64),
        "image_file": sampled["image_file"].cast(pl.String),
        "question": pl.Series([unicodedata.normalize("NFC", question)] * n, dtype=pl.String),
        "label": pl.Series([None] * n, dtype=pl.Null),
        "question_id": pl.Series([None] * n, dtype=pl.Int64),
        "object": pl.Series([None] * n, dtype=pl.Null),
    })


def write_sample(table: pl.DataFrame, parquet: str | Path, id_list: str | Path, id_column: str,
                 metadata: dict) -> None:
    write_table(table, parquet, "sample", metadata=metadata)
    with atomic_output(id_list, "w") as f:
        f.writelines(f"{int(v)}\n" for v in table[id_column])
