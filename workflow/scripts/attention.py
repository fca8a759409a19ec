"""Rule attention: where the CLIP tower of a LLaVA model attends on question vs control images
(``pii.analysis.attention``)."""

from pii.analysis.attention import run
from pii.core.stage import run_main


def main(smk) -> None:
    p = smk.params
    run(p.model, p.model_entry, layers=p.layers, n_pairs=p.n_pairs, seed=p.seed,
        question_manifest=smk.input.question, control_manifest=smk.input.control, table_path=smk.output.table,
        maps_path=smk.output.maps, diagonal_path=smk.output.diagonal)


if "snakemake" in globals():
    run_main(main, snakemake, gpu=True)  # one device per job on a multi-GPU workstation
