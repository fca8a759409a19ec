"""The paper's tables from the metrics tables: Table 1 (POPE), Table 2 (CHAIR) and the P(yes) table, as a CSV
frame (numbers) and Markdown text, our values with their intervals, deltas and p-values beside the paper's numbers
(``workflow/data/paper_numbers.yaml``, matched to our models by ``paper.match_paper_models``)."""

import math

import numpy as np
import polars as pl
import yaml

from pii.core.formatting import format_number, format_p
from pii.core.stage import PipelineError
from pii.core.tables import atomic_output, records_frame, write_csv
from pii.scoring.inference_files import repeats_in
from pii.scoring.paper import match_paper_models

TABLE1 = [("accuracy", "Acc (%)", 100.0, 1), ("f1", "F1", 1.0, 2), ("yes_ratio", "Yes-ratio", 1.0, 2)]
TABLE2 = [("chair_s", "CHAIRs (%)", 100.0, 1), ("chair_i", "CHAIRi (%)", 100.0, 1)]


PYES_TABLE = [("p_yes_auroc", "AUROC", 1.0, 3), ("p_yes_brier", "Brier", 1.0, 3), ("p_yes_ece", "ECE", 1.0, 3),
              ("p_yes_disagreement", "Disagree (%)", 100.0, 1)]
PYES_SUFFIXES = ("", "_ci_low", "_ci_high", "_delta", "_delta_ci_low", "_delta_ci_high", "_p_value")


def metric_rows(metrics: pl.DataFrame) -> dict[tuple[str, str], dict]:
    """(model, setting) -> that metrics row as a dict, a missing value as NaN."""
    return {(r["model"], r["setting"]): {k: math.nan if v is None else v for k, v in r.items()}
            for r in metrics.iter_rows(named=True)}


def _cell(r: dict, metric: str, scale: float, decimals: int) -> str:
    """'value [low, high] · Δ delta, p' for one metric of one metrics row (— when there is no value)."""
    value = float(r[metric]) * scale
    if not np.isfinite(value):
        return "—"
    low, high = float(r[f"{metric}_ci_low"]) * scale, float(r[f"{metric}_ci_high"]) * scale
    cell = f"{format_number(value, decimals)} [{format_number(low, decimals)}, {format_number(high, decimals)}]"
    delta, p = float(r[f"{metric}_delta"]) * scale, float(r[f"{metric}_p_value"])
    if np.isfinite(delta):
        cell += f" · Δ {format_number(delta, decimals, sign=True)}"
        if format_p(p):
            cell += f", {format_p(p)}"
    return cell


