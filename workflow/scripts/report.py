"""Rule report: one self-contained page (results/report/index.html) and a Markdown summary of the run
(``pii.report.page``)."""

from pii.core.stage import run_main
from pii.report.page import write_report


def main(smk) -> None:
    p, i = smk.params, smk.input
    write_report(metrics_files=list(i.metrics), table_csvs=list(i.table_csvs), paper_file=i.paper,
                 result_figures=list(getattr(i, "result_figures", [])), invariance=list(getattr(i, "invariance", [])),
                 contact_sheets=list(i.contact_sheets), figures=list(i.figures), inference=list(i.inference),
                 samples=list(i.samples), models=p.models, settings=p.settings, seed=p.seed,
                 model_entries=p.model_entries, setting_entries=p.setting_entries, decoding=p.decoding,
                 config_digest=p.config_digest, pope_tasks=p.pope_tasks, html_path=smk.output.html,
                 md_path=smk.output.md)


if "snakemake" in globals():
    run_main(main, snakemake)
