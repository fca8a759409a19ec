# Stage: scoring. POPE (official answer rule + strict parser, P(yes) metrics) and CHAIR, with clustered bootstrap
# intervals (images resampled) and paired tests against the baseline setting, then the paper's Table 1 (POPE),
# Table 2 (CHAIR) and the P(yes) table.

from pii.data.dag import coco_annotation
from pii.scoring.dag import scored_inference, scoring_targets, table_models


# Every POPE task: the paper's pope and any further split (tasks.<t>.kind: pope, e.g. pope_random).
rule score_pope:
    input:
        inference=lambda wc: scored_inference(STUDY, wc.task),
        # every file must answer exactly the sample's questions
        sample=lambda wc: sample_path(wc.task),
    output:
        metrics="results/scores/{task}_metrics.parquet",
        answers="results/scores/{task}_answers.parquet",
    log:
        "logs/scoring/score_{task}.log",
    wildcard_constraints:
        task="|".join(POPE_TASKS),
    conda:
        "../../envs/scoring.yaml"
    params:
        seed=config["seed"],
        resamples=config["scoring"]["bootstrap_resamples"],
        confidence=config["scoring"]["confidence"],
        baseline=SCORING_BASELINE,
    script:
        "../scripts/score_pope.py"


rule score_chair:
    input:
        inference=scored_inference(STUDY, "caption"),
        sample=sample_path("caption"),
        instances=coco_annotation(config, "instances"),
        captions=coco_annotation(config, "captions"),
        synonyms=workflow_file("data", "chair_synonyms.yaml"),
    output:
        metrics="results/scores/chair_metrics.parquet",
        captions="results/scores/chair_captions.parquet",
    log:
        "logs/scoring/score_chair.log",
    conda:
        "../../envs/scoring.yaml"
    params:
        seed=config["seed"],
        resamples=config["scoring"]["bootstrap_resamples"],
        confidence=config["scoring"]["confidence"],
        baseline=SCORING_BASELINE,
        drop_incomplete_sentence=config["scoring"]["chair"]["drop_incomplete_sentence"],
    script:
        "../scripts/score_chair.py"


rule table1_pope:
    input:
        metrics="results/scores/pope_metrics.parquet",
        paper=workflow_file("data", "paper_numbers.yaml"),
    output:
        csv="results/tables/table1_pope.csv",
        md="results/tables/table1_pope.md",
    log:
        "logs/scoring/table1_pope.log",
    localrule: True
    conda:
        "../../envs/scoring.yaml"
    params:
        models=table_models(config),
        settings=STUDY_SETTINGS,
        confidence=config["scoring"]["confidence"],
    script:
        "../scripts/table1_pope.py"


# A further POPE task's table, in Table 1's layout (the paper reports the adversarial split only).
rule pope_task_table:
    input:
        metrics="results/scores/{task}_metrics.parquet",
        paper=workflow_file("data", "paper_numbers.yaml"),
    output:
        csv="results/tables/{task}.csv",
        md="results/tables/{task}.md",
    log:
        "logs/scoring/table_{task}.log",
    wildcard_constraints:
        task="|".join(t for t in POPE_TASKS if t != "pope") or "(?!)",
    localrule: True
    conda:
        "../../envs/scoring.yaml"
    params:
        models=table_models(config),
        settings=STUDY_SETTINGS,
        confidence=config["scoring"]["confidence"],
    script:
        "../scripts/pope_task_table.py"


rule table2_chair:
    input:
        metrics="results/scores/chair_metrics.parquet",
        paper=workflow_file("data", "paper_numbers.yaml"),
    output:
        csv="results/tables/table2_chair.csv",
        md="results/tables/table2_chair.md",
    log:
        "logs/scoring/table2_chair.log",
    localrule: True
    conda:
        "../../envs/scoring.yaml"
    params:
        models=table_models(config),
        settings=STUDY_SETTINGS,
        confidence=config["scoring"]["confidence"],
    script:
        "../scripts/table2_chair.py"


rule table_pope_pyes:
    input:
        metrics="results/scores/pope_metrics.parquet",
        paper=workflow_file("data", "paper_numbers.yaml"),
    output:
        csv="results/tables/pope_pyes.csv",
        md="results/tables/pope_pyes.md",
    log:
        "logs/scoring/table_pope_pyes.log",
    localrule: True
    conda:
        "../../envs/scoring.yaml"
    params:
        models=table_models(config),
        settings=STUDY_SETTINGS,
        confidence=config["scoring"]["confidence"],
    script:
        "../scripts/table_pope_pyes.py"


# Table 1 and Table 2 as figures: per setting, each model's value with its interval and the paper's number.


rule plot_table1_pope:
    input:
        metrics="results/scores/pope_metrics.parquet",
        paper=workflow_file("data", "paper_numbers.yaml"),
    output:
        png=report(
            "results/figures/table1_pope.png",
            caption="../report/table1_pope_figure.rst",
            category="Result figures",
        ),
    log:
        "logs/scoring/plot_table1_pope.log",
    localrule: True
    conda:
        "../../envs/scoring.yaml"
    params:
        models=table_models(config),
        settings=STUDY_SETTINGS,
        confidence=config["scoring"]["confidence"],
    script:
        "../scripts/plot_table1_pope.py"


rule plot_table2_chair:
    input:
        metrics="results/scores/chair_metrics.parquet",
        paper=workflow_file("data", "paper_numbers.yaml"),
    output:
        png=report(
            "results/figures/table2_chair.png",
            caption="../report/table2_chair_figure.rst",
            category="Result figures",
        ),
    log:
        "logs/scoring/plot_table2_chair.log",
    localrule: True
    conda:
        "../../envs/scoring.yaml"
    params:
        models=table_models(config),
        settings=STUDY_SETTINGS,
        confidence=config["scoring"]["confidence"],
    script:
        "../scripts/plot_table2_chair.py"


# How much of the strip each model saw (inference column strip_visible_fraction): POPE and CHAIR per group.
rule score_visibility:
    input:
        pope_answers="results/scores/pope_answers.parquet",
        chair_captions="results/scores/chair_captions.parquet",
        pope_inference=scored_inference(STUDY, "pope"),
        caption_inference=scored_inference(STUDY, "caption"),
    output:
        metrics="results/scores/visibility_metrics.parquet",
        csv="results/tables/strip_visibility.csv",
        md="results/tables/strip_visibility.md",
    log:
        "logs/scoring/score_visibility.log",
    conda:
        "../../envs/scoring.yaml"
    params:
        seed=config["seed"],
        resamples=config["scoring"]["bootstrap_resamples"],
        confidence=config["scoring"]["confidence"],
    script:
        "../scripts/score_visibility.py"


# Can each model read the strip? Its transcription against the rendered text.
rule score_transcribe:
    input:
        inference=lambda wc: scored_inference(STUDY, "transcribe"),
        manifests=lambda wc: [
            manifest_path("transcribe", setting_variant(s))
            for s in task_settings("transcribe")
        ],
    output:
        metrics="results/scores/transcribe_metrics.parquet",
        csv="results/tables/transcribe.csv",
        md="results/tables/transcribe.md",
    log:
        "logs/scoring/score_transcribe.log",
    conda:
        "../../envs/scoring.yaml"
    params:
        seed=config["seed"],
        resamples=config["scoring"]["bootstrap_resamples"],
        confidence=config["scoring"]["confidence"],
    script:
        "../scripts/score_transcribe.py"
