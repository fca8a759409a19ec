"""Partial reruns: a config edit reruns exactly the jobs whose own config subtree changed, and what needs them.
An infer job is one model's every task x setting ("unit") in one decoding repeat; inside a rerun job only the units
whose rows can change are generated (the cache of finished units, tested on a real run at the end).

A completed demo run is faked cheaply: every output of the DAG is created empty, then `snakemake --touch` marks
them up to date and records each job's params in .snakemake/metadata, exactly as a real run would. Each edit is
then checked with a dry run's job list (in Snakemake 9.27 `--list-changes params` also lists unchanged outputs).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, merge_configs, run_snakemake

# Aggregations downstream of every inference job (those present in the DAG).
AGGREGATES = {"score_pope", "score_chair", "table1_pope", "table_pope_pyes", "table2_chair", "plot_table1_pope",
              "plot_table2_chair", "report", "report_table", "modality_gap", "score_visibility", "score_transcribe",
              "pope_task_table"}


def all_outputs(workdir: Path, *extra: str) -> list[tuple[str, str]]:
    """(path, rule) of every output the default target needs, from `snakemake --summary` (nothing runs)."""
    proc = run_snakemake(workdir, "--summary", *extra, timeout=300)
    rows = []
    for line in proc.stdout.splitlines()[1:]:
        parts = line.split("\t")
        if len(parts) >= 3 and parts[0]:
            rows.append((parts[0], parts[2]))
    return rows


def fake_completed_run(workdir: Path, *extra: str) -> None:
    for path, _ in all_outputs(workdir, *extra):
        p = workdir / path
        if p.suffix == "" and not p.name.startswith("."):  # directory() outputs (the demo's checkpoint folders)
            p.mkdir(parents=True, exist_ok=True)
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.touch()
    # --forceall: every job is "run" (touched) so each records its params; without it only jobs whose outputs
    # happen to look older than their inputs would get metadata, and edits to the others would go unnoticed
    run_snakemake(workdir, "--touch", "--forceall", *extra, timeout=300)
    assert planned_jobs(workdir, *extra) == Counter(), "a touched run should be complete"


def dry_run(workdir: Path, *extra: str):
    """A dry run listing every planned job (conftest's --quiet=rules hides them; a later --quiet=progress wins)."""
    return run_snakemake(workdir, "-n", "--quiet=progress", *extra, timeout=300)


def planned_jobs(workdir: Path, *extra: str) -> Counter:
    """Rule -> number of jobs a dry run would execute (the `all` target excluded)."""
    proc = dry_run(workdir, *extra)
    counts = Counter(re.findall(r"^rule (\w+):", proc.stdout, re.M))
    counts.pop("all", None)
    return counts


def planned_infer(workdir: Path, *extra: str) -> set[tuple[str, str, str, str]]:
    """(task, model, setting, repeat) of every output of the infer jobs a dry run plans."""
    proc = dry_run(workdir, *extra)
    return set(re.findall(r"results/inference/(\w+)/(\w+)/(\w+)/r(\d+)\.parquet", _outputs_of(proc.stdout, "infer")))


def _outputs_of(dry_run: str, rule: str) -> str:
    blocks = re.split(r"\n(?=rule \w+:)", dry_run)
    return "\n".join(re.search(r"output: ([^\n]*)", b).group(1) for b in blocks
                     if b.startswith(f"rule {rule}:") and "output:" in b)


def write_config(workdir: Path, overrides: dict, name: str = "edited.yaml") -> str:
    base = yaml.safe_load((ROOT / "config.demo.yaml").read_text(encoding="utf-8"))
    base = merge_configs(base, overrides)
    path = workdir / name
    path.write_text(yaml.safe_dump(base, sort_keys=False), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def completed(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("reruns")
    fake_completed_run(workdir)
    return workdir


DEMO = yaml.safe_load((ROOT / "config.demo.yaml").read_text(encoding="utf-8"))
REPEATS = DEMO["inference"]["repeats"]  # every request runs this many times in the demo: one output file per repeat
# units (output files) of one model and repeat: every POPE task and captions in the five settings no task claims,
# transcribe in its own
N_POPE_TASKS = sum(1 for t, c in DEMO["tasks"].items() if (c.get("kind") or t) == "pope")
assert N_POPE_TASKS == 3  # pope, pope_random, pope_popular
JOBS_PER_MODEL = (N_POPE_TASKS + 1) * 5 + 1
N_MODELS = len(DEMO["models"])  # the demo's entries (config.yaml's models, the demo's paths, plus its own)


def test_editing_one_model_reruns_only_its_jobs(completed):
    demo = DEMO
    edited = write_config(completed, {"models": {"llava_1_5": {"batch_size": 2}}})
    jobs = planned_jobs(completed, "--configfile", edited)
    infer = planned_infer(completed, "--configfile", edited)
    assert infer and {m for _, m, _, _ in infer} == {"llava_1_5"}, infer
    assert len(infer) == JOBS_PER_MODEL * REPEATS and {r for *_, r in infer} == {str(r) for r in range(REPEATS)}
    # nothing upstream and no other model reruns; the analyses that load llava's weights do not read batch_size
    assert not {"sample_pope", "sample_coco", "render_variants", "demo_models"} & set(jobs), jobs
    # the batch-invariance check runs llava's batches too: llava's only
    assert jobs["invariance_check"] == 1 and set(jobs) - {"infer", "invariance_check"} <= AGGREGATES, jobs
    assert {"score_pope", "score_chair", "report"} <= set(jobs)
    assert demo["models"]["llava_1_5"]["path"]  # the edit kept the demo checkpoint


def test_editing_dtype_of_qwen_reruns_qwen_and_its_analyses(completed):
    edited = write_config(completed, {"models": {"qwen2_5_vl": {"dtype": "bfloat16"}}})
    infer = planned_infer(completed, "--configfile", edited)
    assert {m for _, m, _, _ in infer} == {"qwen2_5_vl"}
    jobs = planned_jobs(completed, "--configfile", edited)
    assert "attention" not in jobs  # probes llava's CLIP tower, untouched
    assert "modality_gap" in jobs  # loads Qwen itself


def test_adding_a_model_runs_only_new_jobs_and_aggregations(completed):
    edited = write_config(completed, {"models": {"llava_copy": {
        "family": "llava", "path": "resources/demo/models/llava", "revision": "main", "dtype": "float32"}}})
    jobs = planned_jobs(completed, "--configfile", edited)
    infer = planned_infer(completed, "--configfile", edited)
    assert {m for _, m, _, _ in infer} == {"llava_copy"} and len(infer) == JOBS_PER_MODEL * REPEATS
    assert jobs["invariance_check"] == 1 and set(jobs) - {"infer", "invariance_check"} <= AGGREGATES, jobs
    assert "demo_models" not in jobs and "render_variants" not in jobs


def test_the_kv_cache_reruns_only_for_a_static_cache(completed):
    """inference.kv_cache: dynamic is the default, so writing it out reruns nothing; a static cache can change a
    row's float sums, so it reruns every transformers model's jobs (the whole demo) and nothing upstream."""
    assert planned_jobs(completed, "--configfile", write_config(completed, {"inference": {"kv_cache": "dynamic"}})) == Counter()
    edited = write_config(completed, {"inference": {"kv_cache": "static"}})
    infer = planned_infer(completed, "--configfile", edited)
    assert len(infer) == N_MODELS * JOBS_PER_MODEL * REPEATS
    assert not {"sample_pope", "render_variants", "demo_models"} & set(planned_jobs(completed, "--configfile", edited))


# Settings that decide how requests are sent, never what a row says (inference.openai minus base_url).
OPERATIONAL = {"max_retries": 9, "timeout_s": 3.5, "concurrency": 64, "api_key_env": "SOME_OTHER_KEY"}


def test_operational_settings_rerun_nothing(completed):
    for key, value in OPERATIONAL.items():
        edited = write_config(completed, {"inference": {"openai": {key: value}}})
        assert planned_jobs(completed, "--configfile", edited) == Counter(), key
    # on the transformers backend the server's URL cannot change a row either
    edited = write_config(completed, {"inference": {"openai": {"base_url": "http://127.0.0.1:9/v1"}}})
    assert planned_jobs(completed, "--configfile", edited) == Counter()


@pytest.fixture(scope="module")
def completed_openai(tmp_path_factory) -> tuple[Path, dict]:
    """A faked completed run on the openai backend, its server's URL carrying credentials."""
    workdir = tmp_path_factory.mktemp("reruns_openai")
    settings = {"backend": "openai", "openai": {"base_url": "https://alice:key-1@llm.example/v1"}}
    fake_completed_run(workdir, "--configfile", write_config(workdir, {"inference": settings}, name="openai.yaml"))
    return workdir, settings


def test_openai_reruns_only_for_another_server(completed_openai):
    workdir, settings = completed_openai

    def planned(**openai):
        edited = write_config(workdir, {"inference": {**settings, "openai": {**settings["openai"], **openai}}})
        return planned_infer(workdir, "--configfile", edited)

    assert planned(**OPERATIONAL) == set()
    # new credentials reach the same server; they never enter params (nor Snakemake's metadata)
    assert planned(base_url="https://bob:key-2@llm.example/v1") == set()
    assert not any(b"key-1" in p.read_bytes() for p in (workdir / ".snakemake" / "metadata").iterdir())
    # another server answers: every infer job reruns
    assert len(planned(base_url="https://alice:key-1@other.example/v1")) == N_MODELS * JOBS_PER_MODEL * REPEATS
    assert planned_jobs(workdir, "--configfile", write_config(workdir, {"inference": {**settings, "openai": {
        **settings["openai"], "base_url": "https://alice:key-1@other.example/v1"}}}))["infer"] == N_MODELS * REPEATS


def test_raising_repeats_runs_only_the_new_repeat(completed):
    """repeats 2 -> 3 on a completed demo run: one infer job per model, all of repeat 2, and the aggregations that
    read every repeat; the analyses (modality_gap reads repeat 0 only) and everything upstream stay. Lowering to 1
    reruns no infer job, only the aggregations whose input list shrank."""
    assert REPEATS == 2
    raised = write_config(completed, {"inference": {"repeats": 3}}, name="repeats3.yaml")
    infer = planned_infer(completed, "--configfile", raised)
    assert {r for *_, r in infer} == {"2"} and len(infer) == N_MODELS * JOBS_PER_MODEL, infer
    jobs = planned_jobs(completed, "--configfile", raised)
    assert jobs["infer"] == N_MODELS and set(jobs) - {"infer"} <= AGGREGATES - {"modality_gap"}, jobs
    assert {"score_pope", "score_chair", "table1_pope", "table2_chair", "report"} <= set(jobs)
    lowered = write_config(completed, {"inference": {"repeats": 1}}, name="repeats1.yaml")
    jobs = planned_jobs(completed, "--configfile", lowered)
    assert "infer" not in jobs and {"score_pope", "score_chair"} <= set(jobs), jobs
    assert set(jobs) <= AGGREGATES - {"modality_gap"}, jobs


def test_a_rerun_generates_only_the_changed_units(demo_run, tmp_path):
    """On a copy of the finished demo, raise repeats to 3 and edit the instructed setting's prompt, then ask for two
    models' units: their infer jobs rerun (the new repeat's are new), but only repeat 2 and the instructed setting's
    units are generated; every other unit file is the very file of the first run (copied from
    results/inference/.cache, no model loaded for it), and the models not asked for are left as they were."""
    import shutil

    from pii.core.tables import read_metadata

    models = ["llava_1_5", "instructblip"]  # two families, the cheapest of the demo's (a minute of CPU for both)
    work = tmp_path / "run"
    shutil.copytree(demo_run, work, symlinks=True, ignore=shutil.ignore_patterns("benchmarks"))
    before = {p.relative_to(work): p.read_bytes() for p in (work / "results/inference").glob("*/*/*/r*.parquet")}
    edited = write_config(work, {"inference": {"repeats": 3}, "settings": {"prompt_in_image_instructed": {
        "text_prompt": "Answer the question written in the image."}}})
    targets = sorted({p.with_name("r2.parquet").as_posix() for p in before if p.parts[-3] in models}
                     | {p.as_posix() for p in before if p.parts[-3] in models})
    # on a copy only file times and params decide (the inputs' paths are relative to another project folder when
    # the demo run was made by a copy of the project)
    run_snakemake(work, *targets, "--configfile", edited, "--rerun-triggers", "mtime", "params", timeout=1800)
    generated, copied = set(), set()
    for path in (work / "results/inference").glob("*/*/*/r*.parquet"):
        rel = path.relative_to(work)
        setting, repeat = rel.parts[-2], rel.stem
        if rel.parts[-3] not in models:
            assert path.read_bytes() == before[rel], f"{rel} of a model not asked for was written"
            continue
        if repeat == "r2" or setting == "prompt_in_image_instructed":
            generated.add(rel)
            assert read_metadata(path)["repeat"] == int(repeat[1:])
        else:
            copied.add(rel)
            assert path.read_bytes() == before[rel], f"{rel} was generated again"
    instructed_units = (N_POPE_TASKS + 1) * REPEATS  # per model: every task running the study's settings
    per_model = len(before) // N_MODELS
    assert len(generated) == len(models) * (JOBS_PER_MODEL + instructed_units)
    assert len(copied) == len(models) * (per_model - instructed_units)
    instructed = [p for p in generated if p.parts[-2] == "prompt_in_image_instructed" and p.stem == "r0"]
    assert instructed and all((work / p).read_bytes() != before[p] for p in instructed)
    for model in models:
        copies = sum((work / "logs/inference" / model / f"r{r}.log").read_text(encoding="utf-8").count(
            "unchanged, copied from") for r in range(REPEATS))
        assert copies == per_model - instructed_units, model
