"""Report: the self-contained summary page, read from the metrics tables as data, and the `snakemake --report`
wiring."""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import report  # the rule script
import yaml
from conftest import ROOT, copy_project, run_snakemake
from PIL import Image

from pii.core.stage import PipelineError
from pii.core.tables import METADATA_KEY, config_hash, load_table_schema
from pii.report.sections import (
    break_underscores,
    caption_html,
    inline_markup,
    model_labels,
    question_settings,
    read_paper,
)

PAPER_FILE = ROOT / "workflow" / "data" / "paper_numbers.yaml"
ARROW_TYPES = {"integer": pa.int64(), "number": pa.float64(), "string": pa.string(), "boolean": pa.bool_()}


def write_parquet(rows: list[dict], path: Path, schema_name: str | None = None, metadata: dict | None = None) -> str:
    """Rows as a Parquet file with the pipeline's metadata; with a schema, every column it declares (a number
    not given is NaN, a count 0), typed as it declares."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if schema_name:
        props = load_table_schema(schema_name)["properties"]
        fields, full = [], []
        for name, spec in props.items():
            kinds = [spec["type"]] if isinstance(spec["type"], str) else [t for t in spec["type"] if t != "null"]
            fields.append(pa.field(name, ARROW_TYPES[kinds[0]]))
        for row in rows:
            full.append({f.name: row.get(f.name, math.nan if f.type == pa.float64() else 0) for f in fields})
        table = pa.Table.from_pylist(full, schema=pa.schema(fields))
    else:
        table = pa.Table.from_pylist(rows)
    table = table.replace_schema_metadata({METADATA_KEY: json.dumps(metadata or {}).encode()})
    pq.write_table(table, path)
    return str(path)


def metric(prefix: str, value: float, low: float, high: float, delta: float = math.nan, p: float = math.nan) -> dict:
    return {prefix: value, f"{prefix}_ci_low": low, f"{prefix}_ci_high": high, f"{prefix}_delta": delta,
            f"{prefix}_p_value": p}


def pope_row(model: str, setting: str, acc: float, f1: float, delta: float = math.nan, p: float = math.nan,
             **extra) -> dict:
    row = {"task": "pope", "model": model, "setting": setting, "baseline": "baseline", "n": 100, "n_repeats": 1,
           "n_unknown": 2, "n_p_yes": 100, "n_images": 40}
    row |= metric("accuracy", acc, acc - 0.03, acc + 0.03, delta, p)
    row |= metric("f1", f1, f1 - 0.03, f1 + 0.03, delta, p)
    row |= metric("yes_ratio", 0.5, 0.45, 0.55)
    row |= metric("strict_accuracy", acc - 0.01, acc - 0.04, acc + 0.02)
    row |= metric("p_yes_auroc", 0.8, 0.7, 0.9, delta, p) | metric("p_yes_brier", 0.2, 0.15, 0.25)
    row |= metric("p_yes_ece", 0.05, 0.01, 0.1) | metric("p_yes_disagreement", 0.1, 0.05, 0.15)
    return row | extra


def chair_row(model: str, setting: str, chair_s: float, delta: float = math.nan, p: float = math.nan) -> dict:
    row = {"task": "caption", "model": model, "setting": setting, "baseline": "baseline", "n": 50, "n_repeats": 1,
           "n_images": 50}
    row |= metric("chair_s", chair_s, chair_s - 0.05, chair_s + 0.05, delta, p)
    return row | metric("chair_i", 0.1, 0.08, 0.12)


def write_csv(rows: list[dict], path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def png(path: Path, color=(200, 30, 30)) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 20), color).save(path)
    return str(path)


SCORING_META = {"scoring": {"bootstrap_resamples": 100, "confidence": 0.95}, "seed": 0}


def report_params(cfg: dict, models: list[str], settings: list[str]) -> SimpleNamespace:
    """The report rule's params for a config (seed, models, settings, decoding) and its models and settings."""
    return SimpleNamespace(seed=cfg["seed"], models=models, settings=settings, model_entries=cfg["models"],
                           setting_entries=cfg.get("settings", {}), decoding=cfg.get("decoding", {}),
                           config_digest=config_hash(cfg), pope_tasks=["pope"])


