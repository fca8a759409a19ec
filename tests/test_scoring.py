"""Scoring: POPE answer rules, metrics, bootstrap intervals, paired tests, the tables, and the rules' wiring."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from conftest import ROOT, assign, concat, row, run_snakemake

from pii.core import stage
from pii.core.tables import read_metadata, read_table, write_table
from pii.scoring import chair, inference_files
from pii.scoring import paper as scoring_paper
from pii.scoring import pope as scoring_pope
from pii.scoring import pope_answers as pm
from pii.scoring import stats as st
from pii.scoring import tables as scoring_tables

# --- answer rules -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, official, strict", [
    ("No, there is not a dog in the image.", "no", "no"),
    ("Yes, there is a dog.", "yes", "yes"),
    ("yes.", "yes", "yes"),
    ("There is no dog in the image.", "no", "no"),
    ("There is a dog. It is not small.", "yes", "yes"),   # only the first sentence is read
    ("Not sure.", "yes", "unknown"),                      # official rule is case-sensitive: "Not" is no "not"
    ("NO", "yes", "no"),
    ("No\nthere is none", "yes", "no"),                    # official splits on ' ' only
    ("I do not see a dog", "no", "no"),
    ("no, a cat", "no", "no"),
    ("", "yes", "unknown"),                               # empty answer: POPE counts it as yes
    ("The image shows a beach.", "yes", "unknown"),
    ("I can see a dog on the left", "yes", "yes"),
    ("There isn't any dog", "yes", "no"),                 # "isn't" is not a listed word for the official rule
    ("**Yes**", "yes", "yes"),
    ("It is unclear whether there is a dog", "yes", "unknown"),
])
def test_answer_rules(text, official, strict):
    assert pm.parse_official(text) == official
    assert pm.parse_strict(text) == strict


# --- metrics from confusion matrices ----------------------------------------------------------------------------

def _metrics(labels, preds):
    counts = pm.counts_of(pm.cell_codes(labels, preds))
    return pm.confusion(counts), {k: float(v) for k, v in pm.metrics_from_counts(counts).items()}


def test_metrics_hand_computed():
    # TP=3, FN=1, FP=2, TN=4  (n=10)
    labels = ["yes"] * 4 + ["no"] * 6
    preds = ["yes", "yes", "yes", "no", "yes", "yes", "no", "no", "no", "no"]
    conf, m = _metrics(labels, preds)
    assert conf == {"tp": 3, "fp": 2, "tn": 4, "fn": 1, "n": 10, "n_unknown": 0}
    assert m["accuracy"] == pytest.approx(0.7)
    assert m["precision"] == pytest.approx(3 / 5)
    assert m["recall"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(2 * 0.6 * 0.75 / (0.6 + 0.75))
    assert m["yes_ratio"] == pytest.approx(0.5)


def test_unknown_answers_count_as_wrong_and_never_yes():
    conf, m = _metrics(["yes", "yes", "no", "no"], ["yes", "unknown", "unknown", "no"])
    assert (conf["tp"], conf["fn"], conf["tn"], conf["fp"], conf["n_unknown"]) == (1, 0, 1, 0, 2)
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["recall"] == pytest.approx(0.5)     # the unknown positive is a missed positive
    assert m["yes_ratio"] == pytest.approx(0.25)
    assert m["precision"] == pytest.approx(1.0)


def test_degenerate_answers_never_crash():
    _, all_yes = _metrics(["yes", "no"], ["yes", "yes"])
    assert all_yes["yes_ratio"] == 1 and all_yes["precision"] == 0.5 and all_yes["recall"] == 1
    _, all_no = _metrics(["yes", "no"], ["no", "no"])
    assert math.isnan(all_no["precision"]) and all_no["f1"] == 0 and all_no["yes_ratio"] == 0
    _, unknown = _metrics(["yes", "no"], ["unknown", "unknown"])
    assert unknown["accuracy"] == 0 and math.isnan(unknown["precision"]) and unknown["f1"] == 0
    _, only_neg = _metrics(["no"], ["no"])
    assert math.isnan(only_neg["f1"]) and math.isnan(only_neg["recall"])
    empty = pm.metrics_from_counts(np.zeros(6))
    assert all(math.isnan(float(v)) for v in empty.values())


def _pope_frame(model, setting, labels, responses):
    n = len(labels)
    return pl.DataFrame({"sample_id": [f"pope-{i}" for i in range(n)], "task": "pope", "model": model,
                         "setting": setting, "image_id": list(range(n)), "question": "Is there a dog?",
                         "label": pl.Series(labels, dtype=pl.String), "response": responses,
                         "p_yes": pl.Series([None] * n, dtype=pl.Float64)})


def test_score_pope_all_yes_and_all_unknown_groups():
    labels = ["yes", "no"] * 5
    df = concat([_pope_frame("m", "baseline", labels, ["Yes."] * 10),
                 _pope_frame("m", "pii", labels, ["Not sure."] * 10)])
    metrics, answers = scoring_pope.score_pope(df, seed=0, resamples=200, confidence=0.95)
    base, pii = row(metrics, setting="baseline"), row(metrics, setting="pii")
    assert base["yes_ratio"] == 1 and base["accuracy"] == 0.5
    # "Not sure." is yes under the official rule, unknown under the strict parser
    assert pii["accuracy"] == 0.5 and pii["n_unknown"] == 10
    assert pii["strict_accuracy"] == 0 and math.isnan(pii["strict_precision"])
    assert pii["accuracy_p_value"] == 1.0          # no discordant pair
    assert pii["strict_accuracy_delta"] == pytest.approx(-0.5)
    assert list(answers["answer_strict"][-10:]) == ["unknown"] * 10


def test_missing_group_is_reported_with_nan():
    df = _pope_frame("m", "baseline", ["yes", "no"], ["Yes", "No"])
    metrics, _ = scoring_pope.score_pope(df, 0, 100, 0.95, groups=[("pope", "m", "baseline"), ("pope", "m", "x")])
    assert metrics["n"][1] == 0 and math.isnan(row(metrics, setting="x")["accuracy"])


# --- clustered intervals and P(yes) metrics in the scorer -----------------------------------------------------

def _image_frame(setting: str, correct_by_image: list[bool], per_image: int = 6, p_yes=None) -> pl.DataFrame:
    """POPE rows where every question about an image is answered right or wrong together."""
    n = len(correct_by_image) * per_image
    image = np.repeat(np.arange(len(correct_by_image)), per_image)
    labels = np.where(np.arange(n) % 2 == 0, "yes", "no")
    right = np.asarray(correct_by_image)[image]
    said_yes = (labels == "yes") == right
    df = _pope_frame("m", setting, list(labels), ["Yes." if y else "No." for y in said_yes])
    df = assign(df, image_id=image)
    if p_yes is not None:
        df = assign(df, p_yes=p_yes)
    return df


def test_pope_intervals_resample_images_not_rows():
    rng = np.random.default_rng(1)
    df = _image_frame("baseline", list(rng.random(40) < 0.6))
    clustered, _ = scoring_pope.score_pope(df, 0, 500, 0.95)
    by_row, _ = scoring_pope.score_pope(assign(df, image_id=np.arange(len(df))), 0, 500, 0.95)
    assert clustered["n_images"][0] == 40 and by_row["n_images"][0] == 240
    assert clustered["accuracy"][0] == by_row["accuracy"][0]
    width = {k: f["accuracy_ci_high"][0] - f["accuracy_ci_low"][0] for k, f in
             (("images", clustered), ("rows", by_row))}
    assert width["images"] > 1.8 * width["rows"]        # sqrt(6) in theory for perfectly correlated images
    # the interval is exactly the clustered bootstrap of stats: images drawn, all their rows along
    codes, k = st.clusters_of(df["image_id"])
    weights = st.cluster_weights(st.group_rng(0, "ci", "pope", "m", "baseline"), k, 500)
    correct = scoring_pope.parse_answers(df)["correct_official"].to_numpy().astype(float)
    boot = weights @ st.cluster_sums(codes, k, np.column_stack([correct, np.ones_like(correct)]))
    low, high = st.percentile_interval(boot[:, 0] / boot[:, 1], 0.95)
    assert (clustered["accuracy_ci_low"][0], clustered["accuracy_ci_high"][0]) == pytest.approx((low, high))


def test_paired_deltas_resample_images_and_mcnemar_stays_per_question():
    rng = np.random.default_rng(2)
    base_right = rng.random(50) < 0.5
    flip = rng.random(50) < 0.3
    df = concat([_image_frame("baseline", list(base_right)), _image_frame("pii", list(base_right ^ flip))])
    clustered, _ = scoring_pope.score_pope(df, 0, 500, 0.95)
    by_row, _ = scoring_pope.score_pope(assign(df, image_id=np.arange(len(df)) % 300), 0, 500, 0.95)
    c, r = row(clustered, setting="pii"), row(by_row, setting="pii")
    assert c["accuracy_delta"] == r["accuracy_delta"]
    assert (c["accuracy_delta_ci_high"] - c["accuracy_delta_ci_low"]
            > 1.8 * (r["accuracy_delta_ci_high"] - r["accuracy_delta_ci_low"]))
    assert c["accuracy_p_value"] == r["accuracy_p_value"]    # exact McNemar: per question, clusters ignored
    assert c["f1_p_value"] > r["f1_p_value"]                   # paired bootstrap: clustered, less certain


def test_paired_rows_showing_different_images_are_an_error():
    df = concat([_pope_frame("m", "baseline", ["yes", "no"], ["Yes", "No"]),
                 assign(_pope_frame("m", "pii", ["yes", "no"], ["Yes", "No"]), image_id=[5, 6])])
    with pytest.raises(stage.PipelineError, match=r"sample_id 'pope-0' is image 0 in the baseline setting and image 5"):
        scoring_pope.score_pope(df, 0, 10, 0.95)


def _auroc_pairs(p, y) -> float:
    pos, neg = p[y], p[~y]
    return float(((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean())


def test_pope_pyes_columns():
    rng = np.random.default_rng(3)
    base = _image_frame("baseline", list(rng.random(30) < 0.7), per_image=4)
    label_yes = (base["label"] == "yes").to_numpy()
    p_base = np.clip(np.round(0.5 + (label_yes - 0.5) * rng.random(120), 2), 0, 1)
    p_base[[3, 17]] = np.nan                                   # a backend could not give these two
    p_pii = np.clip(np.nan_to_num(p_base, nan=0.5) + rng.normal(0, 0.2, 120), 0, 1)
    p_pii[5] = np.nan
    df = concat([assign(base, p_yes=p_base), assign(base, setting="pii", p_yes=p_pii)])
    metrics, _ = scoring_pope.score_pope(df, 0, 300, 0.95)
    has = np.isfinite(p_base)
    p, y = p_base[has], label_yes[has]
    said_yes = (base["response"] == "Yes.").to_numpy()[has]
    b, pii = row(metrics, setting="baseline"), row(metrics, setting="pii")
    assert b["n_p_yes"] == 118 and pii["n_p_yes"] == 119 and pii["n_paired_p_yes"] == 117
    assert b["p_yes_auroc"] == pytest.approx(_auroc_pairs(p, y))
    assert b["p_yes_brier"] == pytest.approx(np.mean((p - y) ** 2))
    assert b["p_yes_disagreement"] == pytest.approx(np.mean(said_yes != (p > 0.5)))
    bins = np.minimum((p * 10).astype(int), 9)
    ece = sum(abs(np.sum(y[bins == k] - p[bins == k])) for k in range(10)) / len(p)
    assert b["p_yes_ece"] == pytest.approx(ece)
    for metric in scoring_pope.PYES_METRICS:
        if metric != "p_yes_ece":   # ECE's resamples are biased upwards: its interval may lie above the value
            assert b[f"{metric}_ci_low"] <= b[metric] <= b[f"{metric}_ci_high"], metric
        assert math.isnan(b[f"{metric}_delta"]) and math.isnan(b[f"{metric}_p_value"])
        assert 0 < pii[f"{metric}_p_value"] <= 1
    both = has & np.isfinite(p_pii)
    assert pii["p_yes_brier_delta"] == pytest.approx(
        np.mean((p_pii[both] - label_yes[both]) ** 2) - np.mean((p_base[both] - label_yes[both]) ** 2))


def test_no_p_yes_anywhere_gives_nan_metrics(tmp_path: Path):
    labels = ["yes", "no"] * 5
    df = concat([_pope_frame("m", s, labels, ["Yes."] * 10) for s in ("baseline", "pii")])
    metrics, _ = scoring_pope.score_pope(df, 0, 100, 0.95, groups=[("pope", "m", "baseline"), ("pope", "m", "pii"),
                                                             ("pope", "m", "empty")])
    assert metrics["n_p_yes"].to_list() == [0, 0, 0] and metrics["n_paired_p_yes"].to_list() == [0, 0, 0]
    for metric in scoring_pope.PYES_METRICS:
        for suffix in ("", "_ci_low", "_ci_high", "_delta", "_delta_ci_low", "_delta_ci_high", "_p_value"):
            assert np.isnan(metrics[f"{metric}{suffix}"].to_numpy()).all(), metric + suffix
    write_table(metrics, tmp_path / "pope_metrics.parquet", "pope_metrics")      # the schema takes it


def test_p_yes_outside_zero_one_is_one_clear_error(tmp_path: Path):
    df = assign(
        _pope_frame("m", "baseline", ["yes", "no"], ["Yes", "No"]), p_yes=[0.2, 1.5], text_prompt="q", prompt="q", image_path="x.png", n_prompt_tokens=1, n_response_tokens=1,
        finish_reason="stop", seed=0, repeat=0)
    path = tmp_path / "results/inference/pope/m/baseline/r0.parquet"
    write_table(df, path, "inference")
    with pytest.raises(stage.PipelineError, match=r"baseline/r0.parquet: row 1 has p_yes = 1.5"):
        inference_files.read_inference([str(path)], "pope")


# --- tables ---------------------------------------------------------------------------------------------------

def _paper():
    with open(ROOT / "workflow" / "data" / "paper_numbers.yaml") as f:
        return yaml.safe_load(f)


def test_paper_model_matching_by_hf_id_key_and_family():
    paper = _paper()["models"]
    models = {"qwen7b": {"family": "qwen2_5_vl", "path": "Qwen/Qwen2.5-VL-7B-Instruct"},  # renamed, by hub id
              "llava_1_5": {"family": "llava", "path": "some/finetune"},                   # by key
              "blip": {"family": "instructblip", "path": "local/folder"}}                  # by unique family
    assert scoring_paper.match_paper_models(models, paper) == {"qwen7b": "qwen2_5_vl", "llava_1_5": "llava_1_5",
                                                       "blip": "instructblip"}
    two = {"a": {"family": "instructblip", "path": "x/a"}, "b": {"family": "instructblip", "path": "x/b"}}
    assert scoring_paper.match_paper_models(two, paper) == {}   # ambiguous family: no paper numbers
    # the padded LLaVA is our variant of the same checkpoint: the paper's LLaVA numbers are not its own
    padded = {"llava_1_5": {"family": "llava", "path": "llava-hf/llava-1.5-7b-hf"},
              "llava_1_5_pad": {"family": "llava", "path": "llava-hf/llava-1.5-7b-hf", "image_preprocess": "pad"}}
    assert scoring_paper.match_paper_models(padded, paper) == {"llava_1_5": "llava_1_5"}


def test_table1_layout_puts_paper_numbers_next_to_ours():
    labels = ["yes", "no"] * 10
    df = concat([_pope_frame(m, s, labels, resp) for m in ("qwen2_5_vl", "instructblip")
                 for s, resp in (("baseline", ["Yes"] * 20), ("prompt_in_image", ["Yes", "No"] * 10),
                                 ("prompt_in_image_instructed", ["Yes"] * 20))])
    metrics, _ = scoring_pope.score_pope(df, 0, 200, 0.95)
    models = {"qwen2_5_vl": {"family": "qwen2_5_vl", "path": "Qwen/Qwen2.5-VL-7B-Instruct"},
              "instructblip": {"family": "instructblip", "path": "Salesforce/instructblip-vicuna-7b"}}
    frame, md = scoring_tables.build_table(metrics, _paper(), "table1_pope", scoring_tables.TABLE1, models,
                                  ["baseline", "control", "prompt_in_image", "prompt_in_image_instructed"], 0.95,
                                  strict=True)
    assert list(frame["setting"]) == ["baseline", "prompt_in_image", "prompt_in_image_instructed"]  # config order
    pii = row(frame, setting="prompt_in_image")
    assert pii["qwen2_5_vl:accuracy"] == pytest.approx(100.0) and pii["qwen2_5_vl:accuracy_paper"] == 84.3
    assert pii["qwen2_5_vl:accuracy_delta"] == pytest.approx(50.0)
    # The paper reports Prompt-in-Image without an instruction for Qwen only; InstructBLIP's 54.0 belongs to
    # Prompt-in-Image† (the instructed setting).
    assert math.isnan(pii["instructblip:accuracy_paper"]) and math.isnan(pii["instructblip:f1_paper"])
    dagger = row(frame, setting="prompt_in_image_instructed")
    assert dagger["instructblip:accuracy_paper"] == 54.0 and dagger["instructblip:yes_ratio_paper"] == 0.99
    assert dagger["qwen2_5_vl:accuracy_paper"] == 82.1
    lines = md.splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:3] == ["Setting", "Qwen2.5-VL Acc (%)", "paper"]
    assert header[7] == "InstructBLIP Acc (%)"
    pii = [c.strip() for c in lines[3].strip("|").split("|")]
    assert pii[0] == "prompt_in_image (Prompt-in-Image)"
    assert pii[1].startswith("100.0 [100.0, 100.0] · Δ +50.0, p") and pii[2] == "84.3"
    assert pii[3].startswith("1.00 [") and pii[4] == "0.82"
    assert pii[7].startswith("100.0") and pii[8] == "—" and pii[10] == "—"
    dagger_cells = [c.strip() for c in lines[4].strip("|").split("|")]
    assert dagger_cells[0] == "prompt_in_image_instructed (Prompt-in-Image†)"
    assert dagger_cells[8] == "54.0" and dagger_cells[10] == "0.70" and dagger_cells[12] == "0.99"
    base = [c.strip() for c in lines[2].strip("|").split("|")]
    assert base[1].startswith("50.0 [") and "Δ" not in base[1] and base[2] == "80.2"   # no delta on baseline
    assert "Strict parser" in md


PAPER_TEXT = ROOT.parent / "shared" / "paper" / "000_e57ad71598414c59.txt"


@pytest.mark.skipif(not PAPER_TEXT.exists(), reason="the paper's text is not in the shared folder")
def test_paper_numbers_are_the_papers_table1_and_table2():
    """Every number of the paper's Table 1 (columns: Qwen2.5-VL, InstructBLIP, LLaVA-1.5; deltas in brackets
    dropped, '–' where none) and Table 2, read from the paper's own text, sits at the right model and setting."""
    text = PAPER_TEXT.read_text(encoding="utf-8")
    paper = _paper()
    row_of = paper["settings"]
    number = r"(–|\d+\.\d+)(?:\([^)]*\))?"
    columns = [(m, metric) for m in ("qwen2_5_vl", "instructblip", "llava_1_5")
               for metric in ("accuracy", "f1", "yes_ratio")]
    seen = set()
    for name in row_of:
        match = re.search(rf"^{re.escape(name)} " + " ".join([number] * 9) + r"\s*$", text, re.M)
        if match is None:  # Prompt-in-Image prints dashes for the two CLIP models: 3 numbers then 6 dashes
            match = re.search(rf"^{re.escape(name)} " + " ".join([number] * 3) + r"(?: –){6}\s*$", text, re.M)
        assert match, f"row {name!r} of Table 1 not found in the paper text"
        for (model, metric), value in zip(columns, match.groups(), strict=False):
            ours = paper["table1_pope"][model].get(name, {}).get(metric)
            assert ours == (None if value in ("–", None) else float(value)), (name, model, metric)
            if value not in ("–", None):
                seen.add((model, name))
    assert seen == {(m, r) for m, rows in paper["table1_pope"].items() for r in rows}  # nothing extra
    table2 = text[text.index("Baseline 32.3"):]
    for name, values in paper["table2_chair"]["qwen2_5_vl"].items():
        match = re.search(rf"^{re.escape(name)} {number} {number}\s*$", table2, re.M)
        assert match and [float(v) for v in match.groups()] == [values["chair_s"], values["chair_i"]], name


