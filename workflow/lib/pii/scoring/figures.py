"""Stage: scoring (figures). Table 1 (POPE) and Table 2 (CHAIR) drawn as point-range plots next to the paper.

For the rules ``plot_table1_pope`` (accuracy and yes-ratio) and ``plot_table2_chair`` (CHAIRs and CHAIRi), each with
its own script. One panel per metric; settings on the x axis in config order; per setting one point per model
(config order, one colour each, side by side) with its bootstrap interval from the metrics table's
``*_ci_low``/``*_ci_high`` columns; the paper's published number as a hollow diamond of the model's colour at the
same place, only where ``workflow/data/paper_numbers.yaml`` gives one. Units are the tables' (tables.TABLE1 /
tables.TABLE2: accuracy and CHAIR in %, yes-ratio a fraction), so ours and the paper's share an axis. A NaN value
draws no point; a NaN interval draws the point without a bar.

The data behind a figure come from ``plot_points`` (a plain data frame, one row per model x setting x metric), so
tests can compare the drawn artists with the table; every drawn artist carries a ``gid``
(``ours:<model>:<metric>``, ``interval:<model>:<metric>``, ``paper:<model>:<metric>``).
"""

import math
import textwrap

import matplotlib

matplotlib.use("Agg")  # files only; no display on a cluster node

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from pii.core.stage import log  # noqa: E402
from pii.core.tables import read_table, records_frame, save_figure  # noqa: E402
from pii.scoring.paper import match_paper_models  # noqa: E402
from pii.scoring.tables import TABLE1, TABLE2, read_paper  # noqa: E402

# Which table columns each figure draws (metric keys of tables.TABLE1 / TABLE2, whose labels and scales it reuses).
FIGURES = {
    "table1_pope": {"metrics": ("accuracy", "yes_ratio"), "spec": TABLE1, "schema": "pope_metrics",
                    "title": "Table 1 · POPE adversarial", "unit": "images resampled with all their questions",
                    "chance": {"accuracy": 50.0}, "ylabels": {"accuracy": "Accuracy (%)"}},
    "table2_chair": {"metrics": ("chair_s", "chair_i"), "spec": TABLE2, "schema": "chair_metrics",
                     "title": "Table 2 · CHAIR on detailed captions", "unit": "captions resampled, one per image",
                     "chance": {}, "ylabels": {}},
}
# Upper end of each metric's range in table units (for clipping the axis, never the data).
DOMAIN_TOP = {"accuracy": 100.0, "yes_ratio": 1.0, "chair_s": 100.0, "chair_i": 100.0}
CHANCE_STYLE = (0, (4, 3))
POINT_COLUMNS = ["model", "label", "colour", "setting", "metric", "x", "value", "low", "high", "paper"]
POINT_TYPES = {"model": pl.String, "label": pl.String, "colour": pl.Int64, "setting": pl.String, "metric": pl.String,
               "x": pl.Int64, "value": pl.Float64, "low": pl.Float64, "high": pl.Float64, "paper": pl.Float64}


def published_numbers(paper: dict, table_key: str) -> dict[tuple[str, str], dict]:
    """(paper's model key, our setting id) -> {metric: number} of one of the paper's tables, the paper's row names
    mapped to our setting ids through ``settings:`` as tables.build_table maps them."""
    setting_of_row = paper.get("settings") or {}
    published: dict[tuple[str, str], dict] = {}
    for theirs, rows in (paper.get(table_key) or {}).items():
        for row_name, values in (rows or {}).items():
            published[(theirs, setting_of_row.get(row_name, row_name))] = values or {}
    return published


