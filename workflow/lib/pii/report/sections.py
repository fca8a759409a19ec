"""What the report reads and the sections on the strip: the metrics tables checked against their schemas, the
tables' CSV files, the paper's labels, sample sizes; the sections on what each model saw of the strip, whether it
reads it and the batch-invariance check; and the captions shipped in workflow/report/*.rst.
"""

import csv
import html
import math
import re
import types
from pathlib import Path

import jinja2
import pyarrow.parquet as pq
import yaml
from markupsafe import Markup, escape

from pii import WORKFLOW_DIR
from pii.core.stage import PipelineError
from pii.core.tables import read_arrow, read_metadata
from pii.report.cells import (
    Block,
    Cell,
    Column,
    Metric,
    Table,
    TableSection,
    number,
    result_cell,
)
from pii.scoring.paper import match_paper_models

REPORT_DIR = WORKFLOW_DIR / "report"
TASK_TITLES = {"pope": "POPE (yes/no questions)", "caption": "Captions (CHAIR)"}


# --- reading the data --------------------------------------------------------------------------------------------

def read_checked(path: str | Path, schema_name: str) -> tuple[list[dict], dict]:
    """The rows (dicts) of a Parquet table after checking it against its schema, and the table's metadata."""
    table = read_arrow(path, schema_name, missing_hint="; rerun the rule that writes it")
    return table.to_pylist(), read_metadata(path)


def read_csv_rows(path: str | Path) -> list[dict[str, str]]:
    path = Path(path)
    try:
        with open(path, encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError) as err:
        raise PipelineError(f"{path}: cannot read the table ({err}); rerun the rule that writes it") from err


