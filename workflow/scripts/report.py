"""Stage: report. One self-contained page (results/report/index.html, images embedded) and a Markdown summary.

The page shows what was run (config hash, models with their revisions, sample sizes, library versions read from
the inference files' metadata), Table 1 and Table 2 next to the paper's numbers, each followed by its figure
(plot_results.py), the contact sheets of the rendered variants and the analysis figures, each with the caption the
workflow ships in workflow/report/*.rst.
"""


import base64
import html
import json
import os
import re
import types
from pathlib import Path

import jinja2
import pipeline_io
from pipeline_io import PipelineError, atomic_output, log, params_config, read_metadata, run_main

REPORT_DIR = Path(pipeline_io.__file__).resolve().parent.parent / "report"

# Analysis figures in reading order: file name -> (title, caption file in workflow/report/).
FIGURES = {
    "attention_maps.png": ("CLIP attention on question vs control images", "attention_maps.rst"),
    "diagonal.png": ("Self-attention diagonal on the text strip", "attention_diagonal.rst"),
    "layer_similarity.png": ("Layer-wise similarity, question vs control", "layer_similarity.rst"),
    "gap.png": ("Modality gap in Qwen2.5-VL", "modality_gap.rst"),
    "pca.png": ("Image and caption tokens, first two principal components", "modality_gap_pca.rst"),
}
# Result figures (plot_results.py), each shown right after the table it draws: table name -> (title, caption file).
RESULT_FIGURES = {
    "table1_pope": ("Table 1 as a figure · accuracy and yes-ratio per setting", "table1_pope_figure.rst"),
    "table2_chair": ("Table 2 as a figure · CHAIRs and CHAIRi per setting", "table2_chair_figure.rst"),
}
TABLE_TITLES = {"table1_pope": "Table 1 · POPE adversarial", "pope_pyes": "POPE · P(yes) at the first token",
                "table2_chair": "Table 2 · CHAIR on detailed captions"}
TASK_TITLES = {"pope": "POPE (yes/no questions)", "caption": "Captions (CHAIR)"}


# --- small text helpers ------------------------------------------------------------------------------------------

def inline_markup(text: str) -> str:
    """Escape HTML, then turn rst/markdown inline markup (``code``, `code`, **bold**, *em*) into tags."""
    out = html.escape(text, quote=False)
    out = re.sub(r"``(.+?)``", r"<code>\1</code>", out)
    out = re.sub(r"`([^`]+?)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    out = re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"<em>\1</em>", out)
    return out


def caption_html(name: str, context: dict | None = None) -> str:
    """A caption file of workflow/report as HTML paragraphs, rendered with Jinja2 as `snakemake --report` renders
    it (``snakemake.wildcards`` holds ``context``). Missing file: empty."""
    path = REPORT_DIR / name
    if not path.exists():
        return ""
    wildcards = types.SimpleNamespace(**(context or {}))
    text = jinja2.Template(path.read_text(encoding="utf-8")).render(
        snakemake=types.SimpleNamespace(wildcards=wildcards))
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if p.strip()]
    return "".join(f"<p>{inline_markup(p)}</p>" for p in paragraphs)


def markdown_to_html(md: str) -> str:
    """The subset of Markdown the table files use: '#' headings (dropped: the page has its own), pipe tables
    (right-aligned numbers, 'paper' columns marked), and paragraphs."""
    blocks, table, para = [], [], []

    def flush_para():
        if para:
            blocks.append(f"<p class='note'>{inline_markup(' '.join(para))}</p>")
            para.clear()

    def flush_table():
        if table:
            blocks.append(pipe_table_html(table))
            table.clear()

    for line in md.splitlines():
        stripped = line.strip()
        if stripped.startswith("|"):
            flush_para()
            table.append(stripped)
        elif not stripped:
            flush_para()
            flush_table()
        elif stripped.startswith("#"):
            flush_para()
            flush_table()
        else:
            flush_table()
            para.append(stripped)
    flush_para()
    flush_table()
    return "\n".join(blocks)


def _cells(row: str) -> list[str]:
    return [c.strip() for c in row.strip().strip("|").split("|")]


