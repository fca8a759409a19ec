"""Rule modality_gap: the distance between image and caption tokens in Qwen2.5-VL's final layer, with the
instruction as text or in the image (``pii.analysis.modality_gap``)."""

from pii.analysis.modality_gap import run
from pii.core.stage import run_main


def main(smk) -> None:
    p = smk.params
    run(p.model, p.model_entry, conditions=p.conditions, n_samples=p.n_samples, resamples=p.resamples,
        confidence=p.confidence, seed=p.seed, caption_files=list(smk.input.captions), table_path=smk.output.table,
        tests_path=smk.output.tests, pca_path=smk.output.pca, figure_path=smk.output.figure)


if "snakemake" in globals():
    run_main(main, snakemake, gpu=True)  # one device per job on a multi-GPU workstation
