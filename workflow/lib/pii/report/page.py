"""The report page: one self-contained page (results/report/index.html, images embedded) and a Markdown summary.

The page shows what was run (config hash, models with their revisions, sample sizes, library versions read from
the inference files' metadata), Table 1, Table 2 and the P(yes) table next to the paper's numbers, each followed by
its figure (pii.scoring.figures), what each model saw of the question strip and whether it can read it, the contact
sheets of the rendered variants and the analysis figures, each with the caption the workflow ships in
workflow/report/*.rst.

The numbers are read as data, never from the Markdown tables: every value, interval, delta, p-value and spread
comes from the scoring stage's metrics tables (results/scores/{pope,chair,visibility,transcribe}_metrics.parquet,
checked against their schemas; transcribe only with that task), the paper's numbers from the tables' CSV files
(``<model>:<metric>_paper``, already matched to the config's models by the table rules), the paper's model labels and
row names from workflow/data/paper_numbers.yaml (cells.py and sections.py build the tables). Both files are rendered by
Jinja2 templates in workflow/report/: index.html.j2 (autoescaped) and summary.md.j2.
"""

import json
import math
import os
from dataclasses import replace
from pathlib import Path

import jinja2
from markupsafe import Markup

from pii.core.stage import PipelineError, log
from pii.core.tables import atomic_output, read_metadata
from pii.report.cells import (
    TABLE_TITLES,
    TABLES,
    Figure,
    TableSection,
    number,
    result_blocks,
)
from pii.report.sections import (
    METRICS_SECTIONS,
    REPORT_DIR,
    TASK_TITLES,
    break_underscores,
    caption_html,
    inline_markup,
    invariance_section,
    model_labels,
    question_settings,
    read_checked,
    read_csv_rows,
    read_paper,
    sample_sizes,
    setting_labels,
    transcribe_section,
    visibility_section,
)

# Analysis figures in reading order: file name -> (title, caption file in workflow/report/).
FIGURES = {
    "attention_maps.png": ("CLIP attention on question vs control images", "attention_maps.rst"),
    "diagonal.png": ("Self-attention diagonal on the text strip", "attention_diagonal.rst"),
    "layer_similarity.png": ("Layer-wise similarity, question vs control", "layer_similarity.rst"),
    "gap.png": ("Modality gap in Qwen2.5-VL", "modality_gap.rst"),
    "pca.png": ("Image and caption tokens, first two principal components", "modality_gap_pca.rst"),
}
# Result figures (pii.scoring.figures), each shown right after the table it draws: table name -> (title, caption file).
RESULT_FIGURES = {
    "table1_pope": ("Table 1 as a figure · accuracy and yes-ratio per setting", "table1_pope_figure.rst"),
    "table2_chair": ("Table 2 as a figure · CHAIRs and CHAIRi per setting", "table2_chair_figure.rst"),
}


def result_figure(name: str, path: str) -> Figure:
    title, caption_file = RESULT_FIGURES.get(name, (name.replace("_", " ").capitalize(), ""))
    return Figure(path, title, caption_html(caption_file))


def analysis_figures(paths: list[str]) -> list[Figure]:
    order = {name: i for i, name in enumerate(FIGURES)}
    out = []
    for path in sorted(paths, key=lambda p: order.get(Path(p).name, len(order))):
        title, caption_file = FIGURES.get(Path(path).name, (Path(path).stem.replace("_", " ").capitalize(), ""))
        out.append(Figure(path, title, caption_html(caption_file)))
    return out


# --- facts about the run -----------------------------------------------------------------------------------------

def run_facts(inference_paths: list[str]) -> dict:
    """Per model: the checkpoint, revision, dtype, device and backend, and the library versions seen across all
    inference files (normally one version per library), from each file's metadata."""
    models: dict[str, dict] = {}
    versions: dict[str, set] = {}
    jobs = 0
    for path in inference_paths:
        meta = read_metadata(path)
        jobs += 1
        model = meta.get("model") or Path(path).parent.parent.name  # .../{model}/{setting}/r{repeat}.parquet
        entry = models.setdefault(model, {"files": 0})
        entry["files"] += 1
        for key in ("model_id", "revision", "commit_hash", "family", "dtype", "device", "gpu", "backend",
                    "batch_size"):
            if meta.get(key) is not None:
                entry.setdefault(key, meta[key])
        for lib, ver in (meta.get("versions") or {}).items():
            versions.setdefault(lib, set()).add(str(ver))
        if meta.get("python"):
            versions.setdefault("python", set()).add(str(meta["python"]))
    return {"models": models, "versions": {k: sorted(v) for k, v in sorted(versions.items())}, "jobs": jobs}


