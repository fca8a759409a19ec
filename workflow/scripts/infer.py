"""Rule infer: one model and decoding repeat, every task x setting of it ("unit") into its own file, the model
loaded once (``pii.inference.runner``; the unit cache in ``pii.inference.unit_cache``)."""

from pii.core.stage import run_main
from pii.inference.runner import run_model_units


def main(smk) -> None:
    p = smk.params
    run_model_units(smk.wildcards.model, list(smk.output), dict(smk.input.items()), p.model, p.tasks, p.settings,
                    p.decoding, p.seed, p.inference, openai_settings=dict(smk.config["inference"]["openai"]),
                    checkpoints=p.checkpoints, cache=p.cache, threads=smk.threads)


if "snakemake" in globals():
    # one device per job on a multi-GPU workstation; the unit cache must take the finished units
    run_main(main, snakemake, gpu=True, writes=(snakemake.params.cache,))
