# Prompt-in-Image hallucination study: sampling -> rendering -> inference -> scoring -> analyses -> report.
# Run the paper's experiment:  snakemake --cores all --profile profiles/workstation
# Run the offline demo:        snakemake --cores all --configfile config.demo.yaml


from snakemake.utils import min_version

min_version("9.0")


configfile: f"{workflow.basedir}/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/render.smk"
include: "workflow/rules/inference.smk"
include: "workflow/rules/scoring.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        data_targets(STUDY),
        render_targets(STUDY),
        inference_targets(STUDY),
        scoring_targets(STUDY),
        analysis_targets(),
        report_targets(),