def fake_inputs(tmp: Path) -> SimpleNamespace:
    """A small run: two models (the paper's Qwen2.5-VL and LLaVA-1.5, matched by family), two settings."""
    scores = tmp / "scores"
    pope = [pope_row("qwen", "baseline", 0.81, 0.77), pope_row("qwen", "prompt_in_image", 0.84, 0.81, 0.03, 0.01),
            pope_row("llava", "baseline", 0.70, 0.70),
            pope_row("llava", "prompt_in_image", 0.69, 0.69, -0.01, 0.0004, n_unknown=9)]
    chair = [chair_row("qwen", "baseline", 0.301), chair_row("qwen", "prompt_in_image", 0.25, -0.051, 0.2),
             chair_row("llava", "baseline", 0.4), chair_row("llava", "prompt_in_image", 0.45, 0.05, 0.5)]
    metrics = [write_parquet(pope, scores / "pope_metrics.parquet", "pope_metrics",
                             {**SCORING_META, "p_yes_temperature": 1.0}),
               write_parquet(chair, scores / "chair_metrics.parquet", "chair_metrics", SCORING_META)]
    tables = tmp / "tables"
    # the paper's numbers as the table rules write them beside each table: <model>:<metric>_paper, one row per setting
    csvs = [write_csv([{"setting": "baseline", "qwen:accuracy_paper": 80.2, "qwen:f1_paper": 0.76,
                        "llava:accuracy_paper": 84.0, "llava:f1_paper": ""},
                       {"setting": "prompt_in_image", "qwen:accuracy_paper": 84.3, "qwen:f1_paper": 0.82,
                        "llava:accuracy_paper": "", "llava:f1_paper": ""}], tables / "table1_pope.csv"),
            write_csv([{"setting": "baseline", "model": "qwen"}], tables / "pope_pyes.csv"),
            write_csv([{"setting": "baseline", "qwen:chair_s_paper": 32.3},
                       {"setting": "prompt_in_image", "qwen:chair_s_paper": 24.7}], tables / "table2_chair.csv")]
    samples = [write_parquet([{"sample_id": f"s{i}"} for i in range(n)], tmp / f"{task}_sample.parquet")
               for task, n in (("pope", 6), ("caption", 3))]
    inference = []
    for model, commit in (("qwen", "abc123"), ("llava", None)):
        inference.append(write_parquet([{"response": "yes"}], tmp / "inference" / "pope" / model / "baseline.parquet",
                                       metadata={"model": model, "model_id": f"org/{model}", "revision": "main",
                                                 "commit_hash": commit, "dtype": "float32", "device": "cpu",
                                                 "backend": "transformers", "python": "3.11.7",
                                                 "versions": {"torch": "2.13.0", "transformers": "5.23.0"}}))
    figures = [png(tmp / "fig" / "gap.png"), png(tmp / "fig" / "attention_maps.png", (20, 20, 200))]
    cfg = {"seed": 0, "models": {"qwen": {"family": "qwen2_5_vl", "path": "org/qwen", "revision": "main"},
                                 "llava": {"family": "llava", "path": "org/llava", "revision": "main"}},
           "settings": {"baseline": {"image": "original"}, "prompt_in_image": {"image": "question"}},
           "decoding": {"temperature": 0.7}}
    return SimpleNamespace(
        input=SimpleNamespace(metrics=metrics, table_csvs=csvs, paper=str(PAPER_FILE),
                              contact_sheets=[png(tmp / "contact_sheet_pope.png", (0, 150, 0))],
                              samples=samples, inference=inference, figures=figures),
        output=SimpleNamespace(html=str(tmp / "out" / "index.html"), md=str(tmp / "out" / "summary.md")),
        params=report_params(cfg, ["qwen", "llava"], ["baseline", "prompt_in_image"]),
        log=[])


