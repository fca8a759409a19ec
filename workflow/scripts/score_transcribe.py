"""Rule score_transcribe: can each model read the strip? Exact match and character error rate of its transcription
against the rendered text, overall and per strip-visibility group (``pii.scoring.transcription``)."""

from pii.core.stage import run_main
from pii.scoring.transcription import score_transcriptions


def main(smk) -> None:
    p = smk.params
    score_transcriptions(list(smk.input.inference), list(smk.input.manifests), int(p.seed), int(p.resamples),
                         float(p.confidence), smk.output.metrics, smk.output.csv, smk.output.md)


if "snakemake" in globals():
    run_main(main, snakemake)
