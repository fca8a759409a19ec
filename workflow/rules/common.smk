# Shared wiring: config validation, the experiment matrix, file-name helpers and canonical params.
import json
import sys

sys.path.insert(0, f"{workflow.basedir}/workflow/scripts")
from config_check import ConfigError, demo_model_paths, validate_config
from pipeline_io import canonical_json

try:
    validate_config(config)
except ConfigError as err:
    # One line naming the key and what to do, instead of a traceback.
    sys.stderr.write(f"Config error: {err}\n")
    sys.exit(1)


TASKS = list(config["tasks"])
SETTINGS = list(config["settings"])
MODELS = list(config["models"])
VARIANTS = ["original", "control", "question"]
DEMO_MODEL_PATHS = demo_model_paths(config)


wildcard_constraints:
    task="|".join(TASKS),
    model="|".join(MODELS),
    setting="|".join(SETTINGS),
    variant="|".join(VARIANTS),


def canonical(*keys, **extra):
    """A job's params: only its own config subtrees, as one canonical JSON string, so editing anything
    else in the config never reruns it (Snakemake compares params by repr)."""
    value = {".".join(k) if isinstance(k, tuple) else k: _lookup(k) for k in keys}
    value.update(extra)
    return canonical_json(value)


def _lookup(key):
    node = config
    for part in key if isinstance(key, tuple) else (key,):
        node = node[part]
    return node


def sample_path(task):
    return f"results/data/{task}_sample.parquet"


def manifest_path(task, variant):
    return f"results/images/{task}/{variant}.parquet"


def setting_variant(setting):
    return config["settings"][setting]["image"]


def inference_path(task, model, setting):
    return f"results/inference/{task}/{model}/{setting}.parquet"


def model_folder_inputs(model):
    """The local checkpoint folder when the DAG builds it (demo); a hub id or existing folder needs no rule."""
    path = config["models"][model]["path"]
    return [path] if path in DEMO_MODEL_PATHS.values() else []
