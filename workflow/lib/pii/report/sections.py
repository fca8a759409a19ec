"""What the report page shows, as data: each table's metrics and cells (value, interval, change to the baseline,
p-value, spread over decoding repeats) read from the scoring stage's metrics tables, checked against their schemas,
beside the paper's numbers from the tables' CSV files; the sections on what each model saw of the strip, whether it
reads it and the batch-invariance check; and the captions shipped in workflow/report/*.rst."""

import base64
import csv
import html
import math
import re
import types
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import pyarrow.parquet as pq
import yaml
from markupsafe import Markup, escape

from pii import WORKFLOW_DIR
from pii.core.formatting import format_number, format_p
from pii.core.stage import PipelineError
from pii.core.tables import check_table, read_metadata
from pii.scoring.paper import match_paper_models
from pii.scoring.tables import pyes_temperature_note

REPORT_DIR = WORKFLOW_DIR / "report"
SIGNIFICANT = 0.05  # a delta whose p-value is below this is emphasised
TABLE_TITLES = {"table1_pope": "Table 1 · POPE adversarial", "pope_pyes": "POPE · P(yes) at the first token",
                "table2_chair": "Table 2 · CHAIR on detailed captions"}
TASK_TITLES = {"pope": "POPE (yes/no questions)", "caption": "Captions (CHAIR)"}


# --- what each table shows ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Metric:
    """One column of a metrics table (a fraction there) as a table shows it: scaled, rounded."""
    column: str
    label: str
    scale: float
    decimals: int


@dataclass(frozen=True)
class TableSpec:
    metrics: str  # the metrics table it reads: results/scores/<metrics>.parquet, schema <metrics>
    columns: tuple[Metric, ...]
    unit: str  # what the bootstrap resamples, for the notes
    paper: bool = True  # settings as rows, one table per model with the paper's numbers beside ours
    strict: bool = False  # followed by the strict parser's accuracy and unknown answers
    notes: tuple[str, ...] = ()  # (one decoding repeat, several)


# The notes under Table 1 and Table 2: (with one decoding repeat, with several). With several, McNemar's one answer
# per question no longer exists and every p-value is the paired bootstrap's.
_TABLE1_NOTE = ("Answers read with POPE's official rule (text before the first '.', a word 'No'/'not'/'no' -> no). "
                "Intervals (and Δ intervals) come from a clustered bootstrap that resamples images, each with all its "
                "questions, because answers about one image are correlated. ")
TABLE1_NOTES = (_TABLE1_NOTE + "p: exact McNemar test for accuracy and yes-ratio (per question, treating questions as "
                "independent), paired image-level bootstrap for F1.",
                _TABLE1_NOTE + "p: paired image-level bootstrap for every metric (an exact McNemar test needs one "
                "answer per question; with several decoding repeats the bootstrap uses them all).")
_TABLE2_NOTE = ("CHAIRs: captions with at least one hallucinated COCO object; CHAIRi: hallucinated object mentions / "
                "object mentions (repeated mentions count). ")
TABLE2_NOTES = (_TABLE2_NOTE + "One caption per image, so resampling captions is resampling images. p: paired "
                "bootstrap over images.",
                _TABLE2_NOTE + "One caption per image and repeat. p: paired bootstrap over images.")
PYES_NOTE = ("P(yes) = P(Yes) / (P(Yes) + P(No)) at the first generated step, where the backend gives it (rows "
             "without it are left out; — no P(yes) at all). AUROC: of P(yes) against the label (Mann–Whitney, ties "
             "count half); Brier: mean (P(yes) − label)²; ECE: expected calibration error over 10 equal-width bins; "
             "Disagree: answers whose parsed answer (POPE's official rule) differs from P(yes) > 0.5. ECE is biased "
             "upwards in small samples and more so in a resample, so its interval can lie above the value.")


STRICT = Metric("strict_accuracy", "strict Acc (%)", 100.0, 1)
TABLES = {
    "table1_pope": TableSpec("pope_metrics", (Metric("accuracy", "Acc (%)", 100.0, 1), Metric("f1", "F1", 1.0, 2),
                                              Metric("yes_ratio", "Yes-ratio", 1.0, 2)),
                             "images resampled with all their questions", strict=True, notes=TABLE1_NOTES),
    "pope_pyes": TableSpec("pope_metrics", (Metric("p_yes_auroc", "AUROC", 1.0, 3),
                                            Metric("p_yes_brier", "Brier", 1.0, 3),
                                            Metric("p_yes_ece", "ECE", 1.0, 3),
                                            Metric("p_yes_disagreement", "Disagree (%)", 100.0, 1)),
                           "images resampled with all their questions", paper=False),
    "table2_chair": TableSpec("chair_metrics", (Metric("chair_s", "CHAIRs (%)", 100.0, 1),
                                                Metric("chair_i", "CHAIRi (%)", 100.0, 1)),
                              "captions resampled (one per image)", notes=TABLE2_NOTES),
}


# --- reading the data --------------------------------------------------------------------------------------------

def read_checked(path: str | Path, schema_name: str) -> tuple[list[dict], dict]:
    """The rows (dicts) of a Parquet table after checking it against its schema, and the table's metadata."""
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"{path}: file not found; rerun the rule that writes it")
    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for a corrupt file
        raise PipelineError(f"{path}: not a readable Parquet file ({err}); delete it and rerun the rule") from err
    check_table(table, schema_name, source=str(path))
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


def number(value) -> float:
    """A table value as a float: NaN for a missing one (null, empty CSV cell)."""
    if value is None or value == "":
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


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


# --- table cells -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Cell:
    """One table cell. kind: ``label`` (a row name), ``num`` (a value with its interval and change to the
    baseline), ``text`` (shown as it is, right-aligned) or ``paper`` (the paper's number)."""
    value: str
    kind: str = "num"
    ci: str = ""
    delta: str = ""
    p: str = ""
    significant: bool = False

    @property
    def css(self) -> str:
        return {"label": "label", "paper": "paper"}.get(self.kind, "num")

    @property
    def text(self) -> str:
        """The cell in Markdown: ``value [low, high] · Δ delta, p=…``."""
        out = self.value + (f" {self.ci}" if self.ci else "")
        if self.delta:
            out += f" · {self.delta}" + (f", {self.p}" if self.p else "")
        return out


def result_cell(row: dict | None, metric: Metric, delta: bool = True) -> Cell:
    """A metric of one metrics row: value [interval], and (``delta``) for a setting other than the baseline its
    change to the baseline with the p-value. — when the group has no row or no value."""
    def get(key: str) -> float:
        if not row:
            return math.nan
        return number(row.get(key)) * (1.0 if key.endswith("_p_value") else metric.scale)

    value = get(metric.column)
    if not math.isfinite(value):
        return Cell("—", "text")
    d = metric.decimals
    ci = f"[{format_number(get(metric.column + '_ci_low'), d)}, {format_number(get(metric.column + '_ci_high'), d)}]"
    change, p = get(f"{metric.column}_delta"), get(f"{metric.column}_p_value")
    if not delta or not math.isfinite(change):  # the baseline itself has none
        return Cell(format_number(value, d), ci=ci)
    return Cell(format_number(value, d), ci=ci, delta=f"Δ {format_number(change, d, sign=True)}", p=format_p(p),
                significant=math.isfinite(p) and p < SIGNIFICANT)


def spread_cell(row: dict | None, metric: Metric) -> Cell:
    """The spread over decoding repeats: SD (min–max) of the per-repeat values."""
    if not row:
        return Cell("—", "text")
    sd, low, high = (number(row.get(f"{metric.column}_repeat_{k}")) * metric.scale for k in ("sd", "min", "max"))
    if not math.isfinite(low):
        return Cell("—", "text")
    d = metric.decimals
    return Cell(f"{format_number(sd, d)} ({format_number(low, d)}–{format_number(high, d)})", "text")


def count_cell(row: dict | None, part: str, whole: str = "n") -> Cell:
    if not row or row.get(part) is None or row.get(whole) is None:
        return Cell("—", "text")
    return Cell(f"{int(row[part])} / {int(row[whole])}", "text")


def mean_tokens_cell(row: dict | None) -> Cell:
    return Cell(format_number(number((row or {}).get("mean_response_tokens")), 1), "text")


def percent_cell(row: dict | None, column: str) -> Cell:
    return Cell(format_number(number((row or {}).get(column)) * 100, 1), "text")


def paper_cell(value: str | None, decimals: int) -> Cell:
    return Cell(format_number(number(value), decimals), "paper")


# --- tables ------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Column:
    label: str
    kind: str = "num"  # "label", "num" or "paper", as the cells below it
    own: bool = True  # in a wide Markdown table, prefixed with the model's label ("paper" and counts are not)