def run_summary(cfg: dict, models: list[str], settings: list[str], facts: dict, sizes: dict,
                config_digest: str) -> dict:
    """What the 'What was run' section shows: fact cards, one row per model, decoding, settings, libraries."""
    cards = [("Config hash", config_digest), ("Models", len(models)), ("Settings", len(settings)),
             ("Inference jobs", facts["jobs"]), ("Seed", cfg.get("seed"))]
    cards += [(f"{TASK_TITLES.get(t, t)} sample", f"{n:,}") for t, n in sizes.items()]
    cards = [{"label": label, "value": str(value), "code": label == "Config hash"} for label, value in cards]
    rows = []
    for key in models:
        entry = cfg.get("models", {}).get(key, {})
        seen = facts["models"].get(key, {})
        rows.append([key, entry.get("family", ""), seen.get("model_id", entry.get("path", "")),
                     seen.get("commit_hash") or seen.get("revision") or entry.get("revision") or "",
                     seen.get("dtype", entry.get("dtype", "")), seen.get("gpu") or seen.get("device", ""),
                     seen.get("backend", "")])
    return {"cards": cards, "model_header": ["Model", "Family", "Checkpoint", "Revision", "dtype", "Device", "Backend"],
            "model_rows": [[str(c) for c in row] for row in rows], "settings": settings,
            "decoding": ", ".join(f"{k}={v}" for k, v in sorted(cfg.get("decoding", {}).items())),
            "versions": ", ".join(f"{lib} {'/'.join(v)}" for lib, v in facts["versions"].items()),
            "samples": ", ".join(f"{TASK_TITLES.get(t, t)} {n}" for t, n in sizes.items())}


# --- rendering ---------------------------------------------------------------------------------------------------

def templates(autoescape: bool) -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(REPORT_DIR), autoescape=autoescape,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True)
    env.filters.update(markup=inline_markup, wbr=break_underscores,
                       mdcell=lambda text: str(text).replace("|", "\\|").replace("\n", " "))
    return env


def render_page(run: dict, n_models: int, config_digest: str, intro: Markup, tables: list[TableSection],
                result_figures: list[Figure], contact_sheets: list[Figure], figures: list[Figure],
                strip: list[TableSection] = ()) -> str:
    """The page (index.html.j2); ``result_figures`` are those whose table is not shown, ``strip`` the sections on
    what the models saw of the strip and whether they can read it."""
    return templates(autoescape=True).get_template("index.html.j2").render(
        run=run, n_models=n_models, config_digest=config_digest, intro=intro, tables=tables,
        result_figures=result_figures, strip=list(strip), contact_intro=caption_html("contact_sheet.rst"),
        contact_sheets=contact_sheets, figures=figures)


def render_summary(run: dict, cfg: dict, config_digest: str, tables: list[TableSection],
                   result_figures: list[Figure], other_figures: list[str], md_dir: str | Path,
                   strip: list[TableSection] = ()) -> str:
    """The Markdown summary (summary.md.j2): figures are linked relative to ``md_dir`` (the summary's folder)."""
    def link(path: str) -> str:
        return Path(os.path.relpath(path, md_dir)).as_posix()

    return templates(autoescape=False).get_template("summary.md.j2").render(
        run=run, seed=cfg.get("seed"), config_digest=config_digest, tables=tables, result_figures=result_figures,
        strip=list(strip), other_figures=other_figures, link=link)