def model_groups(header: list[str]) -> list[tuple[str, list[int]]] | None:
    """Split a wide results header (``Setting | <Model> <metric> | paper | <Model> <metric> | ...``) into
    (model, column indices) groups, or None when the table is not of that shape (fewer than two models).

    A header's first word is a model when another first word heads the same metric (the rest of a header);
    columns whose first word is not a model (``paper``, ``unknown / n``) belong to the model column before them."""
    rests: dict[str, set[str]] = {}
    for h in header[1:]:
        word, _, rest = h.partition(" ")
        if h.lower() != "paper" and rest:
            rests.setdefault(word, set()).add(rest)
    models = {w for w, r in rests.items() if any(r & other for o, other in rests.items() if o != w)}
    if len(models) < 2 or header[1].partition(" ")[0] not in models:
        return None
    groups: list[tuple[str, list[int]]] = []
    for i, h in enumerate(header[1:], start=1):
        word = h.partition(" ")[0]
        if word in models and h.lower() != "paper" and (not groups or groups[-1][0] != word):
            groups.append((word, []))
        groups[-1][1].append(i)
    return groups


def result_cell_html(text: str) -> str:
    """``50.0 [38.3, 63.3] · Δ +1.7, p=0.012``: the value, its interval in small print, the change to the baseline
    on a second line (emphasised when p < 0.05). Anything else: escaped as it is."""
    m = re.fullmatch(r"(?P<v>[-−+\d.]+)\s*(?P<ci>\[[^\]]*\])?\s*(?:·\s*(?P<d>Δ\s*[^,]+?)(?:,\s*p=(?P<p>[\d.]+))?)?",
                     text.strip())
    if not m:
        return inline_markup(text)
    out = f"<span class='v'>{html.escape(m['v'])}</span>"
    if m["ci"]:
        out += f" <span class='ci'>{html.escape(m['ci'])}</span>"
    if m["d"]:
        significant = m["p"] is not None and float(m["p"]) < 0.05
        delta = html.escape(m["d"]) + (f" · p={html.escape(m['p'])}" if m["p"] else "")
        out += f"<br><span class='delta{' sig' if significant else ''}'>{delta}</span>"
    return out


def grouped_tables_html(header: list[str], body: list[list[str]], groups: list[tuple[str, list[int]]]) -> str:
    """One compact table per model (rows: settings; columns: its metrics, ours then the paper's)."""
    narrow = max(len(cols) for _, cols in groups) <= 2
    parts = [f"<div class='model-tables{' tiles' if narrow else ''}'>"]
    for model, cols in groups:
        head = [f"<th class='label'>{inline_markup(header[0])}</th>"]
        for i in cols:
            if header[i].lower() == "paper":
                head.append("<th class='paper'>paper</th>")
            else:
                word, _, rest = header[i].partition(" ")
                head.append(f"<th>{inline_markup(rest if word == model else header[i])}</th>")
        rows = []
        for cells in body:
            label = inline_markup(cells[0]).replace("_", "_<wbr>")  # long setting names break at underscores
            tds = [f"<td class='label'>{label}</td>"]
            for i in cols:
                c = cells[i] if i < len(cells) else ""
                if header[i].lower() == "paper":
                    tds.append(f"<td class='paper'>{inline_markup(c)}</td>")
                else:
                    tds.append(f"<td class='num'>{result_cell_html(c)}</td>")
            rows.append("<tr>" + "".join(tds) + "</tr>")
        parts.append(f"<div class='model-table'><h4>{inline_markup(model)}</h4><div class='table-wrap'>"
                     f"<table class='results'><thead><tr>{''.join(head)}</tr></thead>"
                     f"<tbody>{''.join(rows)}</tbody></table></div></div>")
    parts.append("</div>")
    return "".join(parts)


def pipe_table_html(rows: list[str]) -> str:
    header = _cells(rows[0])
    body = [_cells(r) for r in rows[1:] if not re.fullmatch(r"\|?[\s:|-]+\|?", r)]
    groups = model_groups(header)
    if groups:
        return grouped_tables_html(header, body, groups)
    paper_cols = {i for i, h in enumerate(header) if h.lower() == "paper"}
    head = "".join(f"<th class='{'paper' if i in paper_cols else ''}'>{inline_markup(h)}</th>"
                   for i, h in enumerate(header))
    lines = []
    for cells in body:
        tds = []
        for i, c in enumerate(cells):
            cls = "paper" if i in paper_cols else ("label" if i == 0 else "num")
            tds.append(f"<td class='{cls}'>{inline_markup(c)}</td>")
        lines.append("<tr>" + "".join(tds) + "</tr>")
    return (f"<div class='table-wrap'><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(lines)}</tbody></table></div>")


def data_uri(path: str | Path) -> str:
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"{path}: figure not found; rerun the rule that writes it")
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


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


