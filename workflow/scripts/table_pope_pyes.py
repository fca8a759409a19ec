"""Rule table_pope_pyes: POPE's P(yes) metrics per model and setting (``pii.scoring.tables``)."""

from pii.core.stage import run_main
from pii.core.tables import read_metadata, read_table
from pii.scoring.tables import PYES_TITLE, build_pyes_table, models_by_key, read_paper, write_table_files


def main(smk) -> None:
    p = smk.params
    metrics = read_table(smk.input.metrics, "pope_metrics")
    frame, markdown = build_pyes_table(metrics, read_paper(smk.input.paper), models_by_key(p.models), p.settings,
                                       p.confidence, read_metadata(smk.input.metrics).get("p_yes_temperature"))
    write_table_files(frame, markdown, smk.output.csv, smk.output.md, PYES_TITLE)


if "snakemake" in globals():
    run_main(main, snakemake)
