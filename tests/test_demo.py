"""End to end: the whole offline demo DAG (the README's demo command) produces every promised output."""

from __future__ import annotations

import itertools

import polars as pl
import pytest
import yaml
from conftest import ROOT, run_snakemake
from test_report import page_section

from pii.core.tables import read_metadata, read_table

SETTINGS = ["baseline", "control", "hybrid", "prompt_in_image", "prompt_in_image_instructed"]
MODELS = ["qwen2_5_vl", "llava_1_5", "llava_1_5_pad", "instructblip", "idefics3"]


def demo_config():
    with open(ROOT / "config.demo.yaml") as f:
        return yaml.safe_load(f)


def test_every_inference_file_is_complete(demo_run):
    cfg = demo_config()
    sizes = {"pope": cfg["sampling"]["pope"]["n"], "caption": cfg["sampling"]["caption"]["n"]}
    repeats = range(cfg["inference"]["repeats"])
    assert len(repeats) == 2
    for task, n in sizes.items():
        sample = read_table(demo_run / f"results/data/{task}_sample.parquet", "sample")
        assert len(sample) == n
        for model, setting, repeat in itertools.product(MODELS, SETTINGS, repeats):
            path = demo_run / f"results/inference/{task}/{model}/{setting}/r{repeat}.parquet"
            rows = read_table(path, "inference")
            assert sorted(rows["sample_id"]) == sorted(sample["sample_id"]), path
            assert ((rows["setting"] == setting).all() and (rows["model"] == model).all()
                    and (rows["repeat"] == repeat).all())
            meta = read_metadata(path)
            assert meta["model_path"] == cfg["models"][model]["path"] and meta["repeat"] == repeat
            assert set(meta["versions"]) >= {"torch", "transformers"} and meta["decoding"]["temperature"] == 0.7
            if setting == "prompt_in_image":
                assert rows["text_prompt"].is_null().all()
                assert not any(q in p for q, p in zip(rows["question"], rows["prompt"], strict=True)), \
                    "PiI must not leak the text"
            else:
                assert rows["text_prompt"].is_not_null().all()
            if task == "pope" and setting == "baseline":
                assert rows["p_yes"].is_between(0, 1).fill_null(False).all()
    # sampling is on (temperature 0.7): the second repeat writes other captions
    first, second = (read_table(demo_run / f"results/inference/caption/{MODELS[0]}/baseline/r{r}.parquet")
                     for r in repeats)
    assert (first["response"] != second["response"]).any()


def test_tables_and_report(demo_run):
    for name in ("table1_pope", "table2_chair"):
        md = (demo_run / f"results/tables/{name}.md").read_text()
        for setting in SETTINGS:
            assert f"| {setting}" in md
        csv = pl.read_csv(demo_run / f"results/tables/{name}.csv")
        assert len(csv) >= len(SETTINGS)
    pope = read_table(demo_run / "results/scores/pope_metrics.parquet", "pope_metrics")
    assert set(pope["n_repeats"]) == {2} and pope["accuracy_repeat_sd"].is_not_null().all()
    assert "Spread over the 2 decoding repeats" in (demo_run / "results/tables/table1_pope.md").read_text()
    html = (demo_run / "results/report/index.html").read_text()
    assert "Table 1" in html and "Table 2" in html and html.count("data:image/png;base64,") >= 7
    assert "http://" not in html.replace("http://www.w3.org", "")


