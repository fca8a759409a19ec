# Stage: scoring. POPE (official answer rule + strict parser) and CHAIR, with bootstrap intervals and paired
# tests against the baseline setting, then the paper's Table 1 (POPE) and Table 2 (CHAIR).


def scored_inference(task):
    return [inference_path(task, m, s) for m in MODELS for s in SETTINGS]


def coco_annotation(kind):
    return f"{config['data']['coco']['root']}/annotations/{kind}_val2017.json"


def scoring_data(name):
    """A data file shipped with the workflow (synonym table, paper numbers), independent of --directory."""
    return f"{workflow.basedir}/workflow/data/{name}"


def table_params():
    """What the tables show: models in config order with their identity (to find the paper's column), setting
    order, the interval level. Lists, not dicts: canonical JSON sorts keys and would lose the order.
    """
    models = [
        {
            "key": m,
            "family": config["models"][m]["family"],
            "path": config["models"][m]["path"],
        }
        for m in MODELS
    ]
    return canonical("scoring", models=models, settings=SETTINGS)


rule score_pope:
    input:
        inference=scored_inference("pope"),
    output:
        metrics="results/scores/pope_metrics.parquet",
        answers="results/scores/pope_answers.parquet",
    log:
        "logs/scoring/score_pope.log",
    params:
        cfg=canonical("scoring", "seed"),
    script:
        "../scripts/score.py"


rule score_chair:
    input:
        inference=scored_inference("caption"),
        instances=coco_annotation("instances"),
        captions=coco_annotation("captions"),
        synonyms=scoring_data("chair_synonyms.yaml"),
    output:
        metrics="results/scores/chair_metrics.parquet",
        captions="results/scores/chair_captions.parquet",
    log:
        "logs/scoring/score_chair.log",
    params:
        cfg=canonical("scoring", "seed"),
    script:
        "../scripts/score.py"


rule table1_pope:
    input:
        metrics="results/scores/pope_metrics.parquet",
        paper=scoring_data("paper_numbers.yaml"),
    output:
        csv="results/tables/table1_pope.csv",
        md="results/tables/table1_pope.md",
    log:
        "logs/scoring/table1_pope.log",
    params:
        cfg=table_params(),
    script:
        "../scripts/score.py"


rule table2_chair:
    input:
        metrics="results/scores/chair_metrics.parquet",
        paper=scoring_data("paper_numbers.yaml"),
    output:
        csv="results/tables/table2_chair.csv",
        md="results/tables/table2_chair.md",
    log:
        "logs/scoring/table2_chair.log",
    params:
        cfg=table_params(),
    script:
        "../scripts/score.py"


def scoring_targets():
    targets = []
    if "pope" in TASKS:
        targets += [
            "results/scores/pope_metrics.parquet",
            "results/tables/table1_pope.md",
        ]
        targets += ["results/tables/table1_pope.csv"]
    if "caption" in TASKS:
        targets += [
            "results/scores/chair_metrics.parquet",
            "results/tables/table2_chair.md",
        ]
        targets += ["results/tables/table2_chair.csv"]
    return targets
