"""POPE: yes/no questions about objects, drawn from a POPE split file (adversarial for the paper's task ``pope``;
random or popular for tasks such as ``pope_random``). Scored by POPE's answer rule and a strict parser, with P(yes)
metrics (pii/scoring/pope.py). The task named ``pope`` is the paper's Table 1; any other POPE task gets a table of the
same layout, without the paper's column."""

from pii.tasks.base import TaskKind

KIND = TaskKind(
    name="pope",
    description="yes/no object questions from a POPE split file",
    own_sample=True,
    wants_p_yes=True,
    metrics=("{task}_metrics",),
    own_tables=("table1_pope", "pope_pyes"),
    other_tables=("{task}",),
    report_section="pope",
)
