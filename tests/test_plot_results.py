"""Result figures: Table 1 (POPE) and Table 2 (CHAIR) drawn next to the paper's numbers, and their place in the
DAG and the report."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import plot_table1_pope
import plot_table2_chair
import polars as pl
import pytest
import report  # the rule script
import yaml
from conftest import ROOT, planned_rules, run_snakemake
from PIL import Image
from test_report import fake_inputs

from pii.core.stage import PipelineError
from pii.core.tables import load_table_schema, write_table
from pii.report.sections import caption_html
from pii.scoring import figures as pr

PAPER_FILE = ROOT / "workflow" / "data" / "paper_numbers.yaml"
SETTINGS = ["baseline", "control", "hybrid", "prompt_in_image", "prompt_in_image_instructed"]
# The paper's three columns (matched by key, as the demo's local paths are no hub ids) and a model it never saw.
MODELS = {
    "qwen2_5_vl": {"key": "qwen2_5_vl", "family": "qwen2_5_vl", "path": "resources/demo/models/qwen2_5_vl"},
    "llava_1_5": {"key": "llava_1_5", "family": "llava", "path": "resources/demo/models/llava"},
    "instructblip": {"key": "instructblip", "family": "instructblip", "path": "resources/demo/models/instructblip"},
    "newcomer": {"key": "newcomer", "family": "qwen2_5_vl", "path": "org/some-other-vlm"},
}
DRAWN = {"table1_pope": {"accuracy": 100.0, "yes_ratio": 1.0}, "table2_chair": {"chair_s": 100.0, "chair_i": 100.0}}
SCHEMA = {"table1_pope": "pope_metrics", "table2_chair": "chair_metrics"}


@pytest.fixture(scope="module")
def paper() -> dict:
    return yaml.safe_load(PAPER_FILE.read_text(encoding="utf-8"))


def synthetic_metrics(table: str, models=tuple(MODELS), settings=tuple(SETTINGS), seed: int = 0) -> pl.DataFrame:
    """A metrics table valid under its schema (every required column, built from the schema file itself), with
    distinct random values and intervals around them for the drawn metrics."""
    schema = load_table_schema(SCHEMA[table])
    rng = np.random.default_rng(seed)
    rows = []
    for model in models:
        for setting in settings:
            row = {}
            for col in schema["required"]:
                kinds = schema["properties"].get(col, {}).get("type", "number")
                kinds = [kinds] if isinstance(kinds, str) else kinds
                if col == "task":
                    row[col] = {"table1_pope": "pope", "table2_chair": "caption"}[table]
                elif "string" in kinds:
                    row[col] = {"model": model, "setting": setting, "baseline": "baseline"}.get(col, "x")
                elif "integer" in kinds:
                    row[col] = 60
                else:
                    row[col] = float(rng.uniform(0.0, 1.0))
            for metric in DRAWN[table]:
                value = float(rng.uniform(0.2, 0.8))
                row[metric] = value
                row[f"{metric}_ci_low"] = value - float(rng.uniform(0.01, 0.15))
                row[f"{metric}_ci_high"] = value + float(rng.uniform(0.01, 0.15))
            rows.append(row)
    return pl.DataFrame(rows)


def published(paper: dict, table: str) -> dict[tuple[str, str, str], float]:
    """(paper's model key, our setting, metric) -> the paper's number, read straight from the YAML."""
    ours = paper["settings"]
    return {(model, ours.get(row, row), metric): float(v)
            for model, rows in (paper.get(table) or {}).items() for row, values in rows.items()
            for metric, v in (values or {}).items()}


def artists(fig) -> dict[str, object]:
    """Every drawn artist with a gid, by gid (the panels' lines and interval collections)."""
    found = {}
    for ax in fig.axes:
        for artist in list(ax.lines) + list(ax.collections):
            if artist.get_gid():
                found[artist.get_gid()] = artist
    return found


@pytest.mark.parametrize("table", ["table1_pope", "table2_chair"])
def test_points_are_the_table_values_and_paper_numbers_where_the_paper_gives_them(table, paper):
    metrics = synthetic_metrics(table)
    points = pr.plot_points(metrics, paper, table, MODELS, SETTINGS)
    assert len(points) == len(MODELS) * len(SETTINGS) * 2
    by_key = {(r["model"], r["setting"]): r for r in metrics.iter_rows(named=True)}
    theirs = published(paper, table)
    for p in map(lambda r: SimpleNamespace(**r), points.iter_rows(named=True)):
        scale = DRAWN[table][p.metric]
        r = by_key[(p.model, p.setting)]
        assert p.x == SETTINGS.index(p.setting)  # config order on the x axis
        assert p.value == pytest.approx(r[p.metric] * scale)
        assert (p.low, p.high) == pytest.approx((r[f"{p.metric}_ci_low"] * scale, r[f"{p.metric}_ci_high"] * scale))
        expected = theirs.get((p.model, p.setting, p.metric))  # the demo's keys equal the paper's
        if expected is None:
            assert math.isnan(p.paper), (p.model, p.setting, p.metric)
        else:
            assert p.paper == pytest.approx(expected)
    assert points.filter(pl.col("model") == "newcomer")["paper"].is_nan().all()
    assert points["paper"].is_not_nan().sum() == sum(1 for k in theirs if k[2] in DRAWN[table] and k[1] in SETTINGS)
    labels = dict(zip(points["model"], points["label"], strict=False))
    assert labels["qwen2_5_vl"] == paper["models"]["qwen2_5_vl"]["label"] and labels["newcomer"] == "newcomer"


@pytest.mark.parametrize("table", ["table1_pope", "table2_chair"])
def test_drawn_points_intervals_and_paper_markers_match_the_table(table, paper):
    metrics = synthetic_metrics(table, seed=1)
    fig, points = pr.figure_for(metrics, paper, table, MODELS, SETTINGS, 0.95)
    drawn = artists(fig)
    assert len(fig.axes) == 2
    for metric in DRAWN[table]:
        offsets = []
        for model in MODELS:
            rows = points.filter((pl.col("model") == model) & (pl.col("metric") == metric)).sort("x")
            ours = drawn[f"ours:{model}:{metric}"]
            assert np.allclose(ours.get_ydata(), rows["value"])
            offset = np.asarray(ours.get_xdata()) - rows["x"].to_numpy()
            assert np.allclose(offset, offset[0]) and abs(offset[0]) < 0.5  # inside its setting's slot
            offsets.append(offset[0])
            segments = drawn[f"interval:{model}:{metric}"].get_segments()
            assert np.allclose([s[:, 1].min() for s in segments], rows["low"])
            assert np.allclose([s[:, 1].max() for s in segments], rows["high"])
            assert np.allclose([s[0, 0] for s in segments], ours.get_xdata())
            marker = drawn[f"paper:{model}:{metric}"]
            has_paper = rows["paper"].is_not_nan().to_numpy()
            # a hollow marker exactly where the paper gives a number, at our point's x, at the paper's value
            assert np.allclose(marker.get_xdata(), np.asarray(ours.get_xdata())[has_paper])
            assert np.allclose(marker.get_ydata(), rows["paper"].to_numpy()[has_paper])
            assert marker.get_markerfacecolor() == "none"
        assert len(set(np.round(offsets, 6))) == len(MODELS)  # models side by side, not on top of each other
    chance = [gid for gid in drawn if gid.startswith("chance:")]
    assert chance == (["chance:accuracy"] if table == "table1_pope" else [])
    if chance:
        assert list(drawn["chance:accuracy"].get_ydata()) == [50.0, 50.0]
    # the x axis names the settings in config order, with the paper's row name where it differs
    ticks = [t.get_text() for t in fig.axes[-1].get_xticklabels()]
    assert [t.replace("_\n", "_").split("\n")[0] for t in ticks] == SETTINGS
    assert "(Prompt-in-Image)" in ticks[SETTINGS.index("prompt_in_image")]
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any("paper" in t for t in legend) and "newcomer" in legend


def test_paper_markers_follow_paper_numbers_yaml(paper):
    """Markers come from the YAML, not from the code: a number removed from it loses its marker, one added gains
    one, for a model matched by Hugging Face id as well as by key."""
    edited = json.loads(json.dumps(paper))
    del edited["table1_pope"]["qwen2_5_vl"]["Baseline"]["accuracy"]
    edited["table1_pope"]["llava_1_5"]["Prompt-in-Image"] = {"accuracy": 51.5}
    models = dict(MODELS, llava_1_5=dict(MODELS["llava_1_5"], path=paper["models"]["llava_1_5"]["hf_id"]))
    fig, points = pr.figure_for(synthetic_metrics("table1_pope"), edited, "table1_pope", models, SETTINGS, 0.95)
    drawn = artists(fig)
    qwen = drawn["paper:qwen2_5_vl:accuracy"]
    assert len(qwen.get_xdata()) == 4 and pytest.approx(80.2) not in list(qwen.get_ydata())
    llava = drawn["paper:llava_1_5:accuracy"]
    assert 51.5 in list(llava.get_ydata())
    x_pii = [x for x, y in zip(llava.get_xdata(), llava.get_ydata(), strict=True) if y == 51.5][0]
    assert round(x_pii) == SETTINGS.index("prompt_in_image")
    assert len(drawn["paper:llava_1_5:yes_ratio"].get_xdata()) == 4  # the edit gave no yes-ratio
    # no paper table at all: no markers and no paper legend entry, still a figure
    bare = {k: v for k, v in paper.items() if k != "table1_pope"}
    fig, points = pr.figure_for(synthetic_metrics("table1_pope"), bare, "table1_pope", MODELS, SETTINGS, 0.95)
    assert points["paper"].is_nan().all()
    assert all(len(drawn.get_xdata()) == 0 for gid, drawn in artists(fig).items() if gid.startswith("paper:"))
    assert not any("paper" in t.get_text() for t in fig.legends[0].get_texts())


def test_a_model_keeps_its_colour_when_another_has_no_rows(paper):
    """Colours follow the config's model order, so Table 1 and Table 2 agree even when a model is missing from one."""
    full, _ = pr.figure_for(synthetic_metrics("table1_pope"), paper, "table1_pope", MODELS, SETTINGS, 0.95)
    without_llava = tuple(m for m in MODELS if m != "llava_1_5")
    part, _ = pr.figure_for(synthetic_metrics("table2_chair", without_llava), paper, "table2_chair", MODELS,
                            SETTINGS, 0.95)
    for model in without_llava:
        assert artists(full)[f"ours:{model}:accuracy"].get_color() == artists(part)[f"ours:{model}:chair_s"].get_color()
    assert "ours:llava_1_5:chair_s" not in artists(part)


def test_nan_values_and_missing_rows_draw_nothing_and_never_crash(paper, tmp_path):
    metrics = synthetic_metrics("table1_pope", seed=2)
    nan_value = (pl.col("model") == "llava_1_5") & (pl.col("setting") == "hybrid")
    nan_interval = (pl.col("model") == "qwen2_5_vl") & (pl.col("setting") == "control")
    metrics = metrics.with_columns(
        *(pl.when(nan_value).then(None).otherwise(pl.col(c)).alias(c)      # a missing value is null in a table
          for c in ("accuracy", "accuracy_ci_low", "accuracy_ci_high")),
        *(pl.when(nan_interval).then(float("nan")).otherwise(pl.col(c)).alias(c)   # and NaN draws nothing either
          for c in ("yes_ratio_ci_low", "yes_ratio_ci_high")))
    metrics = metrics.with_columns(  # a model without any value
        pl.when(pl.col("model") == "newcomer").then(None).otherwise(pl.col(c)).alias(c) for c in ("accuracy", "yes_ratio"))
    metrics = metrics.filter(~((pl.col("model") == "instructblip") & (pl.col("setting") == "baseline")))  # no row
    fig, points = pr.figure_for(metrics, paper, "table1_pope", MODELS, SETTINGS, 0.95)
    drawn = artists(fig)
    llava = drawn["ours:llava_1_5:accuracy"]
    assert len(llava.get_xdata()) == len(SETTINGS) - 1
    assert round(float(np.min(np.abs(np.asarray(llava.get_xdata()) - SETTINGS.index("hybrid"))))) >= 1
    # the paper's number stays where ours is missing
    assert 64.0 in list(drawn["paper:llava_1_5:accuracy"].get_ydata())
    # a value without an interval: the point, no bar
    assert len(drawn["ours:qwen2_5_vl:yes_ratio"].get_xdata()) == len(SETTINGS)
    assert len(drawn["interval:qwen2_5_vl:yes_ratio"].get_segments()) == len(SETTINGS) - 1
    assert len(drawn["ours:newcomer:accuracy"].get_xdata()) == 0
    assert len(drawn["ours:instructblip:accuracy"].get_xdata()) == len(SETTINGS) - 1
    assert all(np.isfinite(ax.get_ylim()).all() for ax in fig.axes)
    # nothing at all: empty panels, no crash
    empty = metrics.clear()
    fig, points = pr.figure_for(empty, paper, "table2_chair", MODELS, SETTINGS, 0.95)
    assert points.is_empty() and len(fig.axes) == 2
    all_nan = synthetic_metrics("table2_chair").with_columns(chair_s=None, chair_i=None)
    fig, points = pr.figure_for(all_nan, paper, "table2_chair", MODELS, SETTINGS, 0.95)
    assert points["value"].is_nan().all() and points["paper"].is_not_nan().any()  # the paper's numbers alone
    assert all(np.isfinite(ax.get_ylim()).all() for ax in fig.axes)


RULE_SCRIPTS = {"plot_table1_pope": plot_table1_pope, "plot_table2_chair": plot_table2_chair}


def run_rule(tmp_path: Path, rule: str, metrics: pl.DataFrame, models: dict, settings: list[str]) -> Path:
    table = {"plot_table1_pope": "table1_pope", "plot_table2_chair": "table2_chair"}[rule]
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / f"{table}_metrics.parquet"
    write_table(metrics, path, SCHEMA[table])  # valid under the schema main() reads with
    params = SimpleNamespace(models=[dict(v, key=k) for k, v in models.items()], settings=settings, confidence=0.9)
    out = tmp_path / "figures" / f"{table}.png"
    smk = SimpleNamespace(rule=rule, input=SimpleNamespace(metrics=str(path), paper=str(PAPER_FILE)),
                          output=SimpleNamespace(png=str(out)), params=params, log=[])
    RULE_SCRIPTS[rule].main(smk)
    return out


@pytest.mark.parametrize("rule", ["plot_table1_pope", "plot_table2_chair"])
@pytest.mark.parametrize("n_models,n_settings", [(3, 5), (4, 5), (1, 1), (2, 8)])
def test_rule_entry_writes_a_png_of_sane_size(tmp_path, rule, n_models, n_settings):
    table = rule.removeprefix("plot_")
    models = dict(list(MODELS.items())[:n_models])
    settings = (SETTINGS + [f"extra_setting_{i}" for i in range(3)])[:n_settings]
    out = run_rule(tmp_path, rule, synthetic_metrics(table, tuple(models), tuple(settings)), models, settings)
    with Image.open(out) as img:
        img.verify()
    with Image.open(out) as img:
        width, height = img.size
    assert 700 <= width <= 2200 and 500 <= height <= 1600, (width, height)
    assert 15_000 < out.stat().st_size < 1_000_000
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # written atomically: no temporary file left


def test_same_table_gives_the_same_png_bytes(tmp_path):
    """The same config on the same machine gives the same files: no timestamp in the PNG."""
    metrics = synthetic_metrics("table1_pope")
    models = dict(list(MODELS.items())[:3])
    first = run_rule(tmp_path / "a", "plot_table1_pope", metrics, models, SETTINGS).read_bytes()
    second = run_rule(tmp_path / "b", "plot_table1_pope", metrics, models, SETTINGS).read_bytes()
    assert first == second


def test_rule_entry_rejects_a_bad_table(tmp_path):
    metrics = synthetic_metrics("table1_pope")
    bad = tmp_path / "bad.parquet"
    write_table(metrics.drop("accuracy_ci_low"), bad)
    params = SimpleNamespace(models=[dict(MODELS["qwen2_5_vl"], key="qwen2_5_vl")], settings=SETTINGS,
                             confidence=0.95)
    out = tmp_path / "out.png"
    smk = SimpleNamespace(rule="plot_table1_pope", input=SimpleNamespace(metrics=str(bad), paper=str(PAPER_FILE)),
                          output=SimpleNamespace(png=str(out)), params=params, log=[])
    with pytest.raises(PipelineError, match="accuracy_ci_low"):
        plot_table1_pope.main(smk)
    assert not out.exists()


def test_report_shows_each_result_figure_after_its_table(tmp_path):
    smk = fake_inputs(tmp_path)
    figs = tmp_path / "results" / "figures"
    figs.mkdir(parents=True)
    smk.input.result_figures = []
    for name, color in (("table1_pope", (10, 200, 10)), ("table2_chair", (200, 10, 200))):
        Image.new("RGB", (30, 20), color).save(figs / f"{name}.png")
        smk.input.result_figures.append(str(figs / f"{name}.png"))
    report.main(smk)
    page = Path(smk.output.html).read_text(encoding="utf-8")
    t1, t2 = page.index("Table 1 · POPE adversarial"), page.index("Table 2 · CHAIR")
    f1, f2 = page.index("Table 1 as a figure"), page.index("Table 2 as a figure")
    assert t1 < f1 < t2 < f2 < page.index("What the models see")
    assert len(re.findall(r"src='data:image/png;base64,", page)) == 5
    assert "Hollow diamonds" in page and "chance" in page[f1:t2] and "CHAIRi" in page[f2:]
    md = Path(smk.output.md).read_text(encoding="utf-8")
    link = re.search(r"!\[Table 1 as a figure[^\]]*\]\(([^)]+)\)", md)
    assert link and (Path(smk.output.md).parent / link.group(1)).resolve() == (figs / "table1_pope.png").resolve()
    assert md.index("## Table 1") < md.index("![Table 1") < md.index("## Table 2") < md.index("![Table 2")


def test_caption_files_exist_and_render():
    for name in ("table1_pope_figure.rst", "table2_chair_figure.rst"):
        assert (ROOT / "workflow" / "report" / name).exists()
        text = caption_html(name)
        assert text.startswith("<p>") and "{" not in text and "paper" in text


def test_plot_rules_are_in_the_default_dag(tmp_path):
    """The default target plans both figures, once each, as inputs of the report."""
    proc = run_snakemake(tmp_path, "-n", "--forceall", "--quiet=progress", timeout=300)
    rules = planned_rules(proc.stdout)
    assert rules.count("plot_table1_pope") == 1 and rules.count("plot_table2_chair") == 1
    report_job = proc.stdout[proc.stdout.index("rule report:"):]
    report_inputs = re.search(r"^\s+input: (.*)$", report_job, re.M).group(1).split(", ")
    assert {"results/figures/table1_pope.png", "results/figures/table2_chair.png"} <= set(report_inputs)


def test_plot_rules_run_through_snakemake(tmp_path):
    """Both rules as Snakemake runs them (script preamble, params, log, localrule) on metrics tables in place."""
    demo_models = tuple(list(MODELS)[:3])
    for table in ("table1_pope", "table2_chair"):
        metrics = synthetic_metrics(table, demo_models)
        write_table(metrics, tmp_path / "results" / "scores" / f"{SCHEMA[table].removesuffix('_metrics')}"
                    f"_metrics.parquet", SCHEMA[table])
    targets = ["results/figures/table1_pope.png", "results/figures/table2_chair.png"]
    run_snakemake(tmp_path, "--allowed-rules", "plot_table1_pope", "plot_table2_chair", "--", *targets, timeout=300)
    for target in targets:
        with Image.open(tmp_path / target) as img:
            assert img.format == "PNG" and img.size[0] > 700
    log = (tmp_path / "logs" / "scoring" / "plot_table1_pope.log").read_text(encoding="utf-8")
    assert "wrote results/figures/table1_pope.png: 3 models x 5 settings" in log