@dataclass
class Table:
    columns: list[Column]
    rows: list[list[Cell]]
    title: str = ""  # the model's label, in a group of per-model tables


@dataclass
class Block:
    """A paragraph (``note``) or tables: one per model side by side (``grouped``), or a single table."""
    note: str = ""
    tables: list[Table] = field(default_factory=list)
    grouped: bool = False

    @property
    def tiles(self) -> bool:
        """Narrow per-model tables (at most two columns beside the row label) tile side by side."""
        return self.grouped and max(len(t.columns) for t in self.tables) <= 3

    def markdown(self) -> tuple[list[str], list[str], list[list[str]]]:
        """(header, alignment, rows) of the block as one Markdown table: per-model tables side by side, each
        column headed by the model's label (the layout of the tables under results/tables/)."""
        if not self.grouped:
            table = self.tables[0]
            header = [c.label for c in table.columns]
            kinds = [c.kind for c in table.columns]
            rows = [[c.text for c in row] for row in table.rows]
        else:
            first = self.tables[0]
            header, kinds = [first.columns[0].label], ["label"]
            for t in self.tables:
                header += [f"{t.title} {c.label}" if c.own else c.label for c in t.columns[1:]]
                kinds += [c.kind for c in t.columns[1:]]
            rows = [[row[0].text] + [c.text for t in self.tables for c in t.rows[i][1:]]
                    for i, row in enumerate(first.rows)]
        align = [":---" if k == "label" else "---:" for k in kinds]
        return header, align, rows


@dataclass
class TableSection:
    name: str
    title: str
    caption: Markup
    blocks: list[Block]
    figure: "Figure | None" = None
    nav: str = ""  # its link in the page's header (sections of their own)


def repeats_in(rows: list[dict]) -> int:
    """The most decoding repeats any group of a metrics table has (1 without the column)."""
    return max([1] + [int(r["n_repeats"]) for r in rows if r.get("n_repeats") is not None])


def paired_tables(by_key: dict, paper_rows: dict[str, dict], models: list[str],
                  settings: list[str], labels: dict[str, str], rows_of: dict[str, str], columns, cells) -> Block:
    """One table per model (rows: settings): ``columns`` and ``cells(row, paper_row, model)`` give its columns."""
    tables = []
    for model in models:
        body = []
        for setting in settings:
            row = by_key.get((model, setting))
            body.append([Cell(rows_of[setting], "label")] + cells(row, paper_rows.get(setting, {}), model))
        tables.append(Table([Column("Setting", "label")] + columns, body, labels[model]))
    return Block(tables=tables, grouped=True)


def value_note(spec: TableSpec, pct: int) -> str:
    return (f"Ours: value [{pct}% percentile bootstrap interval, {spec.unit}]; Δ: difference to the baseline setting "
            "of the same model on the same samples, with its p-value; paper: the published number (— not reported).")


def repeats_note(repeats: int, unit: str, where: str = "shown below") -> str:
    return (f"Decoding repeats: every request was run {repeats} times (repeat 0 with the config seed, the others "
            "with seeds derived from it); each value is the mean of the per-repeat values, its interval comes from "
            f"the same clustered bootstrap ({unit}, each image with all its repeats), so it covers the sampling of "
            f"images and the decoding noise together; the per-repeat spread is {where}.")


