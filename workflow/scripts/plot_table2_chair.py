"""Rule plot_table2_chair: Table 2 (CHAIR) drawn next to the paper's numbers (``plot_results``)."""

from paper_tables import models_by_key
from pipeline_io import run_main
from plot_results import plot_table


def main(smk) -> None:
    p = smk.params
    plot_table("table2_chair", smk.input.metrics, smk.input.paper, smk.output.png, models_by_key(p.models), p.settings,
               p.confidence)


if "snakemake" in globals():
    run_main(main, snakemake)