@pytest.mark.parametrize("split", ["random", "popular"])
def test_further_pope_splits_run_as_tasks(demo_run, split):
    """pope_random / pope_popular (a config entry each): a seeded, balanced sample of that split's built file, every
    model and setting run on it with P(yes), scored into <task>_metrics.parquet, a table in Table 1's layout with an
    empty paper column, and a section of the report page."""
    cfg, task = demo_config(), f"pope_{split}"
    sample = read_table(demo_run / f"results/data/{task}_sample.parquet", "sample")
    assert len(sample) == cfg["sampling"][task]["n"] and set(sample["task"]) == {task}
    assert (sample["label"] == "yes").sum() == (sample["label"] == "no").sum()
    pope_file = demo_run / cfg["tasks"][task]["pope"]["file"]
    questions = {row["question_id"]: row for row in pl.read_ndjson(pope_file).iter_rows(named=True)}
    for row in sample.iter_rows(named=True):  # the very question of that split's file
        source = questions[row["question_id"]]
        assert (row["sample_id"], row["question"], row["label"]) == (f"{task}-{row['question_id']}", source["text"],
                                                                    source["label"])
    ids = (demo_run / f"results/data/{task}_sample_ids.txt").read_text().split()
    assert sorted(map(int, ids)) == sorted(sample["question_id"])
    for model, setting in itertools.product(MODELS, SETTINGS):
        rows = read_table(demo_run / f"results/inference/{task}/{model}/{setting}/r0.parquet", "inference")
        assert sorted(rows["sample_id"]) == sorted(sample["sample_id"]) and set(rows["task"]) == {task}
        assert rows["p_yes"].is_between(0, 1).fill_null(False).all()
    metrics = read_table(demo_run / f"results/scores/{task}_metrics.parquet", "pope_metrics")
    assert {(m, s) for m, s in zip(metrics["model"], metrics["setting"], strict=True)} == set(
        itertools.product(MODELS, SETTINGS)) and set(metrics["task"]) == {task}
    csv = pl.read_csv(demo_run / f"results/tables/{task}.csv")
    assert len(csv) >= len(SETTINGS) and all(csv[c].is_null().all() for c in csv.columns if c.endswith("_paper"))
    assert f"# {task}: POPE" in (demo_run / f"results/tables/{task}.md").read_text()
    assert f"{task} · POPE in Table 1" in (demo_run / "results/report/index.html").read_text()


def test_the_batch_invariance_check_of_every_model(demo_run):
    """inference.invariance_check: N POPE requests of the baseline setting per model, greedy, in batches and one at
    a time. Its P(yes) is the infer job's own (T = 1 logits do not depend on the decoding values), the demo's
    float32 CPU models answer alike both ways (measured: 8 of 8, |dP(yes)| <= 2.4e-7), and the report shows each
    model's counts."""
    cfg = demo_config()
    n = cfg["inference"]["invariance_check"]
    section = page_section((demo_run / "results/report/index.html").read_text(), "Do answers depend on the batch?")
    table_rows = section.split("<tr><td class='label'>")[1:]  # one per model: N of N identical
    assert len(table_rows) == len(MODELS)
    assert all(f"<span class='v'>{n}</span> <span class='ci'>(100%)</span>" in r for r in table_rows)
    first_n = read_table(demo_run / "results/data/pope_sample.parquet", "sample")["sample_id"].head(n).to_list()
    for model in MODELS:
        rows = read_table(demo_run / f"results/inference/invariance/{model}.parquet", "invariance")
        infer_rows = read_table(demo_run / f"results/inference/pope/{model}/baseline/r0.parquet", "inference")
        assert rows["sample_id"].to_list() == first_n, model
        assert (rows["backend"] == "transformers").all() and (rows["batch_size"] == cfg["inference"]["batch_size"]).all()
        assert rows["identical"].to_list() == (rows["response_batched"] == rows["response_single"]).to_list()
        assert rows["identical"].all(), model
        diff = (rows["p_yes_batched"] - rows["p_yes_single"]).abs()
        assert (rows["abs_diff_p_yes"] - diff).abs().max() < 1e-12 and rows["abs_diff_p_yes"].max() < 1e-5, model
        p_yes = dict(zip(infer_rows["sample_id"], infer_rows["p_yes"], strict=True))
        assert max(abs(p - p_yes[s]) for s, p in zip(rows["sample_id"], rows["p_yes_single"], strict=True)) < 1e-5


