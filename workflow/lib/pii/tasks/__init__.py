"""Tasks: the kinds of task (pope, caption, transcribe), one module each, saying where a task's questions come
from, what scores it and which tables and report section show it. The config's tasks name one (``tasks.<name>.kind``,
default: the name); the Snakefile's targets, the infer job (P(yes)) and the report read them."""

from pii.tasks import caption, pope, transcribe

KINDS = {module.KIND.name: module.KIND for module in (pope, caption, transcribe)}


def names() -> list[str]:
    return list(KINDS)


def kind_name(task: str, task_cfg: dict) -> str:
    """The kind of a config task: its ``kind`` key, else its own name (pope, caption, transcribe)."""
    return task_cfg.get("kind") or task


def kind_of(task: str, task_cfg: dict):
    return KINDS[kind_name(task, task_cfg)]