def visibility_row(task: str, model: str, setting: str, visibility: str, n: int, share: float, value: float) -> dict:
    """A visibility_metrics row: POPE accuracy (and yes-ratio) or CHAIRs (and CHAIRi) of one group."""
    row = {"task": task, "model": model, "setting": setting, "visibility": visibility, "n": n, "share": share,
           "n_images": max(1, n // 3)}
    first, second = ("accuracy", "yes_ratio") if task == "pope" else ("chair_s", "chair_i")
    row |= {first: value, f"{first}_ci_low": value - 0.05, f"{first}_ci_high": value + 0.05}
    return row | {second: 0.5, f"{second}_ci_low": 0.4, f"{second}_ci_high": 0.6}


def transcribe_row(model: str, visibility: str, n: int, exact: float, cer: float) -> dict:
    return {"task": "transcribe", "model": model, "setting": "transcribe", "visibility": visibility, "n": n,
            "n_images": n, "n_repeats": 1, "exact_match": exact, "exact_match_ci_low": max(0.0, exact - 0.1),
            "exact_match_ci_high": min(1.0, exact + 0.1), "cer": cer, "cer_ci_low": cer / 2, "cer_ci_high": cer * 1.5}


STRIP_META = {"interval": "percentile bootstrap over images", "confidence": 0.9, "resamples": 100}


def add_strip_tables(smk: SimpleNamespace, tmp: Path, transcribe: bool = True) -> SimpleNamespace:
    """The metrics of score_visibility (and score_transcribe) added to a fake run: Qwen sees every strip, LLaVA's
    crop cuts part or all of it off for some images; the baseline (no strip) falls in unknown."""
    scores = tmp / "scores"
    rows = [visibility_row("pope", "qwen", "baseline", "all", 100, 1.0, 0.81),
            visibility_row("pope", "qwen", "baseline", "unknown", 100, 1.0, 0.81),
            visibility_row("pope", "qwen", "prompt_in_image", "all", 100, 1.0, 0.84),
            visibility_row("pope", "qwen", "prompt_in_image", "whole", 100, 1.0, 0.84),
            visibility_row("pope", "llava", "baseline", "all", 100, 1.0, 0.70),
            visibility_row("pope", "llava", "baseline", "unknown", 100, 1.0, 0.70),
            visibility_row("pope", "llava", "prompt_in_image", "all", 100, 1.0, 0.69),
            visibility_row("pope", "llava", "prompt_in_image", "whole", 60, 0.6, 0.733),
            visibility_row("pope", "llava", "prompt_in_image", "part", 10, 0.1, 0.6),
            visibility_row("pope", "llava", "prompt_in_image", "none", 30, 0.3, 0.642),
            visibility_row("caption", "qwen", "prompt_in_image", "all", 50, 1.0, 0.25),
            visibility_row("caption", "qwen", "prompt_in_image", "whole", 50, 1.0, 0.25),
            visibility_row("caption", "llava", "prompt_in_image", "all", 50, 1.0, 0.45),
            visibility_row("caption", "llava", "prompt_in_image", "whole", 20, 0.4, 0.35),
            visibility_row("caption", "llava", "prompt_in_image", "none", 30, 0.6, 0.517)]
    smk.input.metrics.append(write_parquet(rows, scores / "visibility_metrics.parquet", "visibility_metrics",
                                           STRIP_META))
    smk.input.table_csvs.append(write_csv([{"task": "pope", "visibility": "all"}],
                                          tmp / "tables" / "strip_visibility.csv"))
    if transcribe:
        rows = [transcribe_row("qwen", "all", 60, 0.9, 0.05), transcribe_row("qwen", "whole", 60, 0.9, 0.05),
                transcribe_row("llava", "all", 60, 0.4, 0.5), transcribe_row("llava", "whole", 36, 0.667, 0.2),
                transcribe_row("llava", "none", 24, 0.0, 0.95)]
        smk.input.metrics.append(write_parquet(rows, scores / "transcribe_metrics.parquet", "transcribe_metrics",
                                               STRIP_META))
        smk.input.table_csvs.append(write_csv([{"model": "qwen"}], tmp / "tables" / "transcribe.csv"))
    return smk


VISIBILITY_TITLE, TRANSCRIBE_TITLE = "What each model saw of the question", "Can the model read the strip?"


def page_section(page: str, title: str) -> str:
    """A whole <section> of the page, found by its heading."""
    start = page.rindex("<section", 0, page.index(f"<h2>{title}</h2>"))
    return page[start:page.index("</section>", start)]


def section(page: str, title: str) -> str:
    """The part of the page from a table's heading to the next heading of that level."""
    start = page.index(f">{title}</h3>")
    end = page.find("<h3", start)
    return page[start:end if end > 0 else len(page)]


def test_page_is_self_contained_and_complete(tmp_path):
    smk = fake_inputs(tmp_path)
    report.main(smk)
    page = Path(smk.output.html).read_text()
    # every image embedded, nothing fetched from elsewhere
    srcs = re.findall(r"src='([^']*)'", page)
    assert len(srcs) == 3 and all(s.startswith("data:image/png;base64,") for s in srcs)
    Image.open(io.BytesIO(base64.b64decode(srcs[0].split(",", 1)[1]))).verify()
    assert "http://" not in page and "https://" not in page
    # the three tables, with the paper's columns marked and their numbers
    assert "Table 1 · POPE adversarial" in page and "Table 2 · CHAIR" in page and "P(yes) at the first" in page
    assert "<td class='paper'>84.3</td>" in page and "<td class='paper'>32.3</td>" in page
    assert "<table class='plain'>" in page  # the models
    # what was run: config hash, checkpoint revision, sample sizes, library versions from the metadata
    digest = smk.params.config_digest
    assert digest in page and "abc123" in page
    assert "torch 2.13.0" in page and "transformers 5.23.0" in page
    assert ">6</span>" in page and ">3</span>" in page
    # analysis figures in the documented order, with the shipped caption text
    assert page.index("CLIP attention") < page.index("Modality gap")
    assert "CLS-to-patch" in page
    md = Path(smk.output.md).read_text()
    assert f"`{digest}`" in md and "| 84.0 [81.0, 87.0] · Δ +3.0, p=0.010 | 84.3 |" in md and "abc123" in md


def test_tables_come_from_the_metrics_and_the_paper_numbers(tmp_path):
    """One compact table per model (settings as rows, metrics as columns, the paper's number beside ours), the
    model named by the paper's label; each value with its interval and its change to the baseline, emphasised only
    where p < 0.05."""
    smk = fake_inputs(tmp_path)
    report.main(smk)
    page = Path(smk.output.html).read_text()
    table1 = section(page, "Table 1 · POPE adversarial")
    assert table1.count("<table class='results'>") == 4  # (Acc/F1/yes-ratio, strict) x 2 models
    qwen, llava = table1.split("<h4>")[1:3]
    assert qwen.startswith("Qwen2.5-VL</h4>") and llava.startswith("LLaVA-1.5</h4>")
    assert "<th>Acc (%)</th>" in qwen and "<th class='paper'>paper</th>" in qwen
    assert "<td class='paper'>84.3</td>" in qwen and "<td class='paper'>84.0</td>" not in qwen  # LLaVA's
    assert "<td class='paper'>84.0</td>" in llava and "<td class='paper'>—</td>" in llava
    # the setting's row names the paper's row, and may break after its underscores
    assert "prompt_<wbr>in_<wbr>image (Prompt-in-Image)" in qwen
    assert ("<span class='v'>84.0</span> <span class='ci'>[81.0, 87.0]</span><br>"
            "<span class='delta sig'>Δ +3.0 · p=0.010</span>") in qwen
    assert "<span class='delta sig'>Δ −1.0 · p&lt;0.001</span>" in llava  # a tiny p, a real minus sign
    # narrow tables (strict parser: accuracy and unknown answers) tile side by side, without deltas
    strict = table1.split("<div class='model-tables tiles'>")[1]
    assert strict.count("<th>unknown / n</th>") == 2 and "9 / 100" in strict.split("<h4>")[2]
    assert "Δ" not in strict
    table2 = section(page, "Table 2 · CHAIR on detailed captions")
    assert "<span class='delta'>Δ −5.1 · p=0.200</span>" in table2 and "<td class='paper'>24.7</td>" in table2
    pyes = section(page, "POPE · P(yes) at the first token")
    assert "<table class='results single'>" in pyes and "<span class='v'>0.800</span>" in pyes
    assert "100 / 100" in pyes and pyes.count("Qwen2.5-VL") == 1  # the model named on its first row only
    assert "P(yes) is taken at temperature 1.0" in pyes  # from the metrics file's metadata
    # one repeat: McNemar's p, no spread table
    assert "p: exact McNemar test for accuracy" in table1 and "Spread over" not in page
    md = Path(smk.output.md).read_text()
    assert "| Setting | Qwen2.5-VL Acc (%) | paper | Qwen2.5-VL F1 | paper |" in md
    assert "| Setting | Qwen2.5-VL CHAIRs (%) | paper | Qwen2.5-VL CHAIRi (%) | paper |" in md


def test_repeats_show_their_spread(tmp_path):
    smk = fake_inputs(tmp_path)
    rows = pq.read_table(smk.input.metrics[0]).to_pylist()
    for r in rows:
        r |= {"n_repeats": 3, "accuracy_repeat_sd": 0.02, "accuracy_repeat_min": 0.79, "accuracy_repeat_max": 0.83}
    write_parquet(rows, Path(smk.input.metrics[0]), "pope_metrics", SCORING_META)
    report.main(smk)
    table1 = section(Path(smk.output.html).read_text(), "Table 1 · POPE adversarial")
    assert "Spread over the 3 decoding repeats" in table1 and "<td class='num'>2.0 (79.0–83.0)</td>" in table1
    assert "p: paired image-level bootstrap for every metric" in table1  # McNemar needs one answer per question


def test_strip_sections_show_the_visibility_and_transcription_metrics(tmp_path):
    """What each model saw of the strip (question settings only: the baseline's unknown rows stay out) and how well
    it reads it, with the numbers of visibility_metrics and transcribe_metrics."""
    smk = add_strip_tables(fake_inputs(tmp_path), tmp_path)
    report.main(smk)
    page = Path(smk.output.html).read_text()
    assert page.index(">Table 2 · CHAIR") < page.index(VISIBILITY_TITLE) < page.index(TRANSCRIBE_TITLE)
    assert "<a href='#strip_visibility'>" in page and "<a href='#transcribe'>" in page
    seen = page_section(page, VISIBILITY_TITLE)
    assert "centre crop" in seen  # the caption file
    counts = seen.split("<table")[1]
    assert [h in counts for h in ("<th>whole</th>", "<th>part</th>", "<th>none</th>", "<th>unknown</th>")] == [
        True, True, True, False]
    llava = counts.split("LLaVA-1.5")[1]
    assert ("<span class='v'>60</span> <span class='ci'>(60%)</span>" in llava
            and "<span class='v'>30</span> <span class='ci'>(30%)</span>" in llava)
    assert "Captions" in llava and "<span class='ci'>(40%)</span>" in llava
    accuracy = seen.split("POPE accuracy (%) by how much")[1].split("CHAIRs (%) by how much")[0]
    assert "<span class='v'>73.3</span> <span class='ci'>[68.3, 78.3]</span>" in accuracy  # llava, whole
    assert "<span class='v'>64.2</span>" in accuracy and "<span class='v'>69.0</span>" in accuracy  # none, all
    assert "baseline" not in accuracy and "Δ" not in seen and "<span class='v'>81.0</span>" not in seen
    chair = seen.split("CHAIRs (%) by how much")[1]
    assert "<span class='v'>51.7</span> <span class='ci'>[46.7, 56.7]</span>" in chair
    assert "<td class='num'>—</td>" in chair.split("LLaVA-1.5")[0]  # Qwen has no request without the strip
    assert "90% percentile bootstrap interval" in seen  # the level from the table's metadata
    read = page_section(page, TRANSCRIBE_TITLE)
    assert "Exact match" in read and "character error" in read  # the caption file
    llava = read.split("<table")[1].split("LLaVA-1.5")[1]
    assert "<span class='v'>40.0</span> <span class='ci'>[30.0, 50.0]</span>" in llava  # exact match, all
    assert "<span class='v'>95.0</span> <span class='ci'>[47.5, 142.5]</span>" in llava  # CER, none
    assert "<span class='v'>24</span> <span class='ci'>(40%)</span>" in llava
    md = Path(smk.output.md).read_text()
    assert f"## {VISIBILITY_TITLE}" in md and f"## {TRANSCRIBE_TITLE}" in md
    assert "| LLaVA-1.5 | transcribe |" not in md  # one transcribe setting: no setting column
    assert "| LLaVA-1.5 | all | 60 | 40.0 [30.0, 50.0] | 50.0 [25.0, 75.0] |" in md
    assert "|  | none | 24 (40%) | 0.0 [0.0, 10.0] | 95.0 [47.5, 142.5] |" in md


def test_strip_sections_read_their_parquet_files(tmp_path):
    """A value changed in the metrics tables is the value on the page."""
    smk = add_strip_tables(fake_inputs(tmp_path), tmp_path)
    for name, column, visibility in (("visibility_metrics", "accuracy", "none"),
                                     ("transcribe_metrics", "cer", "all")):
        path = next(p for p in smk.input.metrics if Path(p).stem == name)
        table = pq.read_table(path)
        rows = table.to_pylist()
        for row in rows:
            if row["model"] == "llava" and row["visibility"] == visibility:
                row[column], row[f"{column}_ci_low"], row[f"{column}_ci_high"] = 0.12345, 0.11111, 0.13999
        pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path)
    report.main(smk)
    page = Path(smk.output.html).read_text()
    cell = "<span class='v'>12.3</span> <span class='ci'>[11.1, 14.0]</span>"
    accuracy = page_section(page, VISIBILITY_TITLE).split("POPE accuracy (%) by how much")[1]
    assert cell in accuracy.split("CHAIRs (%)")[0].split("LLaVA-1.5")[1]
    assert cell in page_section(page, TRANSCRIBE_TITLE).split("<table")[1].split("LLaVA-1.5")[1]
    assert "<span class='v'>64.2</span>" not in page and "<span class='v'>50.0</span>" not in page


def test_strip_sections_absent_without_their_tables(tmp_path):
    """Without the transcribe task (no transcribe_metrics among the inputs) its section is not on the page; a run
    without the visibility table (older) shows neither."""
    smk = add_strip_tables(fake_inputs(tmp_path / "a"), tmp_path / "a", transcribe=False)
    report.main(smk)
    page = Path(smk.output.html).read_text()
    assert VISIBILITY_TITLE in page and TRANSCRIBE_TITLE not in page and "#transcribe'" not in page
    assert TRANSCRIBE_TITLE not in Path(smk.output.md).read_text()
    smk = fake_inputs(tmp_path / "b")
    report.main(smk)
    page, md = Path(smk.output.html).read_text(), Path(smk.output.md).read_text()
    assert VISIBILITY_TITLE not in page + md and TRANSCRIBE_TITLE not in page + md


def test_strip_tables_are_checked_against_their_schemas(tmp_path):
    smk = add_strip_tables(fake_inputs(tmp_path), tmp_path)
    for name, column in (("visibility_metrics", "share"), ("transcribe_metrics", "cer_ci_high")):
        path = next(p for p in smk.input.metrics if Path(p).stem == name)
        table = pq.read_table(path)
        pq.write_table(table.drop_columns([column]), path)
        with pytest.raises(PipelineError, match=f"{name}.parquet.*{column}"):
            report.main(smk)
        pq.write_table(table, path)
    assert not Path(smk.output.html).exists()


def test_markup_is_escaped_and_branches_resolve():
    assert (inline_markup("<b>x</b> ``a<b`` **y**")
            == "&lt;b&gt;x&lt;/b&gt; <code>a&lt;b</code> <strong>y</strong>")
    # The captions are Jinja2 templates, rendered with the wildcards as `snakemake --report` renders them.
    table1 = caption_html("tables.rst", {"table": "table1_pope"})
    pyes = caption_html("tables.rst", {"table": "pope_pyes"})
    table2 = caption_html("tables.rst", {"table": "table2_chair"})
    assert "Table 1: POPE" in table1 and "AUROC" not in table1 and "CHAIRs" not in table1
    assert "AUROC" in pyes and "Table 1" not in pyes
    assert "CHAIRs" in table2 and "POPE" not in table2
    visibility = caption_html("tables.rst", {"table": "strip_visibility"})
    transcribe = caption_html("tables.rst", {"table": "transcribe"})
    assert "strip-visibility group" in visibility and "Table 2" not in visibility
    assert "transcribe task" in transcribe and "Table 2" not in transcribe
    assert "{%" not in table1 + pyes + table2 + visibility + transcribe


def test_page_escapes_what_it_shows(tmp_path):
    """The template escapes every value: a model key or a checkpoint path with markup in it shows as text."""
    smk = fake_inputs(tmp_path)
    smk.params.model_entries["qwen"]["family"] = "<script>alert(1)</script>"
    report.main(smk)
    page = Path(smk.output.html).read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_metrics_table_is_checked_against_its_schema(tmp_path):
    smk = fake_inputs(tmp_path)
    table = pq.read_table(smk.input.metrics[0])
    pq.write_table(table.drop_columns(["accuracy_ci_low"]), smk.input.metrics[0])
    with pytest.raises(PipelineError, match="accuracy_ci_low"):
        report.main(smk)
    assert not Path(smk.output.html).exists()


def test_missing_figure_names_the_file(tmp_path):
    smk = fake_inputs(tmp_path)
    smk.input.figures = [str(tmp_path / "nope.png")]
    with pytest.raises(PipelineError, match="nope.png"):
        report.main(smk)
    assert not Path(smk.output.html).exists()  # no half-written page


def demo_report_inputs(run: Path, out: Path) -> SimpleNamespace:
    """The report's inputs from a finished demo run, as the report rule lists them (the DAG test below checks that
    list), with the run's own models and settings (in the metrics table's order) and the demo config's entries."""
    r = run / "results"
    metrics = [r / "scores" / "pope_metrics.parquet", r / "scores" / "chair_metrics.parquet"]
    # the strip sections' tables, where the run wrote them
    metrics += [p for p in (r / "scores" / f"{n}_metrics.parquet" for n in ("visibility", "transcribe")) if p.exists()]
    rows = pq.read_table(metrics[0], columns=["model", "setting"]).to_pylist()
    models, settings = list(dict.fromkeys(x["model"] for x in rows)), list(dict.fromkeys(x["setting"] for x in rows))
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    demo = yaml.safe_load((ROOT / "config.demo.yaml").read_text())
    entries = config["models"] | demo.get("models", {})
    setting_entries = config["settings"] | (demo.get("settings") or {})
    cfg = {"seed": demo.get("seed", config["seed"]), "models": {m: entries.get(m, {}) for m in models},
           "settings": {s: setting_entries.get(s, {}) for s in settings}, "decoding": config["decoding"]}
    names = ["table1_pope", "pope_pyes", "table2_chair"]
    return SimpleNamespace(
        input=SimpleNamespace(metrics=[str(p) for p in metrics],
                              table_csvs=[str(r / "report" / "tables" / f"{n}.csv") for n in names],
                              paper=str(PAPER_FILE),
                              contact_sheets=sorted(map(str, r.glob("report/figures/contact_sheet_*.png"))),
                              samples=[str(r / "data" / f"{t}_sample.parquet") for t in ("pope", "caption")],
                              inference=sorted(map(str, r.glob("inference/*/*/*/r*.parquet"))),
                              figures=sorted(map(str, r.glob("analysis/*/*.png"))),
                              result_figures=sorted(map(str, r.glob("figures/*.png")))),
        output=SimpleNamespace(html=str(out / "index.html"), md=str(out / "summary.md")),
        params=report_params(cfg, models, settings),
        log=[])


def test_report_reads_the_metrics_not_the_markdown(demo_run, tmp_path):
    """A finished run whose metrics table changes and whose Markdown tables are garbage: the page and the summary
    show the metrics table's number, and nothing from the Markdown."""
    run = tmp_path / "run"
    shutil.copytree(demo_run / "results", run / "results", ignore=shutil.ignore_patterns(".partial", "benchmarks"))
    metrics_path = run / "results" / "scores" / "pope_metrics.parquet"
    table = pq.read_table(metrics_path)
    rows = table.to_pylist()
    for row in rows:  # every model's baseline, so the first model's table shows it
        if row["setting"] == "baseline":
            row["accuracy"], row["accuracy_ci_low"], row["accuracy_ci_high"] = 0.98765, 0.97111, 0.99222
    changed = pa.Table.from_pylist(rows, schema=table.schema)
    pq.write_table(changed.replace_schema_metadata(table.schema.metadata), metrics_path)
    for md in [*run.glob("results/tables/*.md"), *run.glob("results/report/tables/*.md")]:
        md.write_text("# garbage\n\n| Setting | x paper | y paper |\n|---|---|---|\n"
                      "| baseline | 12.3 [1.0, 2.0] | 4 |\n")
    smk = demo_report_inputs(run, run / "results" / "report")
    report.main(smk)
    page = Path(smk.output.html).read_text(encoding="utf-8")
    table1 = page[page.index(">Table 1 · POPE adversarial</h3>"):page.index(">Table 2 · CHAIR")]
    first = table1.split("<h4>")[1]
    assert "<td class='label'>baseline</td><td class='num'><span class='v'>98.8</span> " \
           "<span class='ci'>[97.1, 99.2]</span></td>" in first
    assert "garbage" not in page and "12.3" not in page
    assert len(re.findall(r"src='data:image/png;base64,", page)) == (
        len(smk.input.contact_sheets) + len(smk.input.figures) + len(smk.input.result_figures))
    summary = Path(smk.output.md).read_text(encoding="utf-8")
    assert "| baseline | 98.8 [97.1, 99.2] |" in summary and "garbage" not in summary


def test_demo_strip_sections_read_their_tables(demo_run, tmp_path):
    """A finished demo run: the strip sections show the run's visibility and transcription metrics, and a value
    changed in those tables is the value on the page."""
    scores = tmp_path / "scores"
    shutil.copytree(demo_run / "results" / "scores", scores)
    for name in ("visibility_metrics", "transcribe_metrics"):
        if not (scores / f"{name}.parquet").exists():
            pytest.skip(f"the demo run has no {name}.parquet (a run of an older workflow)")
    smk = demo_report_inputs(demo_run, tmp_path / "out")
    smk.input.metrics = [str(scores / Path(p).name) for p in smk.input.metrics]
    first = smk.params.models[0]
    setting = question_settings({"settings": smk.params.setting_entries}, smk.params.settings)[0]  # the first shown
    for name, column, where in (("visibility_metrics", "accuracy", {"task": "pope", "setting": setting,
                                                                     "visibility": "all"}),
                                ("transcribe_metrics", "exact_match", {"visibility": "all"})):
        path = scores / f"{name}.parquet"
        table = pq.read_table(path)
        rows = table.to_pylist()
        changed = 0
        for row in rows:
            if row["model"] == first and all(row[k] == v for k, v in where.items()):
                row[column], row[f"{column}_ci_low"], row[f"{column}_ci_high"] = 0.98765, 0.97111, 0.99222
                changed += 1
        assert changed == 1, (name, first, where)
        pq.write_table(pa.Table.from_pylist(rows, schema=table.schema).replace_schema_metadata(
            table.schema.metadata), path)
    report.main(smk)
    page = Path(smk.output.html).read_text(encoding="utf-8")
    cell = "<span class='v'>98.8</span> <span class='ci'>[97.1, 99.2]</span>"
    seen = page_section(page, VISIBILITY_TITLE)
    accuracy = seen.split("POPE accuracy (%) by how much")[1].split("CHAIRs (%)")[0].split("<tbody>")[1]
    first_row = accuracy.split("</tr>")[0]  # the first model's first question setting
    assert str(break_underscores(setting)) in first_row and cell in first_row
    read = page_section(page, TRANSCRIBE_TITLE).split("<tbody>")[1].split("</tr>")[0]
    assert ">all</td>" in read and cell in read
    # every configured model has its counts and its transcription
    labels = model_labels({m: smk.params.model_entries[m] for m in smk.params.models},
                                 read_paper(PAPER_FILE))
    for model in smk.params.models:
        label = f"<td class='label'>{break_underscores(labels[model])}</td>"
        assert label in seen.split("</table>")[0] and label in page_section(page, TRANSCRIBE_TITLE)


def test_report_rules_in_dag(tmp_path):
    """The report needs every table, contact sheet, figure and inference file, and runs on the submit host; it
    reads the metrics tables and the tables' CSV files, never their Markdown."""
    # conftest passes --quiet=rules, which hides the per-job blocks; the later --quiet=progress replaces it
    proc = run_snakemake(tmp_path, "-n", "--forceall", "--quiet=progress", "results/report/index.html", timeout=300)
    jobs = set(re.findall(r"^rule (\w+):", proc.stdout, re.M))
    assert {"report", "report_table", "report_contact_sheet", "infer", "table1_pope", "table2_chair"} <= jobs
    assert {"attention", "layer_similarity", "modality_gap"} <= jobs
    report_job = proc.stdout[proc.stdout.index("rule report:"):]
    inputs = re.search(r"^\s+input: (.*)$", report_job, re.M).group(1).split(", ")
    assert {"results/scores/pope_metrics.parquet", "results/scores/chair_metrics.parquet",
            "results/report/tables/table1_pope.csv"} <= set(inputs)
    assert any(p.endswith("paper_numbers.yaml") for p in inputs)
    assert not any(p.endswith(".md") for p in inputs)
    # the strip sections' tables (the demo config has the transcribe task), and their CSVs for `snakemake --report`
    assert {"results/scores/visibility_metrics.parquet", "results/scores/transcribe_metrics.parquet",
            "results/report/tables/strip_visibility.csv", "results/report/tables/transcribe.csv"} <= set(inputs)
    assert {"score_visibility", "score_transcribe"} <= jobs


def test_report_without_the_transcribe_task(tmp_path):
    """A config without the transcribe task: the report neither needs its metrics nor copies its table (and so
    does not show its section), and still shows the strip visibility."""
    project = copy_project(tmp_path / "project")
    for name in ("config.yaml", "config.demo.yaml"):
        cfg = yaml.safe_load((project / name).read_text(encoding="utf-8"))
        cfg["tasks"].pop("transcribe")
        cfg.get("settings", {}).pop("transcribe", None)
        (project / name).write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    work = tmp_path / "work"
    work.mkdir()
    proc = run_snakemake(work, "-n", "--forceall", "--quiet=progress", "results/report/index.html",
                         project=project, timeout=300)
    report_job = proc.stdout[proc.stdout.index("rule report:"):]
    inputs = set(re.search(r"^\s+input: (.*)$", report_job, re.M).group(1).split(", "))
    assert {"results/scores/visibility_metrics.parquet", "results/report/tables/strip_visibility.csv"} <= inputs
    assert not any("transcribe" in p for p in inputs)
    assert "score_transcribe" not in set(re.findall(r"^rule (\w+):", proc.stdout, re.M))


def test_one_number_format_for_every_table():
    """The scoring stage's Markdown tables and the report page print numbers through one formatter."""
    from pii.core.formatting import format_number, format_p
    from pii.report import cells
    from pii.scoring import tables

    assert cells.format_number is format_number and tables.format_number is format_number
    assert [format_number(1.234, 2), format_number(-0.5, 1, sign=True), format_number(0.5, 1, sign=True)] == [
        "1.23", "−0.5", "+0.5"]
    assert format_number(0.004, 2, sign=True) == "±0.00" and format_number(None, 1) == format_number(math.nan, 1) == "—"
    assert (format_p(0.0004), format_p(0.0123), format_p(None), format_p(math.nan)) == ("p<0.001", "p=0.012", "", "")


def test_chair_without_unfinished_sentences_is_shown_beside_the_plain_numbers(tmp_path):
    """scoring.chair.drop_incomplete_sentence adds chair_*_complete to the metrics: the report shows them after the
    truncation counts; without them the block is absent."""
    smk = fake_inputs(tmp_path)
    report.main(smk)
    assert "unfinished last sentence" not in section(Path(smk.output.html).read_text(),
                                                     "Table 2 · CHAIR on detailed captions")
    path = Path(smk.input.metrics[1])
    rows = pq.read_table(path).to_pylist()
    for r in rows:
        r |= {"n_truncated": 3, "truncated_share": 0.03, "mean_response_tokens": 180.0, "chair_s_complete": 0.2135,
              "chair_i_complete": 0.0833}
    write_parquet(rows, path, "chair_metrics", SCORING_META)
    report.main(smk)
    table2 = section(Path(smk.output.html).read_text(), "Table 2 · CHAIR on detailed captions")
    block = table2[table2.index("unfinished last sentence"):]
    assert "<th>CHAIRs complete (%)</th>" in block and block.count("<td class='num'>21.3</td>") == 4
    assert block.count("<td class='num'>8.3</td>") == 4
