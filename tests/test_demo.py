"""End to end: the whole offline demo DAG (the README's demo command) produces every promised output."""

from __future__ import annotations

import pandas as pd
import yaml
from conftest import ROOT, run_snakemake
from pipeline_io import read_metadata, read_table

SETTINGS = ["baseline", "control", "hybrid", "prompt_in_image", "prompt_in_image_instructed"]
MODELS = ["qwen2_5_vl", "llava_1_5", "instructblip"]


def demo_config():
    with open(ROOT / "config.demo.yaml") as f:
        return yaml.safe_load(f)


def test_every_inference_file_is_complete(demo_run):
    cfg = demo_config()
    sizes = {"pope": cfg["sampling"]["pope"]["n"], "caption": cfg["sampling"]["caption"]["n"]}
    for task, n in sizes.items():
        sample = read_table(demo_run / f"results/data/{task}_sample.parquet", "sample")
        assert len(sample) == n
        for model in MODELS:
            for setting in SETTINGS:
                path = demo_run / f"results/inference/{task}/{model}/{setting}.parquet"
                rows = read_table(path, "inference")
                assert sorted(rows.sample_id) == sorted(sample.sample_id), path
                assert (rows.setting == setting).all() and (rows.model == model).all()
                meta = read_metadata(path)
                assert meta["model_path"] == cfg["models"][model]["path"]
                assert set(meta["versions"]) >= {"torch", "transformers"} and meta["decoding"]["temperature"] == 0.7
                if setting == "prompt_in_image":
                    assert rows.text_prompt.isna().all()
                    assert not any(q in p for q, p in zip(rows.question, rows.prompt, strict=True)), "PiI must not leak the text"
                else:
                    assert rows.text_prompt.notna().all()
                if task == "pope" and setting == "baseline":
                    assert rows.p_yes.between(0, 1).all()


def test_tables_and_report(demo_run):
    for name in ("table1_pope", "table2_chair"):
        md = (demo_run / f"results/tables/{name}.md").read_text()
        for setting in SETTINGS:
            assert f"| {setting}" in md
        csv = pd.read_csv(demo_run / f"results/tables/{name}.csv")
        assert len(csv) >= len(SETTINGS)
    html = (demo_run / "results/report/index.html").read_text()
    assert "Table 1" in html and "Table 2" in html and html.count("data:image/png;base64,") >= 7
    assert "http://" not in html.replace("http://www.w3.org", "")


def test_rerun_has_nothing_to_do(demo_run):
    proc = run_snakemake(demo_run, "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr
