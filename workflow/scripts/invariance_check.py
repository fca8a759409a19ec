"""Rule invariance_check: N POPE requests of the baseline setting, greedy, in the job's batches and one at a time,
through the model's own backend (``pii.inference.invariance``)."""

from pii.core.stage import run_main
from pii.inference.invariance import GREEDY, check
from pii.inference.job import Job


def main(smk) -> None:
    p = smk.params
    cfg = {f"models.{p.model_name}": p.model, f"tasks.{p.task}": p.task_cfg, f"settings.{p.setting}": p.setting_cfg,
           "decoding": GREEDY, "seed": p.seed, "inference": p.inference}
    job = Job(task=p.task, model=p.model_name, setting=p.setting, cfg=cfg,
              settings=dict(smk.config["inference"]["openai"]))
    check(job, smk.input.sample, smk.input.manifest, int(p.n), smk.output[0])


if "snakemake" in globals():
    run_main(main, snakemake, gpu=True)  # one device per job on a multi-GPU workstation
