"""Rule plot_table2_chair: Table 2 (CHAIR) drawn next to the paper's numbers (``pii.scoring.figures``)."""

from pii.core.stage import run_main
from pii.scoring.figures import plot_table
from pii.scoring.tables import models_by_key


def main(smk) -> None:
    p = smk.params
    plot_table("table2_chair", smk.input.metrics, smk.input.paper, smk.output.png, models_by_key(p.models), p.settings,
               p.confidence)


if "snakemake" in globals():
    run_main(main, snakemake)