def sample_sizes(sample_paths: list[str], tasks: list[str]) -> dict[str, int]:
    sizes = {}
    for task, path in zip(tasks, sample_paths, strict=True):
        sizes[task] = pipeline_io.read_table(path).shape[0]
    return sizes


# --- the page -----------------------------------------------------------------------------------------------------

CSS = """
:root { --ink:#1d2330; --muted:#5d6675; --line:#e3e6ec; --accent:#2f5fd0; --paper:#fff6e0; --bg:#f6f7fa; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.55 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color:var(--ink); background:var(--bg); }
header { background:linear-gradient(120deg,#1f3c88,#2f5fd0); color:#fff; padding:34px 0 28px; }
header h1 { margin:0 0 6px; font-size:26px; font-weight:650; }
header p { margin:0; opacity:.9; max-width:860px; }
main, .wrap { max-width:1120px; margin:0 auto; padding:0 24px; }
nav { margin-top:14px; font-size:14px; }
nav a { color:#fff; opacity:.85; margin-right:16px; text-decoration:none; border-bottom:1px solid rgba(255,255,255,.4); }
section { background:#fff; border:1px solid var(--line); border-radius:10px; padding:22px 26px; margin:22px 0; }
h2 { margin:0 0 12px; font-size:20px; }
h3 { margin:22px 0 8px; font-size:16px; }
code { background:#eef1f6; padding:1px 5px; border-radius:4px; font-size:13px; }
.facts { display:grid; grid-template-columns:repeat(auto-fit,minmax(190px,1fr)); gap:12px; margin:6px 0 14px; }
.fact { border:1px solid var(--line); border-radius:8px; padding:10px 12px; }
.fact b { display:block; font-size:12px; text-transform:uppercase; letter-spacing:.04em; color:var(--muted); }
.fact span { font-size:17px; font-weight:600; }
.table-wrap { overflow-x:auto; margin:8px 0; }
table { border-collapse:collapse; font-size:13px; width:100%; }
th, td { padding:6px 9px; border-bottom:1px solid var(--line); white-space:nowrap; }
th { text-align:right; background:#f0f3f9; font-weight:600; }
th:first-child, td.label, table.plain th { text-align:left; }
td.num { text-align:right; font-variant-numeric:tabular-nums; }
th.paper, td.paper { background:var(--paper); text-align:right; color:#6b4e00; }
tbody tr:hover td { background:#f4f7ff; }
p.note { color:var(--muted); font-size:13px; }
.model-tables { display:grid; grid-template-columns:1fr; gap:6px 22px; margin:6px 0 4px; }
.model-tables.tiles { grid-template-columns:repeat(auto-fit,minmax(300px,1fr)); }
.model-table h4 { margin:12px 0 2px; font-size:14px; color:var(--accent); }
table.results td { vertical-align:top; }
table.results td.label { width:30%; }
table.results td.num { line-height:1.35; }
.tiles table.results td.label { width:auto; white-space:normal; }
.v { font-weight:600; }
.ci { color:var(--muted); font-size:11.5px; }
.delta { color:var(--muted); font-size:11.5px; }
.delta.sig { color:#a3341f; font-weight:600; }
figure { margin:18px 0 26px; }
figure img { max-width:100%; border:1px solid var(--line); border-radius:6px; background:#fff; }
figcaption { color:var(--muted); font-size:13.5px; max-width:900px; }
figcaption strong.title { color:var(--ink); display:block; font-size:15px; margin-bottom:3px; }
.legend { font-size:13px; color:var(--muted); }
.legend i { display:inline-block; width:12px; height:12px; background:var(--paper); border:1px solid #e8d9a8;
            vertical-align:-1px; margin-right:4px; }
footer { color:var(--muted); font-size:12px; padding:10px 0 40px; }
"""


