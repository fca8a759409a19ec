"""Rule layer_similarity: how much the question strip changes each vision-encoder layer, per model
(``pii.analysis.layer_similarity``)."""

from pii.analysis.layer_similarity import run
from pii.core.stage import run_main


def main(smk) -> None:
    p = smk.params
    run(p.models, p.model_entries, n_pairs=p.n_pairs, last_n_layers=p.last_n_layers, seed=p.seed,
        question_manifest=smk.input.question, control_manifest=smk.input.control, table_path=smk.output.table,
        figure_path=smk.output.figure)


if "snakemake" in globals():
    run_main(main, snakemake, gpu=True)  # one device per job on a multi-GPU workstation
