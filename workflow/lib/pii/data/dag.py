"""The data stage's part of the DAG: which COCO and POPE files its rules read, and the samples it must make."""

from __future__ import annotations

from pii.core.study import Study
from pii.data.fetch import coco_annotation_path, pope_path, pope_source


def coco_annotation(config: dict, kind: str) -> str:
    """A COCO 2017 annotation file (kind: instances or captions): the user's, the demo's or a download."""
    return coco_annotation_path(config["data"]["coco"]["root"], kind)


def pope_build_annotations(config: dict) -> str:
    """The instances file POPE is built from: data.pope_build.annotations, or the COCO root's when null."""
    return config["data"]["pope_build"]["annotations"] or coco_annotation(config, "instances")


def pope_file(config: dict, task: str) -> str:
    """The POPE split file a POPE task samples: data.pope for the paper's task, tasks.<t>.pope for another."""
    return pope_path(pope_source(config, task)[1])


def data_targets(study: Study) -> list[str]:
    return [study.sample_path(t) for t in study.sampled_tasks] + [
        f"results/data/{t}_sample_ids.txt" for t in study.sampled_tasks
    ]