def facts_html(cfg: dict, facts: dict, sizes: dict, config_digest: str) -> str:
    settings = list(cfg.get("settings", {}))
    cards = [("Config hash", f"<code>{html.escape(config_digest)}</code>"),
             ("Models", str(len(cfg.get("models", {})))), ("Settings", str(len(settings))),
             ("Inference jobs", str(facts["jobs"])), ("Seed", str(cfg.get("seed")))]
    cards += [(f"{TASK_TITLES.get(t, t)} sample", f"{n:,}") for t, n in sizes.items()]
    out = ["<div class='facts'>"]
    out += [f"<div class='fact'><b>{html.escape(k)}</b><span>{v}</span></div>" for k, v in cards]
    out.append("</div>")
    rows = []
    for key, entry in cfg.get("models", {}).items():
        seen = facts["models"].get(key, {})
        rows.append([key, entry.get("family", ""), seen.get("model_id", entry.get("path", "")),
                     seen.get("commit_hash") or seen.get("revision") or entry.get("revision") or "",
                     seen.get("dtype", entry.get("dtype", "")), seen.get("gpu") or seen.get("device", ""),
                     seen.get("backend", "")])
    header = ["Model", "Family", "Checkpoint", "Revision", "dtype", "Device", "Backend"]
    out.append(simple_table(header, rows))
    decoding = cfg.get("decoding", {})
    dec = ", ".join(f"{k}={v}" for k, v in sorted(decoding.items()))
    vers = ", ".join(f"{lib} {'/'.join(v)}" for lib, v in facts["versions"].items()) or "not recorded"
    out.append(f"<p><b>Decoding:</b> {html.escape(dec)}. <b>Settings:</b> "
               + ", ".join(f"<code>{html.escape(s)}</code>" for s in settings)
               + f".<br><b>Libraries (from the inference metadata):</b> {html.escape(vers)}.</p>")
    return "\n".join(out)


def simple_table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td class='label'>{html.escape(str(c))}</td>" for c in r) + "</tr>"
                   for r in rows)
    return (f"<div class='table-wrap'><table class='plain'><thead><tr>{head}</tr></thead><tbody>{body}</tbody>"
            "</table></div>")


def figure_html(path: str, title: str, caption: str) -> str:
    return (f"<figure><img src='{data_uri(path)}' alt='{html.escape(title)}'>"
            f"<figcaption><strong class='title'>{html.escape(title)}</strong>{caption}</figcaption></figure>")


def result_figure_html(name: str, path: str) -> str:
    title, caption_file = RESULT_FIGURES.get(name, (name.replace("_", " ").capitalize(), ""))
    return figure_html(path, title, caption_html(caption_file) if caption_file else "")


def build_page(cfg: dict, facts: dict, sizes: dict, config_digest: str, tables: dict[str, str],
               contact_sheets: dict[str, str], figures: list[str],
               result_figures: dict[str, str] | None = None) -> str:
    """The page; ``result_figures`` (table name -> PNG) are shown right after the table they draw."""
    result_figures = dict(result_figures or {})
    nav = ["<a href='#run'>What was run</a>"]
    sections = [f"<section id='run'><h2>What was run</h2>{facts_html(cfg, facts, sizes, config_digest)}</section>"]
    if tables or result_figures:
        nav.append("<a href='#tables'>Tables</a>")
        parts = ["<section id='tables'><h2>Results next to the paper</h2>",
                 "<p class='legend'><i></i>shaded columns: the paper's published numbers (— where it gives none)</p>"]
        for name, md in tables.items():
            parts.append(f"<h3>{html.escape(TABLE_TITLES.get(name, name))}</h3>")
            parts.append(caption_html("tables.rst", {"table": name}))
            parts.append(markdown_to_html(md))
            if name in result_figures:
                parts.append(result_figure_html(name, result_figures.pop(name)))
        parts += [result_figure_html(name, path) for name, path in result_figures.items()]  # without their table
        parts.append("</section>")
        sections.append("\n".join(parts))
    if contact_sheets:
        nav.append("<a href='#images'>Images</a>")
        intro = caption_html("contact_sheet.rst")
        parts = ["<section id='images'><h2>What the models see</h2>", intro]
        for task, path in contact_sheets.items():
            parts.append(figure_html(path, f"Contact sheet · {TASK_TITLES.get(task, task)}", ""))
        parts.append("</section>")
        sections.append("\n".join(parts))
    if figures:
        nav.append("<a href='#analyses'>Analyses</a>")
        parts = ["<section id='analyses'><h2>Why: encoder analyses</h2>"]
        order = {name: i for i, name in enumerate(FIGURES)}
        for path in sorted(figures, key=lambda p: order.get(Path(p).name, len(order))):
            title, caption_file = FIGURES.get(Path(path).name, (Path(path).stem.replace("_", " ").capitalize(), ""))
            parts.append(figure_html(path, title, caption_html(caption_file) if caption_file else ""))
        parts.append("</section>")
        sections.append("\n".join(parts))
    intro = caption_html("workflow.rst")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Prompt-in-Image: hallucination report</title><style>{CSS}</style></head>
