"""Determinism: the same config on the same machine gives the same files; another seed gives other samples.

The session's demo run is compared with ONE second run of a subset in another folder (data, demo COCO, POPE
files, the rendered 'question' images of both tasks, and one model's inference for both tasks in one setting);
scores and tables are recomputed from the demo run's inference files in a copy and compared byte for byte.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import polars as pl
import pytest
from conftest import run_snakemake
from polars.testing import assert_frame_equal

from pii.core.tables import read_metadata, read_table
from pii.data import sampling

# Metadata keys that measure the run rather than describe the data.
VOLATILE_METADATA = {"wall_s_this_run", "fingerprint"}  # the fingerprint covers the model folder's file times
SETTING = "hybrid"  # a setting that shows the model the rendered 'question' image


def _infer_seconds(demo_run: Path, model: str) -> float:
    """Both decoding repeats' inference jobs of the model."""
    return sum(float(pl.read_csv(tsv, separator="\t")["s"][0])
               for tsv in (demo_run / "results/benchmarks/infer" / model).glob("r*.tsv"))


@pytest.fixture(scope="module")
def model(demo_run) -> str:
    """The demo model whose inference jobs (all its tasks and settings, both repeats) ran fastest."""
    models = sorted(p.name for p in (demo_run / "results/inference/pope").iterdir() if p.is_dir())
    return min(models, key=lambda m: _infer_seconds(demo_run, m))


@pytest.fixture(scope="module")
def inference_files(model) -> list[str]:
    """Both decoding repeats of the demo (repeat 1 has its own derived seed)."""
    return [f"results/inference/{task}/{model}/{SETTING}/r{r}.parquet" for task in ("pope", "caption") for r in (0, 1)]


@pytest.fixture(scope="module")
def second_run(tmp_path_factory, inference_files) -> Path:
    work = tmp_path_factory.mktemp("determinism")
    targets = [f"results/data/{t}_sample{suffix}" for t in ("pope", "caption") for suffix in (".parquet", "_ids.txt")]
    targets += [f"results/images/{t}/question.parquet" for t in ("pope", "caption")]
    run_snakemake(work, *targets, *inference_files, timeout=900)
    return work


def assert_same_table(a: Path, b: Path) -> None:
    assert_frame_equal(read_table(a), read_table(b), check_exact=True)
    meta_a, meta_b = read_metadata(a), read_metadata(b)
    for key in VOLATILE_METADATA:
        meta_a.pop(key, None)
        meta_b.pop(key, None)
    assert meta_a == meta_b, f"{a.name}: metadata differs"


def files_under(root: Path, sub: str, pattern: str = "*") -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / sub).rglob(pattern)) if p.is_file()}


def test_demo_inputs_identical(demo_run, second_run):
    """The synthetic COCO (images + annotation JSON) and the POPE files built from it."""
    for sub in ("resources/demo/coco", "results/pope_built"):
        first, second = files_under(demo_run, sub), files_under(second_run, sub)
        assert first and sorted(first) == sorted(second)
        differing = [name for name in first if first[name] != second[name]]
        assert not differing, f"differ between runs: {differing[:5]}"


@pytest.mark.parametrize("task", ["pope", "caption"])
def test_samples_identical(demo_run, second_run, task):
    assert_same_table(demo_run / f"results/data/{task}_sample.parquet",
                      second_run / f"results/data/{task}_sample.parquet")
    ids = f"results/data/{task}_sample_ids.txt"
    assert (demo_run / ids).read_bytes() == (second_run / ids).read_bytes()


@pytest.mark.parametrize("task", ["pope", "caption"])
def test_rendered_images_identical(demo_run, second_run, task):
    manifest = f"results/images/{task}/question.parquet"
    assert_same_table(demo_run / manifest, second_run / manifest)
    first = files_under(demo_run, f"results/images/{task}/question", "*.png")
    second = files_under(second_run, f"results/images/{task}/question", "*.png")
    assert len(first) == len(read_table(demo_run / manifest)) and first.keys() == second.keys()
    assert [n for n in first if first[n] != second[n]] == []


def test_inference_identical(demo_run, second_run, inference_files):
    """Sampled decoding (temperature 0.7) too: seeds are per batch position, so reruns give the same text."""
    for path in inference_files:
        assert_same_table(demo_run / path, second_run / path)
    assert read_metadata(demo_run / inference_files[0])["decoding"]["do_sample"] is True


def test_scores_and_tables_recomputed_identically(demo_run, tmp_path):
    work = tmp_path / "w"
    shutil.copytree(demo_run, work, symlinks=True, ignore=shutil.ignore_patterns("locks"))
    tables = sorted(p.relative_to(demo_run) for p in (demo_run / "results/tables").iterdir() if p.suffix in
                    (".md", ".csv"))
    scores = sorted(p.relative_to(demo_run) for p in (demo_run / "results/scores").glob("*.parquet"))
    assert len(tables) >= 4 and len(scores) >= 4
    before = {p: (work / p).stat().st_mtime_ns for p in tables + scores}
    run_snakemake(work, "--rerun-triggers=mtime", "--forcerun", "score_pope", "score_chair", "score_transcribe", "--",
                  *map(str, tables),
                  timeout=600)
    assert all((work / p).stat().st_mtime_ns != before[p] for p in tables + scores), "nothing was recomputed"
    for path in scores:
        assert_same_table(demo_run / path, work / path)
    for path in tables:
        assert (demo_run / path).read_bytes() == (work / path).read_bytes(), f"{path} differs"


def _digest(df: pl.DataFrame, column: str) -> str:
    return hashlib.sha256(",".join(map(str, df[column])).encode()).hexdigest()


def test_seed_changes_samples(demo_run):
    pope = sampling.read_pope(demo_run / "results/pope_built/coco_pope_adversarial.json")
    instances = demo_run / "resources/demo/coco/annotations/instances_val2017.json"
    pope_0, pope_0b, pope_1 = (sampling.sample_pope(pope, 30, True, s) for s in (0, 0, 1))
    assert _digest(pope_0, "question_id") == _digest(pope_0b, "question_id")
    assert _digest(pope_0, "question_id") != _digest(pope_1, "question_id")
    cap_0, cap_0b, cap_1 = (sampling.sample_caption_images(instances, 10, s) for s in (0, 0, 1))
    assert _digest(cap_0, "image_id") == _digest(cap_0b, "image_id")
    assert _digest(cap_0, "image_id") != _digest(cap_1, "image_id")


def test_seed_edit_reruns_sampling(demo_run, tmp_path):
    """The seed is part of the sampling jobs' own params: editing it reruns them (dry run on a copy, the builders
    upstream held back so that only the params trigger can fire)."""
    work = tmp_path / "w"
    shutil.copytree(demo_run, work, symlinks=True, ignore=shutil.ignore_patterns("locks"))
    args = ["-n", "--rerun-triggers=params", "--allowed-rules", "sample_pope", "sample_caption", "--",
            "results/data/pope_sample.parquet", "results/data/caption_sample.parquet"]
    same = run_snakemake(work, *args, timeout=120)
    assert "Nothing to be done" in same.stdout + same.stderr
    other = run_snakemake(work, "--config=seed=7", *args, timeout=120)
    assert "params have changed since last execution:\n        sample_caption, sample_pope" in other.stdout + other.stderr
