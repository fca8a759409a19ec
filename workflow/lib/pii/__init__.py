"""The Prompt-in-Image study's library, one folder per stage: data, render, inference, tasks, scoring, analysis and
report, over a small core every stage shares. Rule scripts (workflow/scripts/) read their named params and call it.
Importing a package here imports no torch, polars or transformers: the Snakefile and vLLM's environment read it."""

from pathlib import Path

# workflow/: the rule files, schemas, data files (synonym table, the paper's numbers, checkpoint files) and report
# templates the library reads
WORKFLOW_DIR = Path(__file__).resolve().parents[2]