def result_blocks(spec: TableSpec, metrics: list[dict], paper_rows: dict[str, dict], models: list[str],
                  settings: list[str], labels: dict[str, str], rows_of: dict[str, str], confidence: float,
                  meta: dict | None = None) -> list[Block]:
    """The tables and notes of one results table, from its metrics rows and metadata (and the paper's numbers)."""
    meta = meta or {}
    present = {(r["model"], r["setting"]) for r in metrics}
    models = [m for m in models if any(k[0] == m for k in present)]
    settings = [s for s in settings if any(k[1] == s for k in present)]
    by_key = {(r["model"], r["setting"]): r for r in metrics}
    repeats = repeats_in(metrics)
    pct = round(confidence * 100)
    if not models or not settings:
        return [Block(note=f"No scored groups in {spec.metrics} for the configured models and settings.")]
    if not spec.paper:
        return pyes_blocks(spec, by_key, models, settings, labels, repeats, pct, meta.get("p_yes_temperature"))
    columns = [c for m in spec.columns for c in (Column(m.label), Column("paper", "paper", own=False))]

    def main_cells(row, paper_row, model):
        return [c for m in spec.columns for c in (result_cell(row, m),
                                                  paper_cell(paper_row.get(f"{model}:{m.column}_paper"), m.decimals))]

    blocks = [paired_tables(by_key, paper_rows, models, settings, labels, rows_of, columns, main_cells)]
    blocks.append(Block(note=value_note(spec, pct)))
    if spec.notes:
        blocks.append(Block(note=spec.notes[0 if repeats == 1 else -1]))
    if repeats > 1:
        blocks.append(Block(note=repeats_note(repeats, spec.unit)))
        blocks.append(Block(note=f"Spread over the {repeats} decoding repeats: SD (min–max) of the per-repeat values:"))
        blocks.append(paired_tables(by_key, paper_rows, models, settings, labels, rows_of,
                                    [Column(m.label) for m in spec.columns],
                                    lambda row, _paper, _model: [spread_cell(row, m) for m in spec.columns]))
    if any("n_truncated" in r for r in metrics):
        blocks.append(Block(note="Captions cut at max_new_tokens (finish_reason length) / captions, and the mean "
                                 "caption length in response tokens: where many are cut, CHAIR depends on the token "
                                 "limit as much as on the model."))
        blocks.append(paired_tables(by_key, paper_rows, models, settings, labels, rows_of,
                                    [Column("cut / n", own=False), Column("mean tokens", own=False)],
                                    lambda row, _paper, _model: [count_cell(row, "n_truncated"),
                                                                 mean_tokens_cell(row)]))
    if any(math.isfinite(number(r.get("chair_s_complete"))) for r in metrics):  # scored with the option on
        blocks.append(Block(note="CHAIR again with the unfinished last sentence of every cut caption dropped "
                                 "(scoring.chair.drop_incomplete_sentence; a cut caption with no finished sentence "
                                 "counts as empty), to set beside the CHAIR of the captions as generated:"))
        blocks.append(paired_tables(by_key, paper_rows, models, settings, labels, rows_of,
                                    [Column("CHAIRs complete (%)", own=False), Column("CHAIRi complete (%)", own=False)],
                                    lambda row, _paper, _model: [percent_cell(row, "chair_s_complete"),
                                                                 percent_cell(row, "chair_i_complete")]))
    if spec.strict:
        blocks.append(Block(note="Strict parser (yes / no / unknown; unknown counts as wrong):"))
        blocks.append(paired_tables(by_key, paper_rows, models, settings, labels, rows_of,
                                    [Column(STRICT.label), Column("unknown / n", own=False)],
                                    lambda row, _paper, _model: [result_cell(row, STRICT, delta=False),
                                                                 count_cell(row, "n_unknown")]))
    return blocks


def pyes_blocks(spec: TableSpec, by_key: dict, models: list[str], settings: list[str], labels: dict[str, str],
                repeats: int, pct: int, p_yes_temperature: float | None = None) -> list[Block]:
    """The P(yes) table: one row per model and setting (the model named on its first row)."""
    columns = [Column("Model", "label"), Column("Setting", "label"), Column("with P(yes) / n")]
    columns += [Column(m.label) for m in spec.columns]
    rows = []
    for model in models:
        first = True
        for setting in settings:
            row = by_key.get((model, setting))
            if row is None:
                continue
            rows.append([Cell(labels[model] if first else "", "label"), Cell(setting, "label"),
                         count_cell(row, "n_p_yes")] + [result_cell(row, m) for m in spec.columns])
            first = False
    blocks = [Block(tables=[Table(columns, rows)]), Block(note=PYES_NOTE),
              Block(note=pyes_temperature_note(p_yes_temperature)),
              Block(note=f"Value [{pct}% percentile bootstrap interval, {spec.unit}]; Δ: difference to the baseline "
                         "setting of the same model on the questions both answered with a P(yes), with its paired "
                         "image-level bootstrap p-value.")]
    if repeats > 1:
        blocks.append(Block(note=repeats_note(repeats, spec.unit,
                                              "in the CSV (`*_repeat_sd`, `*_repeat_min`, `*_repeat_max`)")))
    return blocks


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


@dataclass
class Figure:
    path: str
    title: str
    caption: Markup = Markup("")

    @property
    def src(self) -> str:
        return data_uri(self.path)


def data_uri(path: str | Path) -> str:
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"{path}: figure not found; rerun the rule that writes it")
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
