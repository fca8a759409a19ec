# Stage: report. A self-contained summary page (results/report/index.html + summary.md) built from the metrics
# tables (POPE, CHAIR, strip visibility, transcription), the tables' CSV files, contact sheets, analysis figures and
# the inference metadata, rendered with the Jinja2 templates in workflow/report/; the same files are marked for
# `snakemake --report`.


from pii.report.dag import (
    report_config_digest,
    report_inputs,
    report_table_names,
    report_targets,
)


report: "../report/workflow.rst"


rule report_table:
    input:
        csv="results/tables/{table}.csv",
        md="results/tables/{table}.md",
    output:
        csv=report(
            "results/report/tables/{table}.csv",
            caption="../report/tables.rst",
            category="Tables",
            labels={"table": "{table}"},
        ),
        md="results/report/tables/{table}.md",
    log:
        "logs/report/{table}.log",
    wildcard_constraints:
        table="|".join(report_table_names(STUDY)),
    localrule: True
    conda:
        "../../envs/report.yaml"
    shell:
        "(cp {input.csv} {output.csv} && cp {input.md} {output.md}) 2> {log}"


rule report_contact_sheet:
    input:
        "results/images/{task}/contact_sheet.png",
    output:
        report(
            "results/report/figures/contact_sheet_{task}.png",
            caption="../report/contact_sheet.rst",
            category="Rendered images",
            labels={"task": "{task}"},
        ),
    log:
        "logs/report/contact_sheet_{task}.log",
    localrule: True
    conda:
        "../../envs/report.yaml"
    shell:
        "cp {input} {output} 2> {log}"


rule report:
    input:
        unpack(lambda wc: report_inputs(STUDY, workflow_file)),
    output:
        html=report(
            "results/report/index.html",
            caption="../report/workflow.rst",
            category="Summary",
        ),
        md="results/report/summary.md",
    log:
        "logs/report/report.log",
    localrule: True
    conda:
        "../../envs/report.yaml"
    params:
        seed=config["seed"],
        models=MODELS,
        settings=SETTINGS,
        # dicts in config order; Snakemake reads no wildcards in a dict's strings (the prompts' {question})
        model_entries=config["models"],
        setting_entries=config["settings"],
        decoding=config["decoding"],
        config_digest=report_config_digest(config),
        # whose metrics tables have the POPE layout (a further POPE task's table is shown like Table 1)
        pope_tasks=POPE_TASKS,
    script:
        "../scripts/report.py"
