"""Rule sample_pope: the seeded sample of a POPE task (``pii.data.sampling``; the paper's ``pope`` or a further
split such as ``pope_random``), its images resolved, and its published question ids."""

from pii.core.stage import log, run_main
from pii.data.fetch import check_pope_pin, network_settings, pope_source
from pii.data.sampling import attach_images, pope_sample_table, read_pope, sample_pope, write_sample


def main(snakemake) -> None:
    p, task = snakemake.params, snakemake.wildcards.task
    # The pin is checked, not a param: it can stop a run but never changes a row.
    key, source = pope_source(snakemake.config, task)
    check_pope_pin(snakemake.input.pope, source.get("sha256"), key)
    pope = read_pope(snakemake.input.pope)
    sampled = sample_pope(pope, p.n, p.balanced, p.seed)
    coco = {"root": p.coco_root, **network_settings(snakemake.config)}
    table = attach_images(pope_sample_table(sampled, task), coco)
    log.info("%s sample: %d of %d questions, %d yes / %d no, %d images", task, len(table), len(pope),
             (table["label"] == "yes").sum(), (table["label"] == "no").sum(), table["image_id"].n_unique())
    metadata = {f"sampling.{task}": {"n": p.n, "balanced": p.balanced}, "data.coco.root": p.coco_root, "seed": p.seed}
    write_sample(table, snakemake.output.table, snakemake.output.ids, "question_id", metadata)


if "snakemake" in globals():
    run_main(main, snakemake)
