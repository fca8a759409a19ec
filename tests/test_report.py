"""Report: the self-contained summary page and the `snakemake --report` wiring."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import report
from conftest import run_snakemake
from PIL import Image
from pipeline_io import config_hash, write_table

TABLE1_MD = """# Table 1: POPE adversarial

| Setting | Qwen2.5-VL Acc (%) | paper | Qwen2.5-VL F1 | paper |
|:---|---:|---:|---:|---:|
| baseline | 81.0 [78.0, 84.0] | 80.2 | 0.77 [0.74, 0.80] | 0.76 |
| prompt_in_image (PiI) | 84.0 [81.0, 87.0] · Δ +3.0, p=0.01 | 84.3 | 0.81 [0.78, 0.84] · Δ +0.04 | 0.82 |

Ours: value [95% percentile bootstrap interval]; paper: the published number (— not reported).
"""


def png(path: Path, color=(200, 30, 30)) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 20), color).save(path)
    return str(path)


def fake_inputs(tmp: Path) -> SimpleNamespace:
    tables = tmp / "tables"
    tables.mkdir()
    (tables / "table1_pope.md").write_text(TABLE1_MD)
    (tables / "table2_chair.md").write_text("# Table 2\n\n| Setting | CHAIRs | paper |\n|:--|--:|--:|\n"
                                            "| baseline | 30.1 | 32.3 |\n")
    samples = []
    for task, n in (("pope", 6), ("caption", 3)):
        p = tmp / f"{task}_sample.parquet"
        write_table(pd.DataFrame({"sample_id": [f"s{i}" for i in range(n)]}), p)
        samples.append(str(p))
    inference = []
    for model, commit in (("qwen", "abc123"), ("llava", None)):
        p = tmp / "inference" / "pope" / model / "baseline.parquet"
        p.parent.mkdir(parents=True)
        write_table(pd.DataFrame({"response": ["yes"]}), p, metadata={
            "model": model, "model_id": f"org/{model}", "revision": "main", "commit_hash": commit,
            "dtype": "float32", "device": "cpu", "backend": "transformers", "python": "3.11.7",
            "versions": {"torch": "2.13.0", "transformers": "5.23.0"}})
        inference.append(str(p))
    figures = [png(tmp / "fig" / "gap.png"), png(tmp / "fig" / "attention_maps.png", (20, 20, 200))]
    cfg = {"seed": 0, "models": {"qwen": {"family": "qwen2_5_vl", "path": "org/qwen", "revision": "main"},
                                 "llava": {"family": "llava", "path": "org/llava", "revision": "main"}},
           "settings": {"baseline": {}, "prompt_in_image": {}}, "decoding": {"temperature": 0.7}}
    return SimpleNamespace(
        input=SimpleNamespace(tables=[str(tables / "table1_pope.md"), str(tables / "table2_chair.md")],
                              contact_sheets=[png(tmp / "contact_sheet_pope.png", (0, 150, 0))],
                              samples=samples, inference=inference, figures=figures),
        output=SimpleNamespace(html=str(tmp / "out" / "index.html"), md=str(tmp / "out" / "summary.md")),
        params=SimpleNamespace(cfg=json.dumps(cfg), tasks=["pope", "caption"]),
        log=[])


def test_page_is_self_contained_and_complete(tmp_path):
    smk = fake_inputs(tmp_path)
    report.main(smk)
    page = Path(smk.output.html).read_text()
    # every image embedded, nothing fetched from elsewhere
    srcs = re.findall(r"src='([^']*)'", page)
    assert len(srcs) == 3 and all(s.startswith("data:image/png;base64,") for s in srcs)
    Image.open(io.BytesIO(base64.b64decode(srcs[0].split(",", 1)[1]))).verify()
    assert "http://" not in page and "https://" not in page
    # both tables, with the paper's columns marked, and their numbers
    assert page.count("<table>") == 2 and "<table class='plain'>" in page  # two results + models
    assert "<td class='paper'>84.3</td>" in page and "<td class='paper'>32.3</td>" in page
    assert "Table 1 · POPE adversarial" in page and "Table 2 · CHAIR" in page
    # what was run: config hash, checkpoint revision, sample sizes, library versions from the metadata
    digest = config_hash(json.loads(smk.params.cfg))
    assert digest in page and "abc123" in page
    assert "torch 2.13.0" in page and "transformers 5.23.0" in page
    assert ">6</span>" in page and ">3</span>" in page
    # analysis figures in the documented order, with the shipped caption text
    assert page.index("CLIP attention") < page.index("Modality gap")
    assert "CLS-to-patch" in page
    md = Path(smk.output.md).read_text()
    assert f"`{digest}`" in md and "| 84.0 [81.0, 87.0]" in md and "abc123" in md


def test_markup_is_escaped_and_branches_resolve():
    assert report.inline_markup("<b>x</b> ``a<b`` **y**") == "&lt;b&gt;x&lt;/b&gt; <code>a&lt;b</code> <strong>y</strong>"
    # The captions are Jinja2 templates, rendered with the wildcards as `snakemake --report` renders them.
    table1 = report.caption_html("tables.rst", {"table": "table1_pope"})
    pyes = report.caption_html("tables.rst", {"table": "pope_pyes"})
    table2 = report.caption_html("tables.rst", {"table": "table2_chair"})
    assert "Table 1: POPE" in table1 and "AUROC" not in table1 and "CHAIRs" not in table1
    assert "AUROC" in pyes and "Table 1" not in pyes
    assert "CHAIRs" in table2 and "POPE" not in table2
    assert "{%" not in table1 + pyes + table2


WIDE_MD = """| Setting | Qwen2.5-VL Acc (%) | paper | Qwen2.5-VL F1 | paper | LLaVA-1.5 Acc (%) | paper | LLaVA-1.5 F1 | paper |
|:---|---:|---:|---:|---:|---:|---:|---:|---:|
| baseline | 81.0 [78.0, 84.0] | 80.2 | 0.77 [0.74, 0.80] | 0.76 | 70.0 [66.0, 74.0] | 84.0 | 0.70 [0.66, 0.74] | — |
| prompt_in_image | 84.0 [81.0, 87.0] · Δ +3.0, p=0.010 | 84.3 | 0.81 [0.78, 0.84] · Δ +0.04, p=0.200 | 0.82 \
| 69.0 [65.0, 73.0] · Δ −1.0, p=0.500 | 55.0 | 0.69 [0.65, 0.73] · Δ −0.01, p=0.700 | — |