def build_table(metrics: pl.DataFrame, paper: dict, table_key: str, spec, models: dict[str, dict],
                settings: list[str], confidence: float, notes: tuple[str, ...] = (),
                strict: bool = False, unit: str = "images resampled") -> tuple[pl.DataFrame, str]:
    """(CSV frame, markdown text): settings as rows, one column group per model (config order), for each
    metric our value with its interval, the delta vs baseline with its p-value, and the paper's number.
    ``unit`` names what the bootstrap resamples, for the table's caption."""
    present_models = [m for m in models if m in set(metrics["model"])]
    present_settings = [s for s in settings if s in set(metrics["setting"])]
    matched = match_paper_models({m: models[m] for m in present_models}, paper.get("models", {}))
    setting_of_row = paper.get("settings", {})
    published: dict[tuple[str, str], dict] = {}
    for theirs, rows in (paper.get(table_key) or {}).items():
        for row_name, values in rows.items():
            published[(theirs, setting_of_row.get(row_name, row_name))] = values or {}
    labels = {m: paper["models"][matched[m]]["label"] if m in matched else m for m in present_models}
    by_key = metric_rows(metrics)
    repeats = repeats_in(metrics)

    paper_name = {ours: theirs for theirs, ours in setting_of_row.items() if theirs.lower() != ours.lower()}
    csv_rows, md_rows, strict_rows, spread_rows = [], [], [], []
    for setting in present_settings:
        csv_row: dict = {"setting": setting}
        md_cells = [f"{setting} ({paper_name[setting]})" if setting in paper_name else setting]
        strict_cells = [md_cells[0]]
        spread_cells = [md_cells[0]]
        for model in present_models:
            r = by_key.get((model, setting))
            paper_values = published.get((matched.get(model), setting), {})
            for metric, _, scale, decimals in spec:
                get = (lambda k, r=r: float(r[k]) if r is not None else math.nan)  # noqa: E731
                value, low, high = (get(metric) * scale, get(f"{metric}_ci_low") * scale,
                                    get(f"{metric}_ci_high") * scale)
                delta, p = get(f"{metric}_delta") * scale, get(f"{metric}_p_value")
                theirs = paper_values.get(metric)
                prefix = f"{model}:{metric}"
                csv_row.update({prefix: value, f"{prefix}_ci_low": low, f"{prefix}_ci_high": high,
                                f"{prefix}_delta": delta, f"{prefix}_p_value": p,
                                f"{prefix}_paper": math.nan if theirs is None else float(theirs)})
                cell = "—" if r is None else _cell(r, metric, scale, decimals)
                md_cells += [cell, "—" if theirs is None else f"{theirs:.{decimals}f}"]
                if repeats > 1:  # the per-repeat spread (with one repeat the CSV keeps its old columns)
                    sd, lo, hi = (get(f"{metric}_repeat_{k}") * scale for k in ("sd", "min", "max"))
                    csv_row.update({f"{prefix}_repeat_sd": sd, f"{prefix}_repeat_min": lo,
                                    f"{prefix}_repeat_max": hi})
                    spread_cells.append(_spread_cell(sd, lo, hi, decimals))
            if strict and r is not None:
                csv_row[f"{model}:strict_accuracy"] = r["strict_accuracy"] * 100
                csv_row[f"{model}:n_unknown"] = int(r["n_unknown"])
                strict_cells += [f"{format_number(r['strict_accuracy'] * 100, 1)} [{format_number(r['strict_accuracy_ci_low'] * 100, 1)}, "
                                 f"{format_number(r['strict_accuracy_ci_high'] * 100, 1)}]",
                                 f"{int(r['n_unknown'])} / {int(r['n'])}"]
            elif strict:
                strict_cells += ["—", "—"]
        csv_rows.append(csv_row)
        md_rows.append(md_cells)
        strict_rows.append(strict_cells)
        spread_rows.append(spread_cells)

    header = ["Setting"]
    for model in present_models:
        for _, label, _, _ in spec:
            header += [f"{labels[model]} {label}", "paper"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in md_rows]
    pct = round(confidence * 100)
    lines += ["", f"Ours: value [{pct}% percentile bootstrap interval, {unit}]; Δ: difference to the baseline "
              "setting of the same model on the same samples, with its p-value; paper: the published number "
              "(— not reported)."]
    lines += list(notes)
    if repeats > 1:
        lines.append(repeats_note(repeats, unit))
        header = ["Setting"] + [f"{labels[m]} {label}" for m in present_models for _, label, _, _ in spec]
        lines += ["", f"Spread over the {repeats} decoding repeats: SD (min–max) of the per-repeat values:", "",
                  "| " + " | ".join(header) + " |", "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
        lines += ["| " + " | ".join(cells) + " |" for cells in spread_rows]
    if strict:
        header = ["Setting"] + [h for m in present_models for h in (f"{labels[m]} strict Acc (%)", "unknown / n")]
        lines += ["", "Strict parser (yes / no / unknown; unknown counts as wrong):", "",
                  "| " + " | ".join(header) + " |", "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
        lines += ["| " + " | ".join(cells) + " |" for cells in strict_rows]
    return records_frame(csv_rows), "\n".join(lines) + "\n"




def _spread_cell(sd: float, low: float, high: float, decimals: int) -> str:
    if not np.isfinite(low):
        return "—"
    return f"{format_number(sd, decimals)} ({format_number(low, decimals)}–{format_number(high, decimals)})"


def repeats_note(repeats: int, unit: str) -> str:
    """The tables' note on decoding repeats (only shown with more than one)."""
    return (f"Decoding repeats: every request was run {repeats} times (repeat 0 with the config seed, the others "
            "with seeds derived from it); each value is the mean of the per-repeat values, its interval comes from "
            f"the same clustered bootstrap ({unit}, each image with all its repeats), so it covers the sampling of "
            "images and the decoding noise together; the per-repeat spread is shown below.")


def pyes_temperature_note(temperature: float | None) -> str:
    """The note saying at which temperature P(yes) was taken (the metrics file's ``p_yes_temperature``)."""
    if temperature is None:
        return "The temperature P(yes) was taken at is not recorded in the metrics file; rerun scoring."
    return (f"P(yes) is taken at temperature {format_number(float(temperature), 1)}: the model's untempered "
            "first-step distribution, not the sampling temperature the answers are drawn with (decoding.temperature, "
            "0.7 in the paper), because AUROC and calibration describe the model's own probabilities.")


def build_pyes_table(metrics: pl.DataFrame, paper: dict, models: dict[str, dict], settings: list[str],
                     confidence: float, p_yes_temperature: float | None = None) -> tuple[pl.DataFrame, str]:
    """(CSV frame, markdown text) of the P(yes) metrics: one row per model x setting (config order). The CSV
    holds the metrics table's own columns (fractions); the markdown shows disagreement in percent and says at
    which temperature P(yes) was taken (``p_yes_temperature`` of the metrics file's metadata)."""
    present_models = [m for m in models if m in set(metrics["model"])]
    present_settings = [s for s in settings if s in set(metrics["setting"])]
    matched = match_paper_models({m: models[m] for m in present_models}, paper.get("models", {}))
    labels = {m: paper["models"][matched[m]]["label"] if m in matched else m for m in present_models}
    by_key = metric_rows(metrics)
    repeats = repeats_in(metrics)
    columns = ["model", "setting", "n", "n_p_yes"] + [f"{m}{s}" for m, *_ in PYES_TABLE for s in PYES_SUFFIXES]
    if repeats > 1:  # with one repeat the CSV keeps its old columns
        columns += ["n_repeats"] + [f"{m}_repeat_{k}" for m, *_ in PYES_TABLE for k in ("sd", "min", "max")]
    csv_rows, md_rows = [], []
    for model in present_models:
        first = True
        for setting in present_settings:
            r = by_key.get((model, setting))
            if r is None:
                continue
            csv_rows.append({c: r[c] for c in columns})
            md_rows.append([labels[model] if first else "", setting, f"{int(r['n_p_yes'])} / {int(r['n'])}"]
                           + [_cell(r, metric, scale, decimals) for metric, _, scale, decimals in PYES_TABLE])
            first = False
    header = ["Model", "Setting", "with P(yes) / n"] + [label for _, label, _, _ in PYES_TABLE]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":---", ":---"] + ["---:"] * (len(header) - 2)) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in md_rows]
    pct = round(confidence * 100)
    lines += ["", "P(yes) = P(Yes) / (P(Yes) + P(No)) at the first generated step, where the backend gives it (rows "
              "without it are left out; — no P(yes) at all). AUROC: of P(yes) against the label (Mann–Whitney, ties "
              "count half); Brier: mean (P(yes) − label)²; ECE: expected calibration error over 10 equal-width bins; "
              "Disagree: answers whose parsed answer (POPE's official rule) differs from P(yes) > 0.5. ECE is biased "
              "upwards in small samples and more so in a resample, so its interval can lie above the value.",
              pyes_temperature_note(p_yes_temperature),
              f"Value [{pct}% percentile bootstrap interval, images resampled with all their questions]; Δ: "
              "difference to the baseline setting of the same model on the questions both answered with a P(yes), "
              "with its paired image-level bootstrap p-value."]
    if repeats > 1:
        lines.append(repeats_note(repeats, "images resampled with all their questions").replace(
            "shown below", "in the CSV (*_repeat_sd, *_repeat_min, *_repeat_max)"))
    return records_frame(csv_rows, columns), "\n".join(lines) + "\n"


