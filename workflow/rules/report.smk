# Stage: report. A self-contained summary page (results/report/index.html + summary.md) built from the tables,
# contact sheets, analysis figures and the inference metadata; the same files are marked for `snakemake --report`.

from pipeline_io import config_hash

REPORT_TABLES = {"pope": "table1_pope", "caption": "table2_chair"}


report: "../report/workflow.rst"


localrules:
    report,
    report_table,
    report_contact_sheet,


def report_table_names():
    return [REPORT_TABLES[t] for t in TASKS if t in REPORT_TABLES]


def report_inputs(wildcards):
    """Everything the summary page shows; analyses only when their outputs are part of the run."""
    inputs = {
        "tables": [f"results/report/tables/{name}.md" for name in report_table_names()],
        "table_csvs": [
            f"results/report/tables/{name}.csv" for name in report_table_names()
        ],
        "contact_sheets": [
            f"results/report/figures/contact_sheet_{t}.png" for t in TASKS
        ],
        "samples": [sample_path(t) for t in TASKS],
        "inference": inference_targets(),
        "figures": [p for p in analysis_targets() if p.endswith(".png")],
    }
    return inputs


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
        table="|".join(REPORT_TABLES.values()),
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
    conda:
        "../../envs/report.yaml"
    shell:
        "cp {input} {output} 2> {log}"


rule report:
    input:
        unpack(report_inputs),
    output:
        html=report(
            "results/report/index.html",
            caption="../report/workflow.rst",
            category="Summary",
        ),
        md="results/report/summary.md",
    log:
        "logs/report/report.log",
    conda:
        "../../envs/report.yaml"
    params:
        cfg=canonical(
            "seed", "sampling", "models", "settings", "decoding", "tasks", "analysis"
        ),
        config_hash=config_hash(config),
        tasks=TASKS,
    script:
        "../scripts/report.py"


def report_targets():
    return ["results/report/index.html", "results/report/summary.md"]