def read_paper(path: str | Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            paper = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as err:
        raise PipelineError(f"{path}: cannot read the paper's numbers ({err})") from err
    if not isinstance(paper, dict):
        raise PipelineError(f"{path}: expected a mapping with 'models' and 'settings'")
    return paper


def sample_sizes(sample_paths: list[str]) -> dict[str, int]:
    """Rows of each sample table (results/data/<task>_sample.parquet), by task, from the Parquet footer."""
    sizes = {}
    for path in sample_paths:
        task = Path(path).stem.removesuffix("_sample")
        try:
            sizes[task] = pq.read_metadata(path).num_rows
        except (OSError, ValueError) as err:  # a missing or corrupt file
            raise PipelineError(f"{path}: cannot read the sample table ({err}); rerun the rule that writes it") \
                from err
    return sizes


def model_labels(models: dict[str, dict], paper: dict) -> dict[str, str]:
    """Each model's name in the tables: the paper's label of the model it matches, else its config key."""
    paper_models = paper.get("models") or {}
    matched = match_paper_models(models, paper_models)
    return {m: str(paper_models[matched[m]].get("label") or m) if m in matched else m for m in models}


def setting_labels(settings: list[str], paper: dict) -> dict[str, str]:
    """Each setting's row label: its id, with the paper's row name beside it where that differs."""
    theirs = {str(ours): str(name) for name, ours in (paper.get("settings") or {}).items()}
    return {s: f"{s} ({theirs[s]})" if s in theirs and theirs[s].lower() != s.lower() else s for s in settings}


# --- strip visibility and transcription ---------------------------------------------------------------------------

# Tables the page shows from their metrics table, each in its own section; their CSV copies (results/report/tables/)
# are for `snakemake --report` and are not read here. Table name -> metrics table.
METRICS_SECTIONS = {"strip_visibility": "visibility_metrics", "transcribe": "transcribe_metrics"}
# the groups in reading order ("all": every request), as transcription.VISIBILITY_GROUPS
VISIBILITY = ("all", "whole", "illegible", "part", "photo cut", "none", "unknown")
SEEN = VISIBILITY[1:]
VISIBILITY_TASKS = {"pope": "POPE questions", "caption": "Captions"}
ACCURACY = Metric("accuracy", "Acc (%)", 100.0, 1)
CHAIR_S = Metric("chair_s", "CHAIRs (%)", 100.0, 1)
TRANSCRIBE_METRICS = (Metric("exact_match", "Exact match (%)", 100.0, 1), Metric("cer", "CER (%)", 100.0, 1))


def interval_level(name: str, meta: dict) -> int:
    """The interval level (%) a metrics table's metadata states (``confidence``, or ``scoring.confidence``)."""
    confidence = number(meta.get("confidence", (meta.get("scoring") or {}).get("confidence")))
    if not math.isfinite(confidence):
        raise PipelineError(f"{name}: no confidence in the table's metadata; rerun scoring")
    return round(confidence * 100)


def share_text(part: int, whole: int) -> str:
    if whole <= 0:
        return ""
    share = 100 * part / whole
    return "(<1%)" if 0 < share < 0.5 else f"({share:.0f}%)"


def question_settings(cfg: dict, settings: list[str]) -> list[str]:
    """The settings whose image is the question image (the strip with the question rendered in it)."""
    entries = cfg.get("settings") or {}
    return [s for s in settings if (entries.get(s) or {}).get("image") == "question"]


def visibility_section(rows: list[dict], meta: dict, models: list[str], settings: list[str],
                       labels: dict[str, str], rows_of: dict[str, str]) -> TableSection:
    """What each model saw of the question: its question-image requests per visibility group (counts and shares,
    per task), then POPE accuracy and CHAIRs per group beside the overall number, per model and setting."""
    title, nav = "What each model saw of the question", "Strip seen"
    caption = caption_html("strip_visibility.rst")
    pct = interval_level("visibility_metrics", meta)
    rows = [r for r in rows if r["model"] in models and r["setting"] in settings]
    by_key = {(r["task"], r["model"], r["setting"], r["visibility"]): r for r in rows}
    models = [m for m in models if any(r["model"] == m for r in rows)]
    settings = [s for s in settings if any(r["setting"] == s for r in rows)]
    if not models or not settings:
        return TableSection("strip_visibility", title, caption, [Block(
            note="No scored question-image requests in visibility_metrics for the configured models and settings.")],
            nav=nav)

    # requests per group, summed over the question settings (and repeats), per model and task
    seen = [g for g in SEEN if any(r["visibility"] == g and r["n"] for r in rows)]
    columns = [Column("Model", "label"), Column("Task", "label"), Column("Requests")] + [Column(g) for g in seen]
    count_rows = []
    for model in models:
        first = True
        for task, task_title in VISIBILITY_TASKS.items():
            total = sum(int(r["n"]) for r in rows if (r["task"], r["model"], r["visibility"]) == (task, model, "all"))
            if not total:
                continue
            cells = [Cell(labels[model] if first else "", "label"), Cell(task_title, "label"), Cell(f"{total:,}")]
            for group in seen:
                n = sum(int(r["n"]) for r in rows if (r["task"], r["model"], r["visibility"]) == (task, model, group))
                cells.append(Cell(f"{n:,}", ci=share_text(n, total)))
            count_rows.append(cells)
            first = False
    named = ", ".join(f"`{s}`" for s in settings)
    blocks = [Block(note=f"Question-image requests ({named}, every decoding repeat) by how much of the strip reached "
                         "the model's vision encoder, with their share of the model's requests:"),
              Block(tables=[Table(columns, count_rows)])]

    # the headline metric per group, beside the overall number ("all")
    for task, metric, what in (("pope", ACCURACY, "POPE accuracy (%)"), ("caption", CHAIR_S, "CHAIRs (%)")):
        groups = [g for g in VISIBILITY if any(k[0] == task and k[3] == g for k in by_key)]
        if not groups:
            continue
        body = []
        for model in models:
            first = True
            for setting in settings:
                if (task, model, setting, "all") not in by_key:
                    continue
                body.append([Cell(labels[model] if first else "", "label"), Cell(rows_of[setting], "label")]
                            + [result_cell(by_key.get((task, model, setting, g)), metric, delta=False)
                               for g in groups])
                first = False
        header = [Column("Model", "label"), Column("Setting", "label")] + [Column(g) for g in groups]
        blocks += [Block(note=f"{what} by how much of the strip the model saw; all: every request of the setting:"),
                   Block(tables=[Table(header, body)])]
    blocks.append(Block(note=f"Value [{pct}% percentile bootstrap interval, images resampled]; — no request of the "
                             "model and setting in the group. Every group, both tasks, yes-ratio and CHAIRi: "
                             "`results/tables/strip_visibility.csv`."))
    return TableSection("strip_visibility", title, caption, blocks, nav=nav)


def transcribe_section(rows: list[dict], meta: dict, models: list[str], labels: dict[str, str]) -> TableSection:
    """Can the model read the strip? Exact match and CER of its transcription, overall ("all") and per visibility
    group, per model (and transcribe setting, where there are several)."""
    title, nav = "Can the model read the strip?", "Strip read"
    caption = caption_html("transcribe.rst")
    pct = interval_level("transcribe_metrics", meta)
    rows = [r for r in rows if r["model"] in models]
    models = [m for m in models if any(r["model"] == m for r in rows)]
    if not models:
        return TableSection("transcribe", title, caption, [Block(
            note="No scored transcriptions in transcribe_metrics for the configured models.")], nav=nav)
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    by_key = {(r["model"], r["setting"], r["visibility"]): r for r in rows}
    columns = [Column("Model", "label")] + ([Column("Setting", "label")] if len(settings) > 1 else [])
    columns += [Column("Strip seen", "label"), Column("Requests")] + [Column(m.label) for m in TRANSCRIBE_METRICS]
    body = []
    for model in models:
        first = True
        for setting in settings:
            total = by_key.get((model, setting, "all"), {}).get("n")
            first_of_setting = True
            for group in VISIBILITY:
                row = by_key.get((model, setting, group))
                if row is None:
                    continue
                n = int(row["n"])
                cells = [Cell(labels[model] if first else "", "label")]
                if len(settings) > 1:
                    cells.append(Cell(setting if first_of_setting else "", "label"))
                requests = Cell(f"{n:,}") if group == "all" or not total else Cell(f"{n:,}", ci=share_text(n, total))
                cells += [Cell(group, "label"), requests] + [result_cell(row, m, delta=False)
                                                             for m in TRANSCRIBE_METRICS]
                body.append(cells)
                first = first_of_setting = False
    note = (f"Value [{pct}% percentile bootstrap interval, images resampled]; all: every request of the model, then "
            "the requests by how much of the strip reached its vision encoder, with their share.")
    return TableSection("transcribe", title, caption, [Block(tables=[Table(columns, body)]), Block(note=note)],
                        nav=nav)


def invariance_section(paths: list[str], models: list[str], labels: dict[str, str]) -> TableSection:
    """The batch-invariance check (inference.invariance_check): per model and engine, how many greedy answers are
    the same in the job's batches and one at a time, and the largest |dP(yes)| between the two."""
    title, nav = "Do answers depend on the batch?", "Batch invariance"
    caption = Markup("<p>Greedy POPE answers of the baseline setting, run once in the batches the infer job forms "
                     "and once one request at a time, through the same backend. Padding, kernels chosen by batch "
                     "shape and continuous batching can change answers; a model whose answers move here has noise "
                     "of that size in every table.</p>")
    columns = [Column("Model", "label"), Column("Engine", "label"), Column("Batch"), Column("Requests"),
               Column("Identical answers"), Column("Largest |ΔP(yes)|")]
    body = []
    frames = {Path(f).stem: read_checked(f, "invariance")[0] for f in paths}
    for model in [m for m in models if m in frames]:
        rows = frames[model]
        same = sum(bool(r["identical"]) for r in rows)
        diffs = [float(r["abs_diff_p_yes"]) for r in rows if r.get("abs_diff_p_yes") is not None]
        body.append([Cell(labels.get(model, model), "label"), Cell(rows[0]["backend"], "label"),
                     Cell(str(rows[0]["batch_size"])), Cell(f"{len(rows):,}"),
                     Cell(f"{same:,}", ci=share_text(same, len(rows))),
                     Cell(f"{max(diffs):.1e}" if diffs else "–")])
    blocks = [Block(tables=[Table(columns, body)])] if body else [Block(note="No model was checked.")]
    return TableSection("invariance", title, caption, blocks, nav=nav)


# --- captions and figures ----------------------------------------------------------------------------------------

def inline_markup(text: str) -> Markup:
    """Escape HTML, then turn rst/markdown inline markup (``code``, `code`, **bold**, *em*) into tags."""
    out = html.escape(text, quote=False)
    out = re.sub(r"``(.+?)``", r"<code>\1</code>", out)
    out = re.sub(r"`([^`]+?)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    out = re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"<em>\1</em>", out)
    return Markup(out)


def break_underscores(text: str) -> Markup:
    """A long setting name may break after its underscores."""
    return Markup(str(escape(text)).replace("_", "_<wbr>"))


def caption_html(name: str, context: dict | None = None) -> Markup:
    """A caption file of workflow/report as HTML paragraphs, rendered with Jinja2 as `snakemake --report` renders
    it (``snakemake.wildcards`` holds ``context``), its inline markup turned into tags. Missing file: empty."""
    path = REPORT_DIR / name
    if not name or not path.exists():
        return Markup("")
    wildcards = types.SimpleNamespace(**(context or {}))
    text = jinja2.Template(path.read_text(encoding="utf-8")).render(
        snakemake=types.SimpleNamespace(wildcards=wildcards))
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if p.strip()]
    return Markup("").join(Markup("<p>{}</p>").format(inline_markup(p)) for p in paragraphs)