def test_rerun_has_nothing_to_do(demo_run):
    proc = run_snakemake(demo_run, "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_what_each_model_saw_of_the_strip(demo_run):
    """Every strip row records how much of the strip the model's processor passed on, recomputed here from the
    manifest through the model's processor (the probe every family uses, and the per-processor rule to within a
    canvas row): LLaVA's centre crop cuts some strips (portrait images), the padded LLaVA, Qwen2.5-VL, InstructBLIP
    and the tiling Idefics3 see every strip; the original image has none. The scores split by it, the analyses draw
    only pairs whose strip the CLIP tower sees, and the transcription task is scored."""
    from snakemake.utils import update_config

    from pii.inference.processor_view import probed_view, strip_view_of_row
    from pii.inference.vlm import load_image_processor

    with open(ROOT / "config.yaml") as f:
        cfg = yaml.safe_load(f)
    update_config(cfg, demo_config())  # the merged config, as the workflow sees it
    manifest = {r["sample_id"]: r for r in read_table(demo_run / "results/images/pope/question.parquet",
                                                      "manifest").iter_rows(named=True)}
    seen = {}
    def probed(processor, r):
        box = tuple(r[k] for k in ("strip_x0", "strip_y0", "strip_x1", "strip_y1"))
        return probed_view(processor, r["width"], r["height"], box, r["font_size"])

    for model in ("qwen2_5_vl", "llava_1_5", "llava_1_5_pad", "instructblip", "idefics3"):
        entry = cfg["models"][model]
        processor = load_image_processor(model, {**entry, "path": str(demo_run / entry["path"])})
        rows = read_table(demo_run / f"results/inference/pope/{model}/hybrid/r0.parquet", "inference")
        views = [probed(processor, manifest[s]) for s in rows["sample_id"]]
        assert rows["strip_visible_fraction"].to_list() == pytest.approx([v.strip_visible_fraction for v in views])
        assert rows["photo_visible_fraction"].to_list() == pytest.approx([v.photo_visible_fraction for v in views])
        assert rows["text_px_in_model"].to_list() == pytest.approx([v.text_px_in_model for v in views])
        assert rows["text_legible"].to_list() == [v.text_px_in_model >= cfg["inference"]["legible_text_px"]
                                                  for v in views]
        if model != "idefics3":  # the rules know no tiling processor
            for v, s in zip(views, rows["sample_id"], strict=True):
                r, strip_rows = strip_view_of_row(processor, manifest[s]), manifest[s]["strip_y1"] - manifest[s]["strip_y0"]
                assert abs(v.strip_visible_fraction - r.strip_visible_fraction) * v.scale_y * strip_rows <= 1.0, model
        seen[model] = rows["strip_visible_fraction"]
        baseline = read_table(demo_run / f"results/inference/pope/{model}/baseline/r0.parquet", "inference")
        assert baseline["strip_visible_fraction"].is_null().all() and baseline["text_legible"].is_null().all()
        assert baseline["photo_visible_fraction"].is_not_null().all()
    assert (seen["llava_1_5"] < 1).any() and (seen["llava_1_5"] == 1).any()
    assert (seen["llava_1_5_pad"] == 1).all() and (seen["qwen2_5_vl"] == 1).all() and (seen["instructblip"] == 1).all()
    assert (seen["idefics3"] == 1).all()
    vis = read_table(demo_run / "results/scores/visibility_metrics.parquet", "visibility_metrics")
    assert {"all", "whole", "none"} <= set(vis.filter(pl.col("model") == "llava_1_5")["visibility"])
    assert set(vis.filter(pl.col("model") == "llava_1_5_pad", pl.col("setting") == "hybrid")["visibility"]) == \
        {"all", "whole"}
    attention = read_table(demo_run / "results/analysis/attention/attention.parquet", "attention")
    assert (attention["n_text_patches"] > 0).all()
    transcribe = read_table(demo_run / "results/scores/transcribe_metrics.parquet", "transcribe_metrics")
    assert set(transcribe["model"]) == set(MODELS)
    assert transcribe.filter(pl.col("visibility") == "all")["cer"].is_not_null().all()
