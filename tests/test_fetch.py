"""Fetching over HTTP against a real local server (python -m http.server on the loopback): checksums, errors,
the COCO annotations zip, single images, and the data rules of the DAG with every URL pointed at the server."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, copy_project, free_port, planned_rules, run_snakemake, stop_process, wait_for_port

from pii.core.stage import PipelineError
from pii.core.tables import read_table
from pii.data import fetch, sampling

POPE_IMAGE_IDS = [310196, 42, 1001]
CAPTION_IMAGE_IDS = [139, 285, 632, 724]


def make_served_tree(root: Path) -> None:
    """A POPE file, a COCO annotations zip and the images both refer to, as the servers lay them out."""
    rows, qid = [], 1
    for image_id in POPE_IMAGE_IDS:
        for obj, label in (("dog", "yes"), ("apple", "no"), ("person", "yes"), ("car", "no")):
            rows.append({"question_id": qid, "image": f"COCO_val2014_{image_id:012d}.jpg",
                         "text": f"Is there {'an' if obj[0] in 'aeiou' else 'a'} {obj} in the image?", "label": label})
            qid += 1
    (root / "pope.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "width": 8, "height": 8} for i in CAPTION_IMAGE_IDS]
    instances = {"images": images, "annotations": [], "categories": [{"id": 1, "name": "dog"}]}
    captions = {"images": images, "annotations": [{"id": 1, "image_id": 139, "caption": "A dog."}]}
    with zipfile.ZipFile(root / "annotations_trainval2017.zip", "w") as z:
        z.writestr("annotations/instances_val2017.json", json.dumps(instances))
        z.writestr("annotations/captions_val2017.json", json.dumps(captions))
        z.writestr("annotations/person_keypoints_val2017.json", "{}")
    (root / "val2014").mkdir()
    for i in POPE_IMAGE_IDS:
        (root / "val2014" / f"COCO_val2014_{i:012d}.jpg").write_bytes(f"val2014 {i}".encode())
    (root / "val2017").mkdir()
    for i in CAPTION_IMAGE_IDS:
        (root / "val2017" / f"{i:012d}.jpg").write_bytes(f"val2017 {i}".encode())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(base URL, served folder) of a loopback HTTP server, stopped by its pid afterwards."""
    root = tmp_path_factory.mktemp("served")
    make_served_tree(root)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(root),
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc, timeout=15, name="the test HTTP server")
        yield f"http://127.0.0.1:{port}", root
    finally:
        stop_process(proc)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_fetch_pope_verified(server, tmp_path):
    url, root = server
    dest = tmp_path / "pope" / "coco_pope_adversarial.json"
    fetch.fetch_pope(f"{url}/pope.json", sha256(root / "pope.json"), dest)
    assert dest.read_bytes() == (root / "pope.json").read_bytes()
    assert leftovers(dest.parent) == [dest.name]
    assert len(sampling.read_pope(dest)) == 4 * len(POPE_IMAGE_IDS)


def test_fetch_pope_wrong_checksum_keeps_nothing(server, tmp_path):
    url, _ = server
    dest = tmp_path / "pope" / "coco_pope_adversarial.json"
    with pytest.raises(PipelineError) as excinfo:
        fetch.fetch_pope(f"{url}/pope.json", "0" * 64, dest)
    assert "\n" not in str(excinfo.value) and "sha256" in str(excinfo.value)
    assert leftovers(dest.parent) == []


def test_fetch_404_is_clear(server, tmp_path):
    url, _ = server
    dest = tmp_path / "x" / "missing.json"
    started = time.monotonic()
    with pytest.raises(PipelineError) as excinfo:
        fetch.http_get(f"{url}/no-such-file.json", dest)
    assert time.monotonic() - started < 10  # a 404 is not retried
    msg = str(excinfo.value)
    assert "\n" not in msg and "404" in msg and "no-such-file.json" in msg
    assert leftovers(dest.parent) == []


def test_fetch_pope_without_url(tmp_path):
    with pytest.raises(PipelineError) as excinfo:
        fetch.fetch_pope(None, None, tmp_path / "p.json")
    assert "\n" not in str(excinfo.value) and "AoiDragon/POPE" in str(excinfo.value)


def test_fetch_pope_download_off_touches_no_network(server, tmp_path):
    url, _ = server
    dest = tmp_path / "pope" / "coco_pope_adversarial.json"
    with pytest.raises(PipelineError) as excinfo:
        fetch.fetch_pope(f"{url}/pope.json", "a" * 64, dest, download=False)
    msg = str(excinfo.value)
    assert "\n" not in msg and f"{url}/pope.json" in msg and str(dest) in msg and "data.coco.download: true" in msg
    assert not dest.parent.exists()


def test_fetch_annotations_unpacks_zip(server, tmp_path):
    url, _ = server
    out = tmp_path / "coco" / "annotations"
    fetch.fetch_annotations(f"{url}/annotations_trainval2017.zip", True, out)
    assert leftovers(out) == ["captions_val2017.json", "instances_val2017.json"]
    assert [im["id"] for im in json.loads((out / "instances_val2017.json").read_text())["images"]] == \
        CAPTION_IMAGE_IDS


def test_fetch_annotations_offline_says_what_to_do(tmp_path):
    with pytest.raises(PipelineError) as excinfo:
        fetch.fetch_annotations("http://example.invalid/a.zip", False, tmp_path / "annotations")
    msg = str(excinfo.value)
    assert "\n" not in msg and "instances_val2017.json" in msg and str(tmp_path / "annotations") in msg


