# Shared wiring every stage needs: the library on the path, the config checked, the experiment matrix (STUDY) and
# the names the rules use for it. Each stage's own targets and input functions live in its DAG module,
# workflow/lib/pii/<stage>/dag.py.
import os
import sys

# Rule scripts run in their own Python process; Snakemake's script preamble gives them this sys.path too.
sys.path.insert(0, f"{workflow.basedir}/workflow/lib")
from pii.core.config import ConfigError, validate_config
from pii.core.study import Study

try:
    validate_config(config)
except ConfigError as err:
    # One line naming the key and what to do, instead of a traceback.
    sys.stderr.write(f"Config error: {err}\n")
    sys.exit(1)


STUDY = Study(config)
TASKS = STUDY.tasks
SETTINGS = STUDY.settings
MODELS = STUDY.models
POPE_TASKS = STUDY.pope_tasks
STUDY_SETTINGS = STUDY.study_settings
# The setting every other is compared with (scoring.baseline).
SCORING_BASELINE = STUDY.baseline
sample_path = STUDY.sample_path
manifest_path = STUDY.manifest_path
setting_variant = STUDY.setting_variant
task_settings = STUDY.task_settings
model_folder_inputs = STUDY.model_folder_inputs


wildcard_constraints:
    task="|".join(TASKS),
    model="|".join(MODELS),
    setting="|".join(SETTINGS),
    variant="|".join(STUDY.variants),
    repeat=r"\d+",


def workflow_file(*parts):
    """A file shipped in workflow/ (synonym table, paper numbers, report templates), independent of --directory.
    Relative to the working directory: an absolute path would change (and rerun its jobs) when the project is
    moved."""
    return os.path.relpath(os.path.join(workflow.basedir, "workflow", *parts))
