"""The scoring stage's part of the DAG: the inference files each scorer reads, the models the tables show, and
every task's metrics and tables (pii/tasks/)."""

from __future__ import annotations

from pii.core.study import Study


def scored_inference(study: Study, task: str) -> list[str]:
    """Every repeat of every model x setting: the scorers compute each metric per repeat and report the mean."""
    return [p for m in study.models for s in study.task_settings(task) for p in study.inference_paths(task, m, s)]


def table_models(config: dict) -> list[dict]:
    """The models the tables and figures show, in config order, with what finds the paper's column for each: a
    list of entries (key, family, path, image_preprocess), each entry's keys in a fixed order (params compare by
    repr)."""
    return [
        {
            "key": m,
            "family": entry["family"],
            "path": entry["path"],
            "image_preprocess": entry.get("image_preprocess", "checkpoint"),
        }
        for m, entry in config["models"].items()
    ]


def scoring_targets(study: Study) -> list[str]:
    """Each task's metrics and tables, and the paper's Table 1 and 2 drawn."""
    targets = []
    for t in study.tasks:
        kind = study.task_kind(t)
        targets += kind.metrics_paths(t)
        targets += [f"results/tables/{name}.{ext}" for name in kind.table_names(t) for ext in ("md", "csv")]
    return targets + ["results/figures/table1_pope.png", "results/figures/table2_chair.png"]
