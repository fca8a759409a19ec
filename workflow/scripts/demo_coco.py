"""Rule demo_coco: the demo's synthetic mini-COCO in the official COCO 2017 file formats
(``pii.data.synthetic_coco``)."""

from pathlib import Path

from pii.core.stage import PipelineError, log, run_main
from pii.data.synthetic_coco import build_demo_coco


def main(smk) -> None:
    p = smk.params
    if p.n_images is None:
        raise PipelineError("data.demo: not set; the synthetic mini-COCO is built only by the demo config "
                            "(use --configfile config.demo.yaml)")
    out_dir = Path(smk.output.instances).parent.parent
    summary = build_demo_coco(out_dir, p.n_images, p.min_size, p.max_size, p.seed)
    log.info("demo COCO in %s: %d images, %d objects, %d captions, %d categories used", out_dir,
             summary["images"], summary["annotations"], summary["captions"], len(summary["categories"]))


if "snakemake" in globals():
    run_main(main, snakemake)