def table_sections(names: list[str], metrics: dict[str, tuple[list[dict], dict]], paper_csvs: dict[str, list[dict]],
                   models: list[str], settings: list[str], labels: dict[str, str], rows_of: dict[str, str],
                   result_figures: dict[str, str]) -> list[TableSection]:
    """The results tables in the order given, each with its caption and (popped from ``result_figures``) figure."""
    sections = []
    for name in names:
        spec = TABLES.get(name)
        if spec is None and f"{name}_metrics" in metrics:  # a further POPE task (pope_random): Table 1's layout
            spec = replace(TABLES["table1_pope"], metrics=f"{name}_metrics")
        if spec is None:
            raise PipelineError(f"report: no layout for table '{name}' (known: {', '.join(TABLES)})")
        if spec.metrics not in metrics:
            raise PipelineError(f"report: table '{name}' needs results/scores/{spec.metrics}.parquet as an input")
        rows, meta = metrics[spec.metrics]
        confidence = number((meta.get("scoring") or {}).get("confidence"))
        if not math.isfinite(confidence):
            raise PipelineError(f"{spec.metrics}: no scoring.confidence in the table's metadata; rerun scoring")
        paper_rows = {r.get("setting", ""): r for r in paper_csvs.get(name, [])}
        blocks = result_blocks(spec, rows, paper_rows, models, settings, labels, rows_of, confidence, meta)
        figure = result_figure(name, result_figures.pop(name)) if name in result_figures else None
        title = TABLE_TITLES.get(name, f"{name} · POPE in Table 1's layout (the paper reports adversarial only)")
        sections.append(TableSection(name, title,
                                     caption_html("tables.rst", {"table": name}), blocks, figure))
    return sections


def write_report(*, metrics_files: list[str], table_csvs: list[str], paper_file: str, result_figures: list[str],
                 invariance: list[str], contact_sheets: list[str], figures: list[str], inference: list[str],
                 samples: list[str], models: list[str], settings: list[str], seed: int, model_entries: dict,
                 setting_entries: dict, decoding: dict, config_digest: str, pope_tasks: list[str], html_path: str,
                 md_path: str) -> None:
    """The page and the Markdown summary from the run's files (the report rule's inputs) and what was run (its
    params): ``models`` and ``settings`` in config order, ``config_digest`` of the experiment's settings."""
    models, settings = list(models), list(settings)  # config order
    # the entries the page shows; the digest fingerprints the experiment's settings, not how files are fetched
    cfg = {"seed": seed, "models": model_entries, "settings": setting_entries, "decoding": decoding}
    digest = config_digest
    # a further POPE task's metrics (pope_random_metrics) have the POPE metrics schema
    schema_of = {f"{task}_metrics": "pope_metrics" for task in pope_tasks}
    metrics = {Path(f).stem: read_checked(f, schema_of.get(Path(f).stem, Path(f).stem)) for f in metrics_files}
    paper_csvs = {Path(p).stem: read_csv_rows(p) for p in table_csvs
                  if Path(p).stem not in METRICS_SECTIONS}
    paper = read_paper(paper_file)
    labels = model_labels({m: cfg.get("models", {}).get(m, {}) for m in models}, paper)
    rows_of = setting_labels(settings, paper)
    result_figures = {Path(p).stem: p for p in result_figures}
    sections = table_sections(list(paper_csvs), metrics, paper_csvs, models, settings, labels, rows_of,
                              result_figures)
    strip = []
    if "visibility_metrics" in metrics:
        strip.append(visibility_section(*metrics["visibility_metrics"], models, question_settings(cfg, settings),
                                        labels, rows_of))
    if "transcribe_metrics" in metrics:
        strip.append(transcribe_section(*metrics["transcribe_metrics"], models, labels))
    if invariance:
        strip.append(invariance_section(list(invariance), models, labels))
    unplaced = [result_figure(name, path) for name, path in result_figures.items()]  # figures without their table
    contact_sheets = [Figure(p, f"Contact sheet · {TASK_TITLES.get(t, t)}")
                      for p in contact_sheets for t in [Path(p).stem.removeprefix("contact_sheet_")]]
    figures = analysis_figures(list(figures))
    facts = run_facts(list(inference))
    run = run_summary(cfg, models, settings, facts, sample_sizes(list(samples)), digest)
    page = render_page(run, len(models), digest, caption_html("workflow.rst"), sections, unplaced,
                       contact_sheets, figures, strip)
    summary = render_summary(run, cfg, digest, sections, unplaced,
                             [f.path for f in contact_sheets] + [f.path for f in figures], Path(md_path).parent,
                             strip)
    with atomic_output(html_path, "w") as f:
        f.write(page)
    with atomic_output(md_path, "w") as f:
        f.write(summary)
    n_figures = len(figures) + len(contact_sheets) + len(unplaced) + sum(s.figure is not None for s in sections)
    log.info("wrote %s (%.1f MB, %d tables, %d figures) and %s", html_path, len(page) / 1e6,
             len(sections) + len(strip), n_figures, md_path)
    log.debug("facts: %s", json.dumps(facts, default=str))
