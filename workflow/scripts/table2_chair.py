"""Rule table2_chair: the paper's Table 2 (CHAIR) with our numbers beside the paper's (``pii.scoring.tables``)."""

from pii.core.stage import run_main
from pii.core.tables import read_table
from pii.scoring.tables import TABLE2_TITLE, models_by_key, read_paper, table2_chair, write_table_files


def main(smk) -> None:
    p = smk.params
    metrics = read_table(smk.input.metrics, "chair_metrics")
    frame, markdown = table2_chair(metrics, read_paper(smk.input.paper), models_by_key(p.models), p.settings,
                                   p.confidence)
    write_table_files(frame, markdown, smk.output.csv, smk.output.md, TABLE2_TITLE)


if "snakemake" in globals():
    run_main(main, snakemake)
