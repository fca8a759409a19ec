"""The task kinds, one module each; the config's tasks name one (``tasks.<name>.kind``, default: the name)."""

from tasks import caption, pope, transcribe

KINDS = {module.KIND.name: module.KIND for module in (pope, caption, transcribe)}


def names() -> list[str]:
    return list(KINDS)


def kind_name(task: str, task_cfg: dict) -> str:
    """The kind of a config task: its ``kind`` key, else its own name (pope, caption, transcribe)."""
    return task_cfg.get("kind") or task


def kind_of(task: str, task_cfg: dict):
    return KINDS[kind_name(task, task_cfg)]