def test_resolve_image_fetches_one_file(server, tmp_path):
    url, root = server
    user = tmp_path / "coco"
    (user / "val2017").mkdir(parents=True)
    (user / "val2017" / "000000000285.jpg").write_bytes(b"the user's own copy")
    coco = {"root": str(user), "download_root": str(tmp_path / "downloads"), "download": True,
            "image_url": url + "/{split}/{file_name}"}
    got = Path(sampling.resolve_image(coco, "COCO_val2014_000000000042.jpg", 42))
    assert got == tmp_path / "downloads" / "val2014" / "COCO_val2014_000000000042.jpg"
    assert got.read_bytes() == b"val2014 42"
    got = Path(sampling.resolve_image(coco, "000000000139.jpg", 139))
    assert got == tmp_path / "downloads" / "val2017" / "000000000139.jpg" and got.read_bytes() == b"val2017 139"
    # The user's copy is used as it is (the server's differs), and nothing is written into the user's root.
    assert Path(sampling.resolve_image(coco, "000000000285.jpg", 285)) == user / "val2017" / "000000000285.jpg"
    assert sorted(p.name for p in user.rglob("*")) == ["000000000285.jpg", "val2017"]
    assert leftovers(tmp_path / "downloads") == ["val2014", "val2017"]


# --- the data rules of the DAG -------------------------------------------------------------------------------

def write_config(path: Path, url: str | None, pope_sha: str | None, download: bool) -> Path:
    config = {
        "data": {
            "coco": {"root": None, "download": download,
                     "annotations_url": f"{url}/annotations_trainval2017.zip" if url else None,
                     "image_url": f"{url}/{{split}}/{{file_name}}" if url else None},
            "pope": {"file": None,
                     "url": f"{url}/pope.json" if url else None, "sha256": pope_sha},
        },
        "sampling": {"pope": {"n": 6}, "caption": {"n": 3}},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def test_dag_fetches_and_samples(server, tmp_path):
    url, root = server
    config = write_config(tmp_path / "config.yaml", url, sha256(root / "pope.json"), True)
    work = tmp_path / "work"
    run_snakemake(work, "results/data/pope_sample.parquet", "results/data/caption_sample.parquet",
                  configfile=str(ROOT / config), timeout=300)
    pope = read_table(work / "results/data/pope_sample.parquet", "sample")
    caption = read_table(work / "results/data/caption_sample.parquet", "sample")
    assert len(pope) == 6 and (pope["label"] == "yes").sum() == 3 and len(caption) == 3
    for path in list(pope["image_path"]) + list(caption["image_path"]):
        assert (work / path).is_file()
    pope_sha = sha256(root / "pope.json")
    assert (work / f"resources/downloads/pope/{pope_sha[:16]}/pope.json").read_bytes() == \
        (root / "pope.json").read_bytes()
    assert not (work / "resources/downloads/coco/annotations/annotations_trainval2017.zip").exists()
    fetched = {p.name for p in (work / "resources/downloads/coco").rglob("*.jpg")}
    assert fetched == {Path(p).name for p in list(pope["image_path"]) + list(caption["image_path"])}
    assert sorted(p.name for p in (work / "resources").iterdir()) == ["downloads"]
    # Going offline (or to a mirror) changes how missing files are obtained, not what the files hold: nothing
    # may rerun, since a rerun deletes the fetched annotations and the samples every later stage depends on.
    offline = yaml.safe_load(config.read_text())
    offline["data"]["coco"].update(download=False, image_url="http://mirror.invalid/{split}/{file_name}")
    (tmp_path / "offline.yaml").write_text(yaml.safe_dump(offline))
    proc = run_snakemake(work, "-n", "results/data/pope_sample.parquet", "results/data/caption_sample.parquet",
                         configfile=str(tmp_path / "offline.yaml"), timeout=120)
    assert "Nothing to be done" in proc.stdout + proc.stderr, proc.stdout
    # A new release of the pipeline (every file of the workflow newer than the downloads) re-downloads nothing.
    release = copy_project(tmp_path / "release")
    for path in release.rglob("*"):
        os.utime(path)
    proc = run_snakemake(work, "-n", "--quiet=progress", "results/data/pope_sample.parquet",
                         "results/data/caption_sample.parquet", configfile=str(config), timeout=120, project=release)
    planned = planned_rules(proc.stdout)
    assert planned and not any(rule.startswith("fetch_") for rule in planned), proc.stdout


def test_dag_offline_missing_annotations(tmp_path):
    config = write_config(tmp_path / "config.yaml", None, None, False)
    offline = yaml.safe_load(config.read_text())
    offline["data"]["pope"]["url"] = "http://127.0.0.1:9/pope.json"  # never contacted: downloads are off
    config.write_text(yaml.safe_dump(offline))
    work = tmp_path / "work"
    proc = run_snakemake(work, "results/data/caption_sample.parquet", configfile=str(ROOT / config), timeout=300,
                         check=False)
    assert proc.returncode != 0
    log = work / "logs/data/fetch_coco_annotations.log"
    text = proc.stdout + proc.stderr + (log.read_text() if log.exists() else "")
    lines = [line for line in text.splitlines() if "COCO annotations missing:" in line]
    assert lines, text
    assert "annotations_trainval2017.zip" in lines[0] and "resources/downloads/coco/annotations" in lines[0]
    assert "data.coco.root" in lines[0]
