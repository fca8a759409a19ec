"""Rule table1_pope: the paper's Table 1 (POPE) with our numbers beside the paper's (``pii.scoring.tables``)."""

from pii.core.stage import run_main
from pii.core.tables import read_table
from pii.scoring.tables import TABLE1_TITLE, models_by_key, read_paper, table1_pope, write_table_files


def main(smk) -> None:
    p = smk.params
    metrics = read_table(smk.input.metrics, "pope_metrics")
    frame, markdown = table1_pope(metrics, read_paper(smk.input.paper), models_by_key(p.models), p.settings,
                                  p.confidence)
    write_table_files(frame, markdown, smk.output.csv, smk.output.md, TABLE1_TITLE)


if "snakemake" in globals():
    run_main(main, snakemake)
