"""Rule demo_models: the tiny, randomly initialised (seeded) checkpoint of one model family, built offline
(``pii.inference.demo_checkpoints``)."""

from pii.core.stage import run_main
from pii.inference.demo_checkpoints import build


def main(smk) -> None:
    build(smk.wildcards.family, smk.output[0], seed=int(smk.params.seed))


if "snakemake" in globals():
    run_main(main, snakemake)