def write_table_files(frame: pl.DataFrame, markdown: str, csv_path: str, md_path: str, title: str) -> None:
    with atomic_output(csv_path, "w") as f:
        write_csv(frame, f, float_format="%.6g")
    with atomic_output(md_path, "w") as f:
        f.write(f"# {title}\n\n{markdown}")



TABLE1_NOTES = ("Answers read with POPE's official rule (text before the first '.', a word 'No'/'not'/'no' -> no). "
                "Intervals (and Δ intervals) come from a clustered bootstrap that resamples images, each with all its "
                "questions, because answers about one image are correlated. p: exact McNemar test for accuracy and "
                "yes-ratio (per question, treating questions as independent), paired image-level bootstrap for F1.",)
TABLE2_NOTES = ("CHAIRs: captions with at least one hallucinated COCO object; CHAIRi: hallucinated object mentions / "
                "object mentions (repeats count). One caption per image, so resampling captions is resampling "
                "images. p: paired bootstrap over images.",)
# With decoding repeats McNemar's one answer per question no longer exists: every p-value is the paired bootstrap.
TABLE1_NOTES_REPEATS = ("Answers read with POPE's official rule (text before the first '.', a word 'No'/'not'/'no' -> "
                        "no). Intervals (and Δ intervals) come from a clustered bootstrap that resamples images, each "
                        "with all its questions, because answers about one image are correlated. p: paired "
                        "image-level bootstrap for every metric (an exact McNemar test needs one answer per question; "
                        "with several decoding repeats the bootstrap uses them all).",)
