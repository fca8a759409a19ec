"""Rule sample_pope: the seeded POPE sample (``sample``), its images resolved, and its published question ids."""

from fetch_data import check_pope_pin, network_settings
from pipeline_io import log, run_main
from sample import attach_images, pope_sample_table, read_pope, sample_pope, write_sample


def main(snakemake) -> None:
    p = snakemake.params
    # The pin is checked, not a param: it can stop a run but never changes a row.
    check_pope_pin(snakemake.input.pope, snakemake.config["data"]["pope"].get("sha256"))
    pope = read_pope(snakemake.input.pope)
    sampled = sample_pope(pope, p.n, p.balanced, p.seed)
    coco = {"root": p.coco_root, **network_settings(snakemake.config)}
    table = attach_images(pope_sample_table(sampled), coco)
    log.info("POPE sample: %d of %d questions, %d yes / %d no, %d images", len(table), len(pope),
             (table["label"] == "yes").sum(), (table["label"] == "no").sum(), table["image_id"].n_unique())
    metadata = {"sampling.pope": {"n": p.n, "balanced": p.balanced}, "data.coco.root": p.coco_root, "seed": p.seed}
    write_sample(table, snakemake.output.table, snakemake.output.ids, "question_id", metadata)


if "snakemake" in globals():
    run_main(main, snakemake)