def test_table2_layout():
    rows = []
    for setting, value in (("baseline", 0.323), ("hybrid", 0.35)):
        rows.append({"task": "caption", "model": "qwen2_5_vl", "setting": setting, "chair_s": value,
                     "chair_s_ci_low": value - 0.02, "chair_s_ci_high": value + 0.02, "chair_i": 0.088,
                     "chair_i_ci_low": 0.08, "chair_i_ci_high": 0.09,
                     "chair_s_delta": np.nan if setting == "baseline" else 0.027,
                     "chair_s_p_value": np.nan if setting == "baseline" else 0.2,
                     "chair_i_delta": np.nan if setting == "baseline" else 0.0, "chair_i_p_value": np.nan})
    frame, md = scoring_tables.build_table(pl.DataFrame(rows), _paper(), "table2_chair", scoring_tables.TABLE2,
                                  {"qwen2_5_vl": {"family": "qwen2_5_vl", "path": "p"}}, ["baseline", "hybrid"], 0.95)
    hybrid = [c.strip() for c in md.splitlines()[3].strip("|").split("|")]
    assert hybrid == ["hybrid", "35.0 [33.0, 37.0] · Δ +2.7, p=0.200", "34.2",
                      "8.8 [8.0, 9.0] · Δ ±0.0", "9.9"]
    assert frame["qwen2_5_vl:chair_s_paper"][0] == 32.3


