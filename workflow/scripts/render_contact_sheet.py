"""Rule render_contact_sheet: the first samples of a task side by side, original | control | question
(``render``)."""

from pipeline_io import log, read_table, run_main
from render import VARIANTS, contact_sheet


def main(snakemake) -> None:
    manifests = {v: read_table(snakemake.input[v], "manifest") for v in VARIANTS}
    contact_sheet(manifests, int(snakemake.params.n), snakemake.params.font, snakemake.output[0])
    log.info("wrote %s", snakemake.output[0])


if "snakemake" in globals():
    run_main(main, snakemake)