<body>
<header><div class="wrap"><h1>Cure or Poison? Prompt-in-Image hallucination study</h1>
<p>Questions rendered into the image vs given as text: POPE and CHAIR for {len(cfg.get("models", {}))} vision-language
models, with encoder analyses.</p><nav>{''.join(nav)}</nav></div></header>
<main>
<section id="about"><h2>About this study</h2>{intro}</section>
{''.join(sections)}
</main>
<footer class="wrap">Config {html.escape(config_digest)} · self-contained page (all images embedded) ·
written by the workflow's <code>report</code> rule</footer>
</body></html>
"""


def build_markdown(cfg: dict, facts: dict, sizes: dict, config_digest: str, tables: dict[str, str],
                   figures: list[str], contact_sheets: dict[str, str], result_figures: dict[str, str] | None = None,
                   md_dir: str | Path = ".") -> str:
    """The summary; ``result_figures`` (table name -> PNG) are linked as images after their table, relative to
    ``md_dir`` (the summary's folder)."""
    result_figures = dict(result_figures or {})

    def image(name: str, path: str) -> list[str]:
        title = RESULT_FIGURES.get(name, (name,))[0]
        return ["", f"![{title}]({Path(os.path.relpath(path, md_dir)).as_posix()})"]

    lines = ["# Prompt-in-Image hallucination study: summary", "", "## What was run", "",
             f"- Config hash: `{config_digest}`; seed {cfg.get('seed')}",
             "- Samples: " + ", ".join(f"{TASK_TITLES.get(t, t)} {n}" for t, n in sizes.items()),
             "- Settings: " + ", ".join(cfg.get("settings", {})),
             "- Decoding: " + ", ".join(f"{k}={v}" for k, v in sorted(cfg.get("decoding", {}).items())),
             "- Libraries: " + (", ".join(f"{k} {'/'.join(v)}" for k, v in facts["versions"].items()) or "n/a"),
             "", "| Model | Family | Checkpoint | Revision | dtype |", "|---|---|---|---|---|"]
    for key, entry in cfg.get("models", {}).items():
        seen = facts["models"].get(key, {})
        lines.append(f"| {key} | {entry.get('family', '')} | {seen.get('model_id', entry.get('path', ''))} | "
                     f"{seen.get('commit_hash') or seen.get('revision') or entry.get('revision') or ''} | "
                     f"{seen.get('dtype', entry.get('dtype', ''))} |")
    for name, md in tables.items():
        body = "\n".join(ln for ln in md.splitlines() if not ln.startswith("# "))
        lines += ["", f"## {TABLE_TITLES.get(name, name)}", "", body.strip()]
        if name in result_figures:
            lines += image(name, result_figures.pop(name))
    for name, path in result_figures.items():
        lines += ["", f"## {RESULT_FIGURES.get(name, (name,))[0]}"] + image(name, path)
    if contact_sheets or figures:
        lines += ["", "## Figures", ""]
        lines += [f"- {p}" for p in list(contact_sheets.values()) + list(figures)]
    return "\n".join(lines) + "\n"


def main(smk) -> None:
    cfg = params_config(smk)
    tasks = list(smk.params.tasks)
    digest = pipeline_io.config_hash(cfg)  # the experiment's settings shown on the page, not how files are fetched
    tables = {Path(p).stem: Path(p).read_text(encoding="utf-8") for p in smk.input.tables}
    contact_sheets = {Path(p).stem.removeprefix("contact_sheet_"): p for p in smk.input.contact_sheets}
    figures = list(smk.input.figures)
    result_figures = {Path(p).stem: p for p in getattr(smk.input, "result_figures", [])}
    facts = run_facts(list(smk.input.inference))
    sizes = sample_sizes(list(smk.input.samples), tasks)
    page = build_page(cfg, facts, sizes, digest, tables, contact_sheets, figures, result_figures)
    with atomic_output(smk.output.html, "w") as f:
        f.write(page)
    with atomic_output(smk.output.md, "w") as f:
        f.write(build_markdown(cfg, facts, sizes, digest, tables, figures, contact_sheets, result_figures,
                               Path(smk.output.md).parent))
    log.info("wrote %s (%.1f MB, %d tables, %d figures) and %s", smk.output.html, len(page) / 1e6, len(tables),
             len(figures) + len(contact_sheets) + len(result_figures), smk.output.md)
    log.debug("facts: %s", json.dumps(facts, default=str))


if "snakemake" in globals():
    run_main(main, snakemake)
