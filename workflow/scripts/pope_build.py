"""Rule pope_build: POPE's random, popular and adversarial question files built from a COCO instances file by
POPE's method (``pii.data.pope_questions``)."""

from pii.core.stage import run_main
from pii.data.pope_questions import write_pope_files


def main(smk) -> None:
    p = smk.params
    write_pope_files(smk.input.instances, dict(smk.output.items()), p.n_images, p.n_per_label, p.min_objects, p.seed)


if "snakemake" in globals():
    run_main(main, snakemake)
