"""The report's tables as data: each result table's metrics (``TABLES``), its cells (value with interval, change to
the baseline emphasised where p < 0.05, p-value, spread over decoding repeats, the paper's number), and the blocks,
sections and figures the page template lays out.
"""

import base64
import math
from dataclasses import dataclass, field
from pathlib import Path

from markupsafe import Markup

from pii.core.formatting import format_number, format_p
from pii.core.stage import PipelineError
from pii.scoring.tables import pyes_temperature_note

SIGNIFICANT = 0.05  # a delta whose p-value is below this is emphasised
TABLE_TITLES = {"table1_pope": "Table 1 · POPE adversarial", "pope_pyes": "POPE · P(yes) at the first token",
                "table2_chair": "Table 2 · CHAIR on detailed captions"}


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


def number(value) -> float:
    """A table value as a float: NaN for a missing one (null, empty CSV cell)."""
    if value is None or value == "":
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


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
