# Stage: render. Per task and variant a manifest of the images the models see (paper, section 3.1);
# control/question PNGs go to results/images/{task}/{variant}/{sample_id}.png, 'original' points at the source.
from pii.render.dag import render_font_inputs, render_setting, render_targets


rule render_variants:
    input:
        samples=lambda w: sample_path(w.task),
        font=render_font_inputs(config),
    output:
        manifest="results/images/{task}/{variant}.parquet",
    log:
        "logs/render/{task}/{variant}.log",
    conda:
        "../../envs/data.yaml"
    params:
        font=render_setting(config, "font"),
        font_size=render_setting(config, "font_size"),
        strip_fraction=render_setting(config, "strip_fraction"),
        padding=render_setting(config, "padding"),
        line_spacing=render_setting(config, "line_spacing"),
    script:
        "../scripts/render_variants.py"


rule render_contact_sheet:
    input:
        original="results/images/{task}/original.parquet",
        control="results/images/{task}/control.parquet",
        question="results/images/{task}/question.parquet",
    output:
        "results/images/{task}/contact_sheet.png",
    log:
        "logs/render/{task}/contact_sheet.log",
    localrule: True
    conda:
        "../../envs/data.yaml"
    params:
        n=config["render"]["contact_sheet_n"],
        font=lambda wc: config["render"]["font"],
    script:
        "../scripts/render_contact_sheet.py"
