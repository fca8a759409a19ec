"""Captions: one instruction for every sampled COCO image, scored by CHAIR against COCO's objects
(pii/scoring/chair.py); the paper's Table 2."""

from pii.tasks.base import TaskKind

KIND = TaskKind(
    name="caption",
    description="detailed captions of COCO images, scored by CHAIR",
    own_sample=True,
    wants_p_yes=False,
    metrics=("chair_metrics", "visibility_metrics"),
    own_tables=("table2_chair", "strip_visibility"),
    other_tables=(),
    report_section="chair",
)