| Setting | Qwen2.5-VL strict Acc (%) | unknown / n | LLaVA-1.5 strict Acc (%) | unknown / n |
|:---|---:|---:|---:|---:|
| baseline | 80.0 [77.0, 83.0] | 2 / 100 | 60.0 [56.0, 64.0] | 9 / 100 |
""".replace("\\\n", "")


def test_wide_tables_become_one_compact_table_per_model():
    """3 models x 3 metrics x (ours, paper) is unreadable in one row: each model gets its own table, metrics as
    columns (the model's name moved to the table's heading), its paper numbers next to ours."""
    page = report.markdown_to_html(WIDE_MD)
    assert page.count("<table class='results'>") == 4  # (Acc/F1 table, strict table) x 2 models
    first = page.split("<h4>")[1]
    assert first.startswith("Qwen2.5-VL</h4>") and "<th>Acc (%)</th>" in first and "<th>F1</th>" in first
    assert "<td class='paper'>84.3</td>" in first and "<td class='paper'>84.0</td>" not in first  # LLaVA's
    assert "LLaVA" not in first and "70.0" not in first
    llava = page.split("<h4>")[2]
    assert "<td class='paper'>55.0</td>" in llava and "<span class='v'>69.0</span>" in llava
    # the value, its interval, and its change to the baseline (emphasised only where p < 0.05)
    assert "<span class='delta sig'>Δ +3.0 · p=0.010</span>" in first
    assert "<span class='delta'>Δ +0.04 · p=0.200</span>" in first
    # columns without a model name stay with the model before them, narrow tables tile side by side
    strict = page.split("<div class='model-tables tiles'>")[1]
    assert strict.count("<th>unknown / n</th>") == 2 and "9 / 100" in strict.split("<h4>")[2]
    # a table with one model (or no model columns) stays as it is
    assert report.model_groups(["Setting", "Qwen2.5-VL Acc (%)", "paper"]) is None
    assert report.model_groups(["Model", "Family", "Checkpoint"]) is None


def test_missing_figure_names_the_file(tmp_path):
    smk = fake_inputs(tmp_path)
    smk.input.figures = [str(tmp_path / "nope.png")]
    with pytest.raises(report.PipelineError, match="nope.png"):
        report.main(smk)
    assert not Path(smk.output.html).exists()  # no half-written page


def test_report_rules_in_dag(tmp_path):
    """The report needs every table, contact sheet, figure and inference file, and runs on the submit host."""
    # conftest passes --quiet=rules, which hides the per-job blocks; the later --quiet=progress replaces it
    proc = run_snakemake(tmp_path, "-n", "--forceall", "--quiet=progress", "results/report/index.html", timeout=300)
    jobs = set(re.findall(r"^rule (\w+):", proc.stdout, re.M))
    assert {"report", "report_table", "report_contact_sheet", "infer", "table1_pope", "table2_chair"} <= jobs
    assert {"attention", "layer_similarity", "modality_gap"} <= jobs
