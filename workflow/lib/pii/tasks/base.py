"""What the workflow needs to know about a kind of task: where its questions come from, what it is scored by, and
which tables and report section show it. One module per kind (pope.py, caption.py, transcribe.py); a task of the
config names its kind (``tasks.<name>.kind``, by default the name itself)."""

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskKind:
    name: str
    # what the kind is for, one line (README, error messages)
    description: str
    # True: the task draws its own sample (rule sample_<kind>) and renders its own images; False: it reuses those
    # of the task named by tasks.<t>.source
    own_sample: bool
    # True: the infer rows carry p_yes (P(Yes) at the first generated token), the scorer's P(yes) metrics read it
    wants_p_yes: bool
    # the metrics tables under results/scores/ that the report reads ({task} filled in)
    metrics: tuple[str, ...]
    # the tables under results/tables/ of the task named like the kind (the paper's Table 1 and Table 2), and of
    # any other task of the kind ({task} filled in); all copied into the report
    own_tables: tuple[str, ...]
    other_tables: tuple[str, ...]
    # the report page's section that shows the task's metrics
    report_section: str

    def metrics_paths(self, task: str) -> list[str]:
        return [f"results/scores/{name.format(task=task)}.parquet" for name in self.metrics]

    def table_names(self, task: str) -> list[str]:
        return [name.format(task=task) for name in (self.own_tables if task == self.name else self.other_tables)]