def plot_points(metrics: pl.DataFrame, paper: dict, table_key: str, models: dict[str, dict],
                settings: list[str]) -> pl.DataFrame:
    """One row per model x setting x drawn metric, in table units: ``x`` (the setting's position, config order),
    ``value``, ``low``, ``high`` (ours; NaN when missing) and ``paper`` (NaN where the paper gives no number);
    ``label`` is the paper's name of the model where matched (as in the tables), ``colour`` the model's place in
    the config (so a model keeps its colour in both figures). Models and settings absent from the metrics table
    are left out, as in the tables."""
    fig = FIGURES[table_key]
    scales = {metric: scale for metric, _, scale, _ in fig["spec"]}
    present_models = [m for m in models if m in set(metrics["model"])]
    present_settings = [s for s in settings if s in set(metrics["setting"])]
    matched = match_paper_models({m: models[m] for m in present_models}, paper.get("models") or {})
    labels = {m: paper["models"][matched[m]].get("label", m) if m in matched else m for m in present_models}
    published = published_numbers(paper, table_key)
    by_key = {(r["model"], r["setting"]): r for r in metrics.iter_rows(named=True)}

    def number(row, column, scale):
        value = row.get(column) if row is not None else None
        return math.nan if value is None else float(value) * scale  # NaN stays NaN

    rows = []
    for model in present_models:
        for x, setting in enumerate(present_settings):
            r = by_key.get((model, setting))
            theirs = published.get((matched.get(model), setting), {})
            for metric in fig["metrics"]:
                scale = scales[metric]
                p = theirs.get(metric)
                rows.append({"model": model, "label": labels[model], "colour": list(models).index(model),
                             "setting": setting, "metric": metric,
                             "x": x, "value": number(r, metric, scale), "low": number(r, f"{metric}_ci_low", scale),
                             "high": number(r, f"{metric}_ci_high", scale),
                             "paper": math.nan if p is None else float(p)})
    return records_frame(rows, POINT_COLUMNS, POINT_TYPES)


def setting_label(setting: str, paper: dict, width: int = 16) -> str:
    """An x tick label: the setting id broken at underscores into lines of about ``width`` characters, with the
    paper's row name below it in brackets when the two differ by more than case."""
    lines, line = [], ""
    for part in setting.split("_"):
        candidate = f"{line}_{part}" if line else part
        if line and len(candidate) > width:
            lines.append(line + "_")
            line = part
        else:
            line = candidate
    lines.append(line)
    names = [theirs for theirs, ours in (paper.get("settings") or {}).items()
             if ours == setting and theirs.lower() != setting.lower()]
    if names:
        lines.append(f"({', '.join(names)})")
    return "\n".join(lines)


def draw_figure(points: pl.DataFrame, table_key: str, settings: list[str], paper: dict, confidence: float):
    """The figure (returned, not saved): one panel per metric of ``FIGURES[table_key]``."""
    fig_spec = FIGURES[table_key]
    labels = {metric: label for metric, label, _, _ in fig_spec["spec"]} | fig_spec["ylabels"]
    metrics = fig_spec["metrics"]
    present_settings = [s for s in settings if s in set(points["setting"])]
    models = list(dict.fromkeys(points["model"]))
    n_models, n_settings = len(models), max(len(present_settings), 1)
    colours = dict(zip(points["model"], points["colour"], strict=False))
    colors = {m: plt.get_cmap("tab10")(int(colours[m]) % 10) for m in models}
    step = min(0.8 / max(n_models, 1), 0.22)  # side-by-side offset of the models within a setting
    offsets = {m: (i - (n_models - 1) / 2) * step for i, m in enumerate(models)}

    width = min(max(4.6 + 1.05 * n_settings, 7.0), 15.0)
    fig, axes = plt.subplots(len(metrics), 1, figsize=(width, 2.7 * len(metrics) + 0.9), sharex=True,
                             squeeze=False, layout="constrained")
    axes = axes[:, 0]
    for ax, metric in zip(axes, metrics, strict=True):
        rows = points.filter(pl.col("metric") == metric)
        for model in models:
            mrows = rows.filter(pl.col("model") == model)
            x = mrows["x"].to_numpy().astype(float) + offsets[model]
            value, low, high = (mrows[c].to_numpy().astype(float) for c in ("value", "low", "high"))
            has_bar = np.isfinite(value) & np.isfinite(low) & np.isfinite(high)
            ax.vlines(x[has_bar], low[has_bar], high[has_bar], color=colors[model], lw=1.8, alpha=0.85,
                      gid=f"interval:{model}:{metric}", zorder=2)
            ok = np.isfinite(value)
            ax.plot(x[ok], value[ok], "o", color=colors[model], ms=6.5, mec="white", mew=0.8,
                    gid=f"ours:{model}:{metric}", zorder=3)
            theirs = mrows["paper"].to_numpy().astype(float)
            has_paper = np.isfinite(theirs)
            ax.plot(x[has_paper], theirs[has_paper], "D", mfc="none", mec=colors[model], mew=1.6, ms=8.5,
                    gid=f"paper:{model}:{metric}", zorder=4)
        chance = fig_spec["chance"].get(metric)
        if chance is not None:
            ax.axhline(chance, color="0.45", lw=0.8, ls=CHANCE_STYLE, zorder=1, gid=f"chance:{metric}")
        ax.set_ylabel(labels[metric])
        _limits(ax, rows, metric, chance)
        ax.grid(axis="y", color="0.9", lw=0.8, zorder=0)
        ax.set_axisbelow(True)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        for x in range(1, n_settings):  # faint separators between settings
            ax.axvline(x - 0.5, color="0.93", lw=0.8, zorder=0)
        if rows.is_empty() or not np.isfinite(rows["value"].to_numpy().astype(float)).any():
            ax.text(0.5, 0.5, "no values", transform=ax.transAxes, ha="center", va="center", color="0.5")
    axes[-1].set_xticks(range(len(present_settings)))
    axes[-1].set_xticklabels([setting_label(s, paper) for s in present_settings], fontsize=9)
    axes[-1].set_xlim(-0.5, n_settings - 0.5)

    labels_of = dict(zip(points["model"], points["label"], strict=False))
    handles = [Line2D([], [], color=colors[m], marker="o", ms=7, mec="white", ls="none",
                      label=labels_of[m]) for m in models]  # the paper's name where matched, as in the tables
    if np.isfinite(points["paper"].to_numpy().astype(float)).any():
        handles.append(Line2D([], [], ls="none", marker="D", mfc="none", mec="0.3", mew=1.6, ms=8.5,
                              label="paper (model's colour)"))
    if fig_spec["chance"]:
        handles.append(Line2D([], [], color="0.45", lw=0.8, ls=CHANCE_STYLE, label="chance (50%)"))
    pct = round(confidence * 100)
    note = textwrap.fill(f"ours: points with {pct}% percentile bootstrap intervals, {fig_spec['unit']}",
                         int(width * 13))
    fig.suptitle(f"{fig_spec['title']}\n{note}", fontsize=10, x=0.01, ha="left", linespacing=1.4)
    if handles:
        _add_legend(fig, handles)
    return fig