def test_pope_pyes_table_layout():
    rng = np.random.default_rng(4)
    frames = []
    for model in ("qwen2_5_vl", "instructblip"):
        for setting in ("baseline", "hybrid"):
            f = assign(_image_frame(setting, list(rng.random(20) < 0.7), per_image=3), model=model)
            f = assign(f, p_yes=rng.random(len(f)) if model == "qwen2_5_vl" else None)   # instructblip: no P(yes)
            frames.append(f)
    metrics, _ = scoring_pope.score_pope(concat(frames), 0, 200, 0.95)
    models = {"qwen2_5_vl": {"family": "qwen2_5_vl", "path": "Qwen/Qwen2.5-VL-7B-Instruct"},
              "instructblip": {"family": "instructblip", "path": "Salesforce/instructblip-vicuna-7b"}}
    frame, md = scoring_tables.build_pyes_table(metrics, _paper(), models, ["baseline", "control", "hybrid"], 0.95)
    assert list(zip(frame["model"], frame["setting"], strict=True)) == [
        ("qwen2_5_vl", "baseline"), ("qwen2_5_vl", "hybrid"), ("instructblip", "baseline"), ("instructblip", "hybrid")]
    assert "p_yes_auroc_ci_low" in frame.columns and "p_yes_disagreement_p_value" in frame.columns
    q = row(metrics, model="qwen2_5_vl", setting="hybrid")
    assert frame["p_yes_ece"][1] == q["p_yes_ece"] and frame["n_p_yes"][1] == 60
    lines = md.splitlines()
    assert [c.strip() for c in lines[0].strip("|").split("|")] == [
        "Model", "Setting", "with P(yes) / n", "AUROC", "Brier", "ECE", "Disagree (%)"]
    hybrid = [c.strip() for c in lines[3].strip("|").split("|")]
    assert hybrid[:3] == ["", "hybrid", "60 / 60"]
    assert hybrid[3].startswith(f"{q['p_yes_auroc']:.3f} [") and "· Δ " in hybrid[3] and ", p" in hybrid[3]
    assert hybrid[6].startswith(f"{q['p_yes_disagreement'] * 100:.1f} [")
    blip = [c.strip() for c in lines[4].strip("|").split("|")]
    assert blip == ["InstructBLIP", "baseline", "0 / 60", "—", "—", "—", "—"]
    assert "images resampled" in md
    # P(yes) says at which temperature it was taken: the metrics file's metadata, then the table's note
    assert scoring_pope.pope_metadata(metrics)["p_yes_temperature"] == 1.0
    _, md = scoring_tables.build_pyes_table(metrics, _paper(), models, ["baseline"], 0.95, p_yes_temperature=1.0)
    assert "P(yes) is taken at temperature 1.0: the model's untempered first-step distribution" in md
    assert "not recorded" in scoring_tables.build_pyes_table(metrics, _paper(), models, ["baseline"], 0.95)[1]


