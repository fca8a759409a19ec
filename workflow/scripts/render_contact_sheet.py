"""Rule render_contact_sheet: the first samples of a task side by side, original | control | question
(``pii.render.contact_sheet``)."""

from pii.core.stage import log, run_main
from pii.core.tables import read_table
from pii.render.contact_sheet import contact_sheet
from pii.render.variants import VARIANTS


def main(snakemake) -> None:
    manifests = {v: read_table(snakemake.input[v], "manifest") for v in VARIANTS}
    contact_sheet(manifests, int(snakemake.params.n), snakemake.params.font, snakemake.output[0])
    log.info("wrote %s", snakemake.output[0])


if "snakemake" in globals():
    run_main(main, snakemake)
