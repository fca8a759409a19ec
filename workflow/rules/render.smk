# Stage: render. Per task and variant a manifest of the images the models see (paper, section 3.1);
# control/question PNGs go to results/images/{task}/{variant}/{sample_id}.png, 'original' points at the source.

RENDER_KEYS = ["font", "font_size", "strip_fraction", "padding", "line_spacing"]


def render_params(wildcards):
    """The render settings the variant uses ('original' uses none, so no font edit reruns it)."""
    if wildcards.variant == "original":
        return canonical()
    return canonical(*[("render", k) for k in RENDER_KEYS])


def render_font_inputs(wildcards):
    """A font given as a file path is an input (edits rerun rendering); a font package name is not a file."""
    font = config["render"]["font"]
    is_file = "/" in font or font.lower().endswith((".ttf", ".otf"))
    return [font] if wildcards.variant != "original" and is_file else []


rule render_variants:
    input:
        samples=lambda w: sample_path(w.task),
        font=render_font_inputs,
    output:
        manifest="results/images/{task}/{variant}.parquet",
    params:
        cfg=render_params,
    log:
        "logs/render/{task}/{variant}.log",
    script:
        "../scripts/render.py"


rule render_contact_sheet:
    input:
        original="results/images/{task}/original.parquet",
        control="results/images/{task}/control.parquet",
        question="results/images/{task}/question.parquet",
    output:
        "results/images/{task}/contact_sheet.png",
    params:
        cfg=canonical(("render", "font"), ("render", "contact_sheet_n")),
    log:
        "logs/render/{task}/contact_sheet.log",
    script:
        "../scripts/render.py"


def render_targets():
    return [manifest_path(t, v) for t in TASKS for v in VARIANTS] + [
        f"results/images/{t}/contact_sheet.png" for t in TASKS
    ]