def _add_legend(fig, handles) -> None:
    """The legend below the panels, in as many columns as fit the figure's width (measured, not guessed)."""
    renderer = fig.canvas.get_renderer()
    for ncol in range(len(handles), 0, -1):
        legend = fig.legend(handles=handles, loc="outside lower center", ncol=ncol, frameon=False, fontsize=9,
                            handletextpad=0.4, columnspacing=1.4)
        if ncol == 1 or legend.get_window_extent(renderer).width <= 0.97 * fig.bbox.width:
            return
        legend.remove()


def _limits(ax, rows: pl.DataFrame, metric: str, chance: float | None) -> None:
    """Y range over ours, the intervals, the paper's numbers and the chance line, padded, clipped to the metric's
    domain (0 .. 100% or 1)."""
    values = rows.select("value", "low", "high", "paper").to_numpy().astype(float).ravel()
    values = values[np.isfinite(values)]
    if chance is not None:
        values = np.append(values, chance)
    top = DOMAIN_TOP.get(metric)
    if values.size == 0:
        ax.set_ylim(0, top if top else 1)
        return
    lo, hi = float(values.min()), float(values.max())
    if top is not None:
        lo, hi = max(lo, 0.0), min(hi, top)
    pad = max((hi - lo) * 0.08, (top or max(abs(hi), 1.0)) * 0.02)
    ax.set_ylim(lo - pad, hi + pad)  # the pad may pass the domain's ends, so points there are not cut


def figure_for(metrics: pl.DataFrame, paper: dict, table_key: str, models: dict[str, dict], settings: list[str],
               confidence: float):
    """(figure, points) for one table: the points as ``plot_points`` gives them, drawn by ``draw_figure``."""
    points = plot_points(metrics, paper, table_key, models, settings)
    return draw_figure(points, table_key, settings, paper, confidence), points


def plot_table(table_key: str, metrics_path: str, paper_path: str, png_path: str, models: dict[str, dict],
               settings: list[str], confidence: float) -> None:
    """Draw one table's figure from its metrics table and the paper's numbers, and save it as PNG."""
    metrics = read_table(metrics_path, FIGURES[table_key]["schema"])
    fig, points = figure_for(metrics, read_paper(paper_path), table_key, models, settings, confidence)
    save_figure(fig, png_path, dpi=130)
    drawn = int(np.isfinite(points["value"].to_numpy()).sum())
    log.info("wrote %s: %d models x %d settings, %d points, %d paper numbers", png_path,
             points["model"].n_unique(), points["setting"].n_unique(), drawn,
             int(np.isfinite(points["paper"].to_numpy()).sum()))