TABLE2_NOTES_REPEATS = ("CHAIRs: captions with at least one hallucinated COCO object; CHAIRi: hallucinated object "
                        "mentions / object mentions (repeated mentions count). One caption per image and repeat. p: "
                        "paired bootstrap over images.",)
TABLE1_UNIT = "images resampled with all their questions"
TABLE2_UNIT = "captions resampled (one per image)"


def read_paper(path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as err:
        raise PipelineError(f"{path}: cannot read the paper's numbers ({err})") from err



TABLE1_TITLE = "Table 1: POPE adversarial"
TABLE2_TITLE = "Table 2: CHAIR on COCO captions"
PYES_TITLE = "POPE: P(yes) discrimination and calibration"


def table1_pope(metrics: pl.DataFrame, paper: dict, models: dict[str, dict], settings: list[str],
                confidence: float) -> tuple[pl.DataFrame, str]:
    """Table 1 (POPE accuracy, F1, yes-ratio, and the strict parser's accuracy) from the POPE metrics table."""
    notes = TABLE1_NOTES if repeats_in(metrics) == 1 else TABLE1_NOTES_REPEATS
    return build_table(metrics, paper, "table1_pope", TABLE1, models, settings, confidence, notes, strict=True,
                       unit=TABLE1_UNIT)


def pope_task_table(metrics: pl.DataFrame, paper: dict, task: str, models: dict[str, dict], settings: list[str],
                    confidence: float) -> tuple[pl.DataFrame, str]:
    """Table 1's layout for a further POPE task (e.g. pope_random); the paper reports only the adversarial split,
    so its column stays empty."""
    notes = TABLE1_NOTES if repeats_in(metrics) == 1 else TABLE1_NOTES_REPEATS
    return build_table(metrics, paper, task, TABLE1, models, settings, confidence, notes, strict=True,
                       unit=TABLE1_UNIT)


def pope_task_title(task: str) -> str:
    return f"{task}: POPE in Table 1's layout (the paper reports the adversarial split only: no paper column)"


def table2_chair(metrics: pl.DataFrame, paper: dict, models: dict[str, dict], settings: list[str],
                 confidence: float) -> tuple[pl.DataFrame, str]:
    """Table 2 (CHAIRs, CHAIRi) from the CHAIR metrics table, and how many captions were cut at max_new_tokens."""
    notes = TABLE2_NOTES if repeats_in(metrics) == 1 else TABLE2_NOTES_REPEATS
    frame, markdown = build_table(metrics, paper, "table2_chair", TABLE2, models, settings, confidence, notes,
                                  strict=False, unit=TABLE2_UNIT)
    return truncation_columns(frame, metrics, models), markdown + truncation_markdown(metrics, models, settings)


# CHAIR without the unfinished last sentence of cut captions (scoring.chair.drop_incomplete_sentence)
COMPLETE_COLUMNS = ("chair_s_complete", "chair_i_complete")


def truncation_columns(frame: pl.DataFrame, metrics: pl.DataFrame, models: dict[str, dict]) -> pl.DataFrame:
    """Table 2's CSV with <model>:n_truncated, :truncated_share and :mean_response_tokens per setting, and
    <model>:chair_s_complete / :chair_i_complete (fractions) when they were scored."""
    if "n_truncated" not in metrics.columns or frame.is_empty():
        return frame
    by_key = metric_rows(metrics)
    names = ("n_truncated", "truncated_share", "mean_response_tokens") + tuple(
        c for c in COMPLETE_COLUMNS if c in metrics.columns)
    extra = {f"{m}:{c}": [_finite_or_none(by_key.get((m, s), {}).get(c)) for s in frame["setting"]]
             for m in models if m in set(metrics["model"]) for c in names}
    return frame.with_columns(pl.Series(k, v, dtype=pl.Int64 if k.endswith("n_truncated") else pl.Float64)
                              for k, v in extra.items())


def _scaled(value, scale: float = 100.0):
    value = _finite_or_none(value)
    return None if value is None else float(value) * scale


def _finite_or_none(value):
    return None if value is None or (isinstance(value, float) and not math.isfinite(value)) else value


def truncation_markdown(metrics: pl.DataFrame, models: dict[str, dict], settings: list[str]) -> str:
    """The captions that hit max_new_tokens per model and setting, and the mean caption length: a group with many
    cut captions (a model that loops) has its CHAIR decided by the token limit as much as by the model."""
    if "n_truncated" not in metrics.columns:
        return ""
    by_key = metric_rows(metrics)
    present = [m for m in models if m in set(metrics["model"])]
    complete = all(c in metrics.columns for c in COMPLETE_COLUMNS)
    per_model = 4 if complete else 2
    heads = [f"{m} cut | {m} mean tokens" + (f" | {m} CHAIRs (%) complete | {m} CHAIRi (%) complete" if complete
                                             else "") for m in present]
    lines = ["", "Captions cut at max_new_tokens (finish_reason length) / captions, and the mean caption length in "
             "response tokens" + (", then CHAIR with the unfinished last sentence of every cut caption dropped "
                                  "(scoring.chair.drop_incomplete_sentence; a cut caption with no finished sentence "
                                  "counts as empty)" if complete else "") + ":", "",
             "| Setting | " + " | ".join(heads) + " |",
             "|" + "|".join([":---"] + ["---:"] * (per_model * len(present))) + "|"]
    for setting in [s for s in settings if s in set(metrics["setting"])]:
        cells = [setting]
        for model in present:
            r = by_key.get((model, setting)) or {}
            cut, share = _finite_or_none(r.get("n_truncated")), _finite_or_none(r.get("truncated_share"))
            if cut is None:
                cells += ["—"] * per_model
                continue
            cells += [f"{int(cut)} / {int(r['n'])}" + (f" ({format_number(share * 100, 1)}%)" if share is not None
                                                       else ""),
                      format_number(r["mean_response_tokens"], 1)]
            if complete:
                cells += [format_number(_scaled(r.get(c)), 1) for c in COMPLETE_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def models_by_key(models: list[dict]) -> dict[str, dict]:
    """The rules' ``models`` param (a list in config order, each entry with its ``key``) as key -> entry."""
    return {m["key"]: m for m in models}
