"""Rule sample_caption: the seeded sample of COCO images to caption (``pii.data.sampling``), their images
resolved, and the published image ids."""

from pii.core.stage import log, run_main
from pii.data.fetch import network_settings
from pii.data.sampling import attach_images, caption_sample_table, sample_caption_images, write_sample


def main(snakemake) -> None:
    p = snakemake.params
    sampled = sample_caption_images(snakemake.input.instances, p.n, p.seed)
    coco = {"root": p.coco_root, **network_settings(snakemake.config)}
    table = attach_images(caption_sample_table(sampled, p.question), coco)
    log.info("caption sample: %d images", len(table))
    metadata = {"sampling.caption": {"n": p.n}, "tasks.caption.question": p.question, "data.coco.root": p.coco_root,
                "seed": p.seed}
    write_sample(table, snakemake.output.table, snakemake.output.ids, "image_id", metadata)


if "snakemake" in globals():
    run_main(main, snakemake)
