"""Transcription: can the model read the strip? The question images of another task's sample (``source``), the
model asked to write out the strip's text; scored by exact match and character error rate (pii/scoring/transcription.py)."""

from pii.tasks.base import TaskKind

KIND = TaskKind(
    name="transcribe",
    description="write out the text of the strip (the question images of its source task)",
    own_sample=False,
    wants_p_yes=False,
    metrics=("transcribe_metrics",),
    own_tables=("transcribe",),
    other_tables=("{task}",),
    report_section="transcribe",
)
