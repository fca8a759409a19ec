"""Rule pope_task_table: a further POPE task's table (e.g. pope_random), in Table 1's layout
(``pii.scoring.tables``)."""

from pii.core.stage import run_main
from pii.core.tables import read_table
from pii.scoring.tables import models_by_key, pope_task_table, pope_task_title, read_paper, write_table_files


def main(smk) -> None:
    p, task = smk.params, smk.wildcards.task
    metrics = read_table(smk.input.metrics, "pope_metrics")
    frame, markdown = pope_task_table(metrics, read_paper(smk.input.paper), task, models_by_key(p.models),
                                      p.settings, p.confidence)
    write_table_files(frame, markdown, smk.output.csv, smk.output.md, pope_task_title(task))


if "snakemake" in globals():
    run_main(main, snakemake)
