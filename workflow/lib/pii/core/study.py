"""The experiment matrix the config describes, and where each of its files lives: the tasks (with their kinds,
sources and settings), settings, models, image variants and decoding repeats. The Snakefile builds one ``Study``
from the validated config; every stage's DAG module (``pii.<stage>.dag``) reads it. Imports nothing heavy."""

from __future__ import annotations

from pii import tasks
from pii.core.config import demo_model_paths

VARIANTS = ["original", "control", "question"]


class Study:
    def __init__(self, config: dict):
        self.config = config
        self.tasks = list(config["tasks"])
        self.settings = list(config["settings"])
        self.models = list(config["models"])
        self.variants = VARIANTS
        # Decoding repeats: repeat r of every request is its own infer job and file, so raising inference.repeats
        # runs only the new repeats (repeat 0 is the single run of repeats: 1).
        self.repeats = list(range(config["inference"]["repeats"]))
        self.demo_model_paths = demo_model_paths(config)
        # POPE tasks: the paper's (pope, on data.pope) and any further split (tasks.<t>.pope, e.g. pope_random)
        self.pope_tasks = self.tasks_of_kind("pope")
        # Tasks with their own sample and images; the others (tasks.<t>.source) reuse one of these.
        self.sampled_tasks = [t for t in self.tasks if self.task_source(t) == t]
        # Settings a task names (tasks.<t>.settings) are run for those tasks only; every other setting runs for
        # every task that names none (the paper's five settings for POPE and captions).
        claimed = {s for t in self.tasks for s in config["tasks"][t].get("settings") or []}
        self.study_settings = [s for s in self.settings if s not in claimed]
        # The setting every other is compared with (scoring.baseline).
        self.baseline = config["scoring"].get("baseline", "baseline")

    # --- tasks and settings ---------------------------------------------------------------------------------

    def task_kind(self, task: str):
        """The task's kind (pii/tasks/): tasks.<t>.kind, else the task's own name."""
        return tasks.kind_of(task, self.config["tasks"][task])

    def tasks_of_kind(self, kind: str) -> list[str]:
        return [t for t in self.tasks if self.task_kind(t).name == kind]

    def task_source(self, task: str) -> str:
        """The task whose sample and rendered images a task reuses (tasks.<t>.source; transcribe reads POPE's)."""
        return self.config["tasks"][task].get("source") or task

    def task_settings(self, task: str) -> list[str]:
        return self.config["tasks"][task].get("settings") or self.study_settings

    def setting_variant(self, setting: str) -> str:
        return self.config["settings"][setting]["image"]

    # --- file names -----------------------------------------------------------------------------------------

    def sample_path(self, task: str) -> str:
        return f"results/data/{self.task_source(task)}_sample.parquet"

    def manifest_path(self, task: str, variant: str) -> str:
        return f"results/images/{self.task_source(task)}/{variant}.parquet"

    @staticmethod
    def inference_path(task: str, model: str, setting: str, repeat) -> str:
        return f"results/inference/{task}/{model}/{setting}/r{repeat}.parquet"

    def inference_paths(self, task: str, model: str, setting: str) -> list[str]:
        """Every decoding repeat's file of one task x model x setting."""
        return [self.inference_path(task, model, setting, r) for r in self.repeats]

    def model_folder_inputs(self, model: str) -> list[str]:
        """The local checkpoint folder when the DAG builds it (demo); a hub id or existing folder needs no rule."""
        path = self.config["models"][model]["path"]
        return [path] if path in self.demo_model_paths.values() else []

