"""The report stage's part of the DAG: everything the summary page shows, the tables copied for
`snakemake --report`, and the fingerprint of the experiment's settings the page prints."""

from __future__ import annotations

import json
from collections.abc import Callable

from pii.analysis.dag import analysis_targets
from pii.core.study import Study
from pii.core.tables import canonical_json, config_hash
from pii.inference.dag import inference_targets, invariance_targets

# The experiment's settings whose fingerprint the report page shows (not how files are fetched).
REPORT_CONFIG_KEYS = (
    "seed",
    "sampling",
    "models",
    "settings",
    "decoding",
    "tasks",
    "analysis",
    "render",
    ("data", "pope"),
)


def report_table_names(study: Study) -> list[str]:
    """The tables copied for `snakemake --report` (the report_table rule), every task's (pii/tasks/)."""
    return [name for t in study.tasks for name in study.task_kind(t).table_names(t)]


def report_metrics(study: Study) -> list[str]:
    """The metrics tables the page reads: every task's (POPE, CHAIR and the strip-visibility groups, the
    transcriptions, a further POPE task's)."""
    return [path for t in study.tasks for path in study.task_kind(t).metrics_paths(t)]


def report_inputs(study: Study, workflow_file: Callable[..., str]) -> dict:
    """Everything the summary page shows; analyses only when their outputs are part of the run. The tables are
    read as data: the metrics tables of the scoring stage, the paper's numbers from the tables' CSV files and the
    paper's model and row names from the paper file (never the Markdown tables). ``workflow_file``: the path of a
    file shipped in workflow/, as the Snakefile names it."""
    names = report_table_names(study)
    return {
        "metrics": report_metrics(study),
        "invariance": invariance_targets(study),
        # every table's copy (for `snakemake --report`); the page reads the paper's numbers from Table 1 / 2's
        "table_csvs": [f"results/report/tables/{name}.csv" for name in names],
        "paper": workflow_file("data", "paper_numbers.yaml"),
        # the page's templates: editing one rebuilds the page
        "templates": [workflow_file("report", name) for name in ("index.html.j2", "summary.md.j2")],
        "contact_sheets": [f"results/report/figures/contact_sheet_{t}.png" for t in study.sampled_tasks],
        "samples": [study.sample_path(t) for t in study.sampled_tasks],
        "inference": inference_targets(study),
        "figures": [p for p in analysis_targets() if p.endswith(".png")],
        # Table 1 / Table 2 drawn (plot_table1_pope, plot_table2_chair), shown after the table they draw
        "result_figures": [
            f"results/figures/{name}.png" for name in names if name in ("table1_pope", "table2_chair")
        ],
    }


def _subtree(config: dict, key):
    node = config
    for part in key if isinstance(key, tuple) else (key,):
        node = node[part]
    return node


def report_config_digest(config: dict) -> str:
    """The report's config hash: of the REPORT_CONFIG_KEYS subtrees' canonical JSON, so any edit to them reruns the
    report and no other edit does."""
    value = {".".join(k) if isinstance(k, tuple) else k: _subtree(config, k) for k in REPORT_CONFIG_KEYS}
    # through JSON and back, as the digest has always been taken (a finished report keeps its digest)
    return config_hash(json.loads(canonical_json(value)))


def report_targets() -> list[str]:
    return ["results/report/index.html", "results/report/summary.md"]
