"""The render stage's part of the DAG: the render settings each variant's job depends on, and its targets."""

from __future__ import annotations

import os

from pii.core.study import Study


def render_setting(config: dict, key: str):
    """A render setting (render.<key>) as a param of render_variants: none for 'original', which draws no strip, so
    that no render edit reruns it. A function, so that Snakemake does not read braces in a font path as wildcards.
    """
    return lambda wildcards: None if wildcards.variant == "original" else config["render"][key]


def render_font_inputs(config: dict):
    """A font given as a file path is an input (edits rerun rendering); a font package name is not a file."""

    def inputs(wildcards) -> list[str]:
        font = config["render"]["font"]
        is_file = os.sep in font or font.lower().endswith((".ttf", ".otf"))
        return [font] if wildcards.variant != "original" and is_file else []

    return inputs


def render_targets(study: Study) -> list[str]:
    return [study.manifest_path(t, v) for t in study.sampled_tasks for v in study.variants] + [
        f"results/images/{t}/contact_sheet.png" for t in study.sampled_tasks
    ]