# --- the rules, through Snakemake -------------------------------------------------------------------------------

def test_scoring_rules_end_to_end(tmp_path: Path):
    """Fake inference files and COCO annotations in a scratch folder; only the scoring rules may run."""
    config = yaml.safe_load(open(ROOT / "config.yaml"))
    demo = yaml.safe_load(open(ROOT / "config.demo.yaml"))
    models = list({**config["models"], **demo["models"]})  # the merged config's models (the demo adds some)
    claimed = {s for task in config["tasks"].values() for s in task.get("settings") or []}
    settings = [s for s in config["settings"] if s not in claimed]  # the settings POPE and captions run
    root = tmp_path / demo["data"]["coco"]["root"] / "annotations"
    root.mkdir(parents=True)
    images = [{"id": i} for i in (1, 2, 3)]
    root.joinpath("instances_val2017.json").write_text(json.dumps({
        "images": images, "categories": [{"id": 18, "name": "dog"}, {"id": 17, "name": "cat"}],
        "annotations": [{"image_id": 1, "category_id": 18}, {"image_id": 2, "category_id": 17}]}))
    root.joinpath("captions_val2017.json").write_text(json.dumps({
        "images": images, "annotations": [{"image_id": 3, "caption": "A bench in a park."}]}))
    rng = np.random.default_rng(0)
    repeats = demo["inference"]["repeats"]
    for model in models:
        for setting in settings:
            for repeat in range(repeats):                   # the demo config's decoding repeats, one file each
                pope = _pope_frame(model, setting, ["yes", "no"] * 15,
                                   list(rng.choice(["Yes, there is.", "No.", "Maybe"], 30)))
                pope = assign(pope, image_id=np.arange(30) // 3)      # three questions per image
                if model == models[0]:                                # one backend gives P(yes), the others cannot
                    pope = assign(pope, p_yes=rng.random(30))
                cap = pl.DataFrame({"sample_id": ["caption-1", "caption-2", "caption-3"], "task": "caption",
                                    "model": model, "setting": setting, "image_id": [1, 2, 3],
                                    "question": "Describe.", "label": [None] * 3,
                                    "p_yes": pl.Series([None] * 3, dtype=pl.Float64),
                                    "response": ["A dog.", "A cat. A dog and", "A bench."]})
                for task, df in (("pope", pope), ("caption", cap)):
                    df = assign(df, text_prompt="q", prompt="q", image_path="x.png", n_prompt_tokens=1,
                                n_response_tokens=1, finish_reason="stop", seed=0, repeat=repeat)
                    if task == "caption":  # the second caption stopped at max_new_tokens
                        df = df.with_columns(finish_reason=pl.Series(["stop", "length", "stop"]),
                                             n_response_tokens=pl.Series([2, 8, 2]))
                    write_table(df, tmp_path / f"results/inference/{task}/{model}/{setting}/r{repeat}.parquet",
                                "inference")
    # the samples the files answer (the scorers check every file holds exactly these ids)
    for task, ids, image_ids, labels in (("pope", [f"pope-{i}" for i in range(30)], [i // 3 for i in range(30)],
                                          ["yes", "no"] * 15),
                                         ("caption", ["caption-1", "caption-2", "caption-3"], [1, 2, 3], [None] * 3)):
        n = len(ids)
        write_table(pl.DataFrame({"sample_id": ids, "task": task, "image_id": image_ids, "image_file": "x.jpg",
                                  "image_path": "x.jpg", "question": "q", "label": pl.Series(labels, dtype=pl.String),
                                  "question_id": pl.Series(list(range(n)) if task == "pope" else [None] * n,
                                                           dtype=pl.Int64),
                                  "object": pl.Series(["dog"] * n if task == "pope" else [None] * n, dtype=pl.String)}),
                    tmp_path / f"results/data/{task}_sample.parquet", "sample")
    targets = ["results/tables/table1_pope.md", "results/tables/table2_chair.md", "results/tables/table1_pope.csv",
               "results/tables/table2_chair.csv", "results/tables/pope_pyes.md", "results/tables/pope_pyes.csv"]
    # options first: conftest puts --configfile (which takes several values) right before these arguments
    only_scoring = ("--allowed-rules", "score_pope", "score_chair", "table1_pope", "table2_chair", "table_pope_pyes",
                    "--")
    run_snakemake(tmp_path, *only_scoring, *targets, timeout=600)
    pope = read_table(tmp_path / "results/scores/pope_metrics.parquet", "pope_metrics")
    assert len(pope) == len(models) * len(settings)
    assert set(pope["n_images"]) == {10} and set(pope["n_repeats"]) == {repeats} and set(pope["n"]) == {30 * repeats}
    assert (pope["n_p_yes"] > 0).to_list() == [m == models[0] for m in pope["model"]]
    assert pope.filter(pl.col("model") != models[0])["p_yes_auroc"].is_null().all()
    assert pope.filter(pl.col("model") == models[0])["p_yes_auroc"].is_not_null().all()
    assert read_metadata(tmp_path / "results/scores/pope_metrics.parquet")["p_yes_temperature"] == 1.0
    assert "taken at temperature 1.0" in (tmp_path / "results/tables/pope_pyes.md").read_text()
    pyes = pl.read_csv(tmp_path / "results/tables/pope_pyes.csv")
    # in the workflow's model order (the merged config's), the order of the metrics file
    assert len(pyes) == len(models) * len(settings)
    assert pyes["model"].unique(maintain_order=True).to_list() == pope["model"].unique(maintain_order=True).to_list()
    assert "images resampled" in (tmp_path / "results/tables/table1_pope.md").read_text()
    chair_m = read_table(tmp_path / "results/scores/chair_metrics.parquet", "chair_metrics")
    assert set(chair_m["chair_s"]) == {1 / 3} and set(chair_m["chair_i"]) == {1 / 4}
    caps = read_table(tmp_path / "results/scores/chair_captions.parquet", "chair_captions")
    assert caps["hallucinated_objects"][1].to_list() == ["dog"]
    md = (tmp_path / "results/tables/table2_chair.md").read_text()
    assert "| baseline | 33.3 [" in md and "32.3" in md
    # captions cut at max_new_tokens: one of three per repeat, mean length (2 + 8 + 2) / 3 tokens
    assert set(chair_m["n_truncated"]) == {repeats} and set(chair_m["mean_response_tokens"]) == {4.0}
    assert caps["truncated"].to_list() == [False, True, False] * (len(caps) // 3)
    cut = md[md.index("Captions cut at max_new_tokens"):]
    assert f"| baseline | {repeats} / {3 * repeats} (33.3%) | 4.0 |" in cut
    table2 = pl.read_csv(tmp_path / "results/tables/table2_chair.csv")
    assert table2[f"{models[0]}:n_truncated"].to_list() == [repeats] * len(table2)
    # the demo sets scoring.chair.drop_incomplete_sentence: the cut caption's "A dog and" goes, and with it the one
    # hallucinated dog; the plain CHAIR above keeps it
    assert caps["response_complete"].to_list()[:3] == ["A dog.", "A cat.", "A bench."]
    assert set(chair_m["chair_s_complete"]) == {0.0} and set(chair_m["chair_i_complete"]) == {0.0}
    assert table2[f"{models[0]}:chair_s_complete"].to_list() == [0.0] * len(table2)
    assert f"| baseline | {repeats} / {3 * repeats} (33.3%) | 4.0 | 0.0 | 0.0 |" in cut
    assert read_metadata(tmp_path / "results/scores/chair_metrics.parquet")["drop_incomplete_sentence"] is True
    assert md.index("Qwen2.5-VL CHAIRs") < md.index("LLaVA-1.5 CHAIRs") < md.index("InstructBLIP CHAIRs")
    # a second dry run has nothing to do: params are canonical
    dry = run_snakemake(tmp_path, "-n", *only_scoring, *targets)
    assert "Nothing to be done" in dry.stdout + dry.stderr, dry.stdout + dry.stderr


def test_inference_without_pope_label_is_one_clear_error(tmp_path: Path):
    df = assign(
        _pope_frame("m", "baseline", ["yes", None], ["Yes", "No"]), text_prompt="q", prompt="q", image_path="x.png", n_prompt_tokens=1, n_response_tokens=1,
        finish_reason="stop", seed=0, repeat=0)
    path = tmp_path / "results/inference/pope/m/baseline/r0.parquet"
    write_table(df, path, "inference")
    with pytest.raises(stage.PipelineError, match=r"baseline/r0.parquet: row 1 has no POPE label"):
        inference_files.read_inference([str(path)], "pope")


# --- decoding repeats -----------------------------------------------------------------------------------------

def _repeated(frames: list[pl.DataFrame]) -> pl.DataFrame:
    """Concatenate one frame per decoding repeat, numbering them 0, 1, ..."""
    return concat([assign(f, repeat=r) for r, f in enumerate(frames)])


def test_pope_repeats_mean_sd_min_max_and_interval_by_hand():
    labels = ["yes", "no"] * 4                                        # 4 images x 2 questions
    r0 = ["Yes", "No", "Yes", "No", "Yes", "Yes", "No", "No"]         # right: 1,1,1,1,1,0,0,1 -> 6/8; says yes 4/8
    r1 = ["Yes", "Yes", "Yes", "Yes", "No", "No", "No", "Yes"]        # right: 1,0,1,0,0,1,0,0 -> 3/8; says yes 5/8
    frames = [assign(_pope_frame("m", "baseline", labels, r), image_id=np.arange(8) // 2) for r in (r0, r1)]
    df = _repeated(frames)
    metrics, answers = scoring_pope.score_pope(df, 0, 400, 0.95)
    m = metrics.row(0, named=True)
    assert m["n_repeats"] == 2 and m["n"] == 16 and m["n_images"] == 4 and list(answers["repeat"]) == [0] * 8 + [1] * 8
    assert (m["tp"], m["fn"], m["tn"], m["fp"]) == (3 + 2, 1 + 2, 3 + 1, 1 + 3)          # summed over repeats
    acc = np.array([6 / 8, 3 / 8])
    assert m["accuracy"] == pytest.approx(acc.mean())
    assert m["accuracy_repeat_sd"] == pytest.approx(abs(acc[0] - acc[1]) / math.sqrt(2))
    assert (m["accuracy_repeat_min"], m["accuracy_repeat_max"]) == pytest.approx((3 / 8, 6 / 8))
    yes = np.array([4 / 8, 5 / 8])
    assert m["yes_ratio"] == pytest.approx(yes.mean()) and m["yes_ratio_repeat_sd"] == pytest.approx(yes.std(ddof=1))
    f1 = np.array([2 * 3 / (2 * 3 + 1 + 1), 2 * 2 / (2 * 2 + 3 + 2)])  # 2TP / (2TP + FP + FN) per repeat
    assert m["f1"] == pytest.approx(f1.mean()) and m["f1_repeat_max"] == pytest.approx(f1.max())
    # the interval: images drawn once per resample, the same multiplicities for both repeats, then the mean
    weights = st.cluster_weights(st.group_rng(0, "ci", "pope", "m", "baseline"), 4, 400)
    per_repeat = []
    for frame in frames:
        right = scoring_pope.parse_answers(frame)["correct_official"].to_numpy().astype(float)
        sums = st.cluster_sums(np.arange(8) // 2, 4, np.column_stack([right, np.ones(8)]))
        per_repeat.append(st.ratio(*(weights @ sums).T))
    low, high = st.percentile_interval(np.mean(per_repeat, axis=0), 0.95)
    assert (m["accuracy_ci_low"], m["accuracy_ci_high"]) == pytest.approx((low, high))
    # one repeat: a repeat column of zeros changes no number, and the spread has no SD
    single, _ = scoring_pope.score_pope(frames[0], 0, 400, 0.95)
    tagged, _ = scoring_pope.score_pope(assign(frames[0], repeat=0), 0, 400, 0.95)
    assert single.equals(tagged, null_equal=True)
    assert single["n_repeats"][0] == 1 and math.isnan(single["accuracy_repeat_sd"][0])
    assert single["accuracy_repeat_min"][0] == single["accuracy"][0] == 6 / 8


def test_paired_test_with_repeats_is_the_image_bootstrap():
    """With two repeats McNemar has no single answer per question: the accuracy p-value is the paired image
    bootstrap over both repeats, and the delta is the difference of the means over repeats."""
    rng = np.random.default_rng(7)
    base = [_image_frame("baseline", list(rng.random(30) < 0.5), per_image=2) for _ in range(2)]
    other = [_image_frame("pii", list(rng.random(30) < 0.8), per_image=2) for _ in range(2)]
    metrics, _ = scoring_pope.score_pope(concat([_repeated(base), _repeated(other)]), 0, 500, 0.95)
    pii = row(metrics, setting="pii")
    acc = {k: [scoring_pope.parse_answers(f)["correct_official"].mean() for f in frames]
           for k, frames in (("b", base), ("s", other))}
    assert pii["accuracy_delta"] == pytest.approx(np.mean(acc["s"]) - np.mean(acc["b"]))
    assert pii["n_paired"] == 60 and pii["n_repeats"] == 2
    weights = st.cluster_weights(st.group_rng(0, "paired", "pope", "m", "pii"), 30, 500)
    boot = {}
    for k, frames in (("b", base), ("s", other)):
        per = []
        for f in frames:
            right = scoring_pope.parse_answers(f)["correct_official"].to_numpy().astype(float)
            per.append(st.ratio(*(weights @ st.cluster_sums(f["image_id"].to_numpy(), 30,
                                                             np.column_stack([right, np.ones(60)]))).T))
        boot[k] = np.mean(per, axis=0)
    assert pii["accuracy_p_value"] == pytest.approx(st.bootstrap_p(boot["s"] - boot["b"]))
    low, high = st.percentile_interval(boot["s"] - boot["b"], 0.95)
    assert (pii["accuracy_delta_ci_low"], pii["accuracy_delta_ci_high"]) == pytest.approx((low, high))
    # repeat 0 alone: McNemar, as before
    alone, _ = scoring_pope.score_pope(concat([base[0], other[0]]), 0, 500, 0.95)
    b_right = scoring_pope.parse_answers(base[0])["correct_official"].to_numpy()
    s_right = scoring_pope.parse_answers(other[0])["correct_official"].to_numpy()
    assert row(alone, setting="pii")["accuracy_p_value"] == pytest.approx(
        st.mcnemar_exact(b_right, s_right)[2])


def test_chair_repeats_mean_sd_min_max_by_hand():
    def captions(setting, hallucinated, n_mentions):
        n = len(hallucinated)
        return pl.DataFrame({"sample_id": [f"caption-{i}" for i in range(n)], "task": "caption", "model": "m",
                             "setting": setting, "image_id": np.arange(n), "n_hallucinated": hallucinated,
                             "hallucinated": np.asarray(hallucinated) > 0, "n_mentions": n_mentions,
                             "n_gt_mentioned": 1, "n_gt": 2, "n_words": 10})
    r0 = captions("baseline", [1, 0, 0, 2], [2, 2, 1, 4])          # CHAIRs 2/4, CHAIRi 3/9
    r1 = captions("baseline", [0, 0, 0, 1], [2, 3, 1, 2])          # CHAIRs 1/4, CHAIRi 1/8
    metrics = chair.chair_metrics(_repeated([r0, r1]), 0, 300, 0.95)
    m = metrics.row(0, named=True)
    chair_s, chair_i = np.array([2 / 4, 1 / 4]), np.array([3 / 9, 1 / 8])
    assert m["n_repeats"] == 2 and m["n"] == 8 and m["n_images"] == 4 and m["n_hallucinated_mentions"] == 4
    assert m["chair_s"] == pytest.approx(chair_s.mean()) and m["chair_i"] == pytest.approx(chair_i.mean())
    assert m["chair_s_repeat_sd"] == pytest.approx(chair_s.std(ddof=1))
    assert (m["chair_i_repeat_min"], m["chair_i_repeat_max"]) == pytest.approx((1 / 8, 3 / 9))
    assert m["recall"] == 0.5 and m["recall_repeat_sd"] == 0
    weights = st.cluster_weights(st.group_rng(0, "ci", "caption", "m", "baseline"), 4, 300)
    boot = np.mean([weights @ f["hallucinated"].to_numpy().astype(float) / 4 for f in (r0, r1)], axis=0)
    assert (m["chair_s_ci_low"], m["chair_s_ci_high"]) == pytest.approx(st.percentile_interval(boot, 0.95))


def test_tables_show_repeat_spread_only_with_repeats():
    labels = ["yes", "no"] * 10
    runs = {"baseline": (["Yes"] * 20, ["Yes", "No"] * 10), "hybrid": (["Yes", "No"] * 10, ["No"] * 20)}
    frames = [_repeated([_pope_frame("qwen2_5_vl", s, labels, r) for r in rs]) for s, rs in runs.items()]
    models = {"qwen2_5_vl": {"family": "qwen2_5_vl", "path": "Qwen/Qwen2.5-VL-7B-Instruct"}}
    metrics, _ = scoring_pope.score_pope(concat(frames), 0, 200, 0.95)
    frame, md = scoring_tables.build_table(metrics, _paper(), "table1_pope", scoring_tables.TABLE1, models, ["baseline", "hybrid"],
                                  0.95, scoring_tables.TABLE1_NOTES_REPEATS, strict=True)
    base = row(frame, setting="baseline")
    assert base["qwen2_5_vl:accuracy"] == pytest.approx(75.0)            # mean of 50 and 100
    assert (base["qwen2_5_vl:accuracy_repeat_min"], base["qwen2_5_vl:accuracy_repeat_max"]) == (50.0, 100.0)
    assert base["qwen2_5_vl:accuracy_repeat_sd"] == pytest.approx(50 / math.sqrt(2))
    assert "Spread over the 2 decoding repeats" in md and "| baseline | 35.4 (50.0–100.0) |" in md
    assert "run 2 times" in md and "p: paired image-level bootstrap for every metric" in md
    single = assign(metrics, n_repeats=1)
    frame1, md1 = scoring_tables.build_table(single, _paper(), "table1_pope", scoring_tables.TABLE1, models, ["baseline", "hybrid"],
                                    0.95, scoring_tables.TABLE1_NOTES, strict=True)
    assert not [c for c in frame1.columns if "repeat" in c] and "decoding repeats" not in md1
    pyes, pyes_md = scoring_tables.build_pyes_table(metrics, _paper(), models, ["baseline", "hybrid"], 0.95)
    assert "p_yes_auroc_repeat_sd" in pyes.columns and "run 2 times" in pyes_md


def test_inference_file_names_carry_the_repeat(tmp_path: Path):
    df = assign(_pope_frame("m", "baseline", ["yes", "no"], ["Yes", "No"]),
                text_prompt="q", prompt="q", image_path="x.png", n_prompt_tokens=1, n_response_tokens=1,
                finish_reason="stop", seed=0, repeat=1)
    path = tmp_path / "results/inference/pope/m/baseline/r1.parquet"
    write_table(df, path, "inference")
    data, groups = inference_files.read_inference([str(path)], "pope")
    assert groups == [("pope", "m", "baseline")] and set(data["repeat"]) == {1}
    assert inference_files.key_of_path(path) == ("pope", "m", "baseline", 1)
    wrong = tmp_path / "results/inference/pope/m/baseline/r0.parquet"
    write_table(df, wrong, "inference")
    with pytest.raises(stage.PipelineError, match=r"r0.parquet: column 'repeat' holds \[1\], the file name says '0'"):
        inference_files.read_inference([str(wrong)], "pope")
    with pytest.raises(stage.PipelineError, match="given twice"):
        inference_files.read_inference([str(path), str(path)], "pope")
    old = tmp_path / "results/inference/pope/m/baseline.parquet"
    write_table(df, old, "inference")
    with pytest.raises(stage.PipelineError, match=r"baseline.parquet: not an inference file \(results/inference/"):
        inference_files.read_inference([str(old)], "pope")


def test_an_inference_file_must_answer_exactly_its_sample(tmp_path: Path):
    """A cut or edited inference file (metadata intact) is refused, naming the file and the missing ids, rather than
    scored on fewer rows than the other settings."""
    df = assign(_pope_frame("m", "baseline", ["yes", "no"], ["Yes", "No"]),
                text_prompt="q", prompt="q", image_path="x.png", n_prompt_tokens=1, n_response_tokens=1,
                finish_reason="stop", seed=0, repeat=0)
    path = tmp_path / "results/inference/pope/m/baseline/r0.parquet"
    write_table(df, path, "inference")
    ids = df["sample_id"].to_list()
    data, _ = inference_files.read_inference([str(path)], "pope", sample_ids=ids)
    assert len(data) == 2
    with pytest.raises(stage.PipelineError, match=r"r0.parquet: its rows do not match the task's sample: 1 of the "
                       r"sample's 3 ids missing \(pope-extra\)"):
        inference_files.read_inference([str(path)], "pope", sample_ids=ids + ["pope-extra"])
    with pytest.raises(stage.PipelineError, match=rf"1 ids not in the sample \({ids[1]}\)"):
        inference_files.read_inference([str(path)], "pope", sample_ids=ids[:1])
