"""Rule render_variants: one task's images of one variant and their manifest (``pii.render.variants``)."""

from pii.core.stage import run_main
from pii.core.tables import read_table
from pii.render.variants import render_variant

# The render settings (render.*) the rule passes as params; none for the 'original' variant, which draws no strip.
SETTINGS = ("font", "font_size", "strip_fraction", "padding", "line_spacing")


def main(snakemake) -> None:
    cfg = {k: getattr(snakemake.params, k) for k in SETTINGS if getattr(snakemake.params, k) is not None}
    samples = read_table(snakemake.input.samples, "sample")
    render_variant(samples, snakemake.wildcards.variant, snakemake.output.manifest, cfg, task=snakemake.wildcards.task)


if "snakemake" in globals():
    run_main(main, snakemake)
