"""Rule score_visibility: POPE and CHAIR per strip-visibility group (``pii.scoring.visibility``)."""

from pii.core.stage import run_main
from pii.scoring.visibility import score_visibility


def main(smk) -> None:
    p = smk.params
    score_visibility(smk.input.pope_answers, smk.input.chair_captions, list(smk.input.pope_inference),
                     list(smk.input.caption_inference), int(p.seed), int(p.resamples), float(p.confidence),
                     smk.output.metrics, smk.output.csv, smk.output.md)


if "snakemake" in globals():
    run_main(main, snakemake)
