# Shared wiring: config validation, the experiment matrix, the task kinds and file-name helpers.
import json
import os
import sys

sys.path.insert(0, f"{workflow.basedir}/workflow/scripts")
import fetch_data
import tasks
from config_check import ConfigError, demo_model_paths, validate_config
from fetch_data import (
    BUILT_POPE_DIR,
    COCO_DOWNLOADS,
    DEMO_COCO_ROOT,
    POPE_DOWNLOADS,
    coco_annotation_path,
    pope_path,
    pope_source,
)
from pipeline_io import canonical_json, config_hash

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
# Decoding repeats: repeat r of every request is its own infer job and file, so raising inference.repeats runs only
# the new repeats (repeat 0 is the single run of repeats: 1).
REPEATS = list(range(config["inference"]["repeats"]))
DEMO_MODEL_PATHS = demo_model_paths(config)


wildcard_constraints:
    task="|".join(TASKS),
    model="|".join(MODELS),
    setting="|".join(SETTINGS),
    variant="|".join(VARIANTS),
    repeat=r"\d+",


def canonical_text(*keys, **extra):
    """Only the given config subtrees (plus ``extra``), as one canonical JSON string."""
    value = {".".join(k) if isinstance(k, tuple) else k: _lookup(k) for k in keys}
    value.update(extra)
    return canonical_json(value)


def _lookup(key):
    node = config
    for part in key if isinstance(key, tuple) else (key,):
        node = node[part]
    return node


def task_kind(task):
    """The task's kind (workflow/scripts/tasks/): tasks.<t>.kind, else the task's own name."""
    return tasks.kind_of(task, config["tasks"][task])


def tasks_of_kind(kind):
    return [t for t in TASKS if task_kind(t).name == kind]


# POPE tasks: the paper's (pope, on data.pope) and any further split (tasks.<t>.pope, e.g. pope_random)
POPE_TASKS = tasks_of_kind("pope")


def pope_file(task):
    """The POPE split file a POPE task samples: data.pope for the paper's task, tasks.<t>.pope for another."""
    return pope_path(pope_source(config, task)[1])


def task_source(task):
    """The task whose sample and rendered images a task reuses (tasks.<t>.source; transcribe reads POPE's)."""
    return config["tasks"][task].get("source") or task


# Tasks with their own sample and images; the others (tasks.<t>.source) reuse one of these.
SAMPLED_TASKS = [t for t in TASKS if task_source(t) == t]
# Settings a task names (tasks.<t>.settings) are run for those tasks only; every other setting runs for every task
# that names none (the paper's five settings for POPE and captions).
CLAIMED_SETTINGS = {s for t in TASKS for s in config["tasks"][t].get("settings") or []}
STUDY_SETTINGS = [s for s in SETTINGS if s not in CLAIMED_SETTINGS]


def task_settings(task):
    return config["tasks"][task].get("settings") or STUDY_SETTINGS


def sample_path(task):
    return f"results/data/{task_source(task)}_sample.parquet"


def manifest_path(task, variant):
    return f"results/images/{task_source(task)}/{variant}.parquet"


def setting_variant(setting):
    return config["settings"][setting]["image"]


def inference_path(task, model, setting, repeat):
    return f"results/inference/{task}/{model}/{setting}/r{repeat}.parquet"


def inference_paths(task, model, setting):
    """Every decoding repeat's file of one task x model x setting."""
    return [inference_path(task, model, setting, r) for r in REPEATS]


# The demo's synthetic mini-COCO settings (data.demo; empty outside the demo, where rule demo_coco says so).
DEMO_DATA = config["data"]["demo"] or {}


def coco_annotation(kind):
    """A COCO 2017 annotation file (kind: instances or captions): the user's, the demo's or a download."""
    return coco_annotation_path(config["data"]["coco"]["root"], kind)


def pope_build_annotations():
    """The instances file POPE is built from: data.pope_build.annotations, or the COCO root's when null."""
    return config["data"]["pope_build"]["annotations"] or coco_annotation("instances")


def data_targets():
    return [sample_path(t) for t in SAMPLED_TASKS] + [
        f"results/data/{t}_sample_ids.txt" for t in SAMPLED_TASKS
    ]


def model_folder_inputs(model):
    """The local checkpoint folder when the DAG builds it (demo); a hub id or existing folder needs no rule."""
    path = config["models"][model]["path"]
    return [path] if path in DEMO_MODEL_PATHS.values() else []


# --- render ----------------------------------------------------------------------------------------------


def render_setting(key):
    """A render setting (render.<key>) as a param of render_variants: none for 'original', which draws no strip, so
    that no render edit reruns it. A function, so that Snakemake does not read braces in a font path as wildcards.
    """
    return lambda wildcards: (
        None if wildcards.variant == "original" else config["render"][key]
    )


def render_font_inputs(wildcards):
    """A font given as a file path is an input (edits rerun rendering); a font package name is not a file."""
    font = config["render"]["font"]
    is_file = os.sep in font or font.lower().endswith((".ttf", ".otf"))
    return [font] if wildcards.variant != "original" and is_file else []


def render_targets():
    return [manifest_path(t, v) for t in SAMPLED_TASKS for v in VARIANTS] + [
        f"results/images/{t}/contact_sheet.png" for t in SAMPLED_TASKS
    ]


# --- inference -------------------------------------------------------------------------------------------


def inference_units():
    """(task, setting) of every file an infer job writes (for its repeat): each task in its settings."""
    return [(t, s) for t in TASKS for s in task_settings(t)]


def inference_settings():
    """The settings some task runs, in config order."""
    used = {s for t in TASKS for s in task_settings(t)}
    return [s for s in SETTINGS if s in used]


def infer_inputs(wildcards):
    """An infer job's inputs, named for the script: sample_<task>, manifest_<task>_<setting> (the rendered images
    of each unit; a file may have several names) and the model folder when the DAG builds it.
    """
    inputs = {f"sample_{t}": sample_path(t) for t in TASKS}
    for t, s in inference_units():
        inputs[f"manifest_{t}_{s}"] = manifest_path(t, setting_variant(s))
    inputs["model"] = model_folder_inputs(wildcards.model)
    return inputs


def inference_targets():
    return [
        inference_path(task, model, setting, repeat)
        for model in MODELS
        for repeat in REPEATS
        for task, setting in inference_units()
    ] + invariance_targets()


def invariance_targets():
    """The batch-invariance check's files (inference.invariance_check > 0), one per model."""
    if not config["inference"].get("invariance_check"):
        return []
    return [f"results/inference/invariance/{model}.parquet" for model in MODELS]


def inference_backend(model):
    """models.<m>.backend, else inference.backend."""
    return config["models"][model].get("backend") or config["inference"]["backend"]


def inference_uses_gpu(model):
    """The local engines (transformers, vllm) hold a GPU; the openai backend only sends requests."""
    return 0 if inference_backend(model) == "openai" else 1


def inference_env(model):
    """The conda environment of a model's infer job: vLLM's own for the vllm backend."""
    name = "vllm" if inference_backend(model) == "vllm" else "inference"
    return f"../../envs/{name}.yaml"


# --- scoring ---------------------------------------------------------------------------------------------


def scored_inference(task):
    """Every repeat of every model x setting: the scorers compute each metric per repeat and report the mean."""
    return [
        p
        for m in MODELS
        for s in task_settings(task)
        for p in inference_paths(task, m, s)
    ]


def scoring_data(name):
    """A data file shipped with the workflow (synonym table, paper numbers), independent of --directory. Relative
    to the working directory: an absolute path would change (and rerun scoring) when the project is moved.
    """
    return os.path.relpath(f"{workflow.basedir}/workflow/data/{name}")


# The setting every other is compared with (scoring.baseline).
SCORING_BASELINE = config["scoring"].get("baseline", "baseline")


def table_models():
    """The models the tables and figures show, in config order, with what finds the paper's column for each: a
    list of entries (key, family, path, image_preprocess), each entry's keys in a fixed order (params compare by
    repr)."""
    return [
        {
            "key": m,
            "family": config["models"][m]["family"],
            "path": config["models"][m]["path"],
            "image_preprocess": config["models"][m].get(
                "image_preprocess", "checkpoint"
            ),
        }
        for m in MODELS
    ]


def scoring_targets():
    """Each task's metrics and tables (workflow/scripts/tasks/), and the paper's Table 1 and 2 drawn."""
    targets = []
    for t in TASKS:
        kind = task_kind(t)
        targets += kind.metrics_paths(t)
        targets += [
            f"results/tables/{name}.{ext}"
            for name in kind.table_names(t)
            for ext in ("md", "csv")
        ]
    return targets + [
        "results/figures/table1_pope.png",
        "results/figures/table2_chair.png",
    ]


# --- analysis --------------------------------------------------------------------------------------------


ANALYSIS = config["analysis"]


# Model settings only the inference stage reads: editing them must not rerun the (GPU-heavy) analyses.
INFERENCE_ONLY_MODEL_KEYS = ("batch_size", "served_name")


def analysis_model(name):
    """The model entry an analysis loads, as a param: without the settings only inference uses, so that editing a
    model's batch size never reruns a GPU analysis (keys in config order: params compare by repr).
    """
    return {
        k: v
        for k, v in config["models"][name].items()
        if k not in INFERENCE_ONLY_MODEL_KEYS
    }


def modality_gap_captions(wildcards):
    """The captions of repeat 0 (one caption per sample and condition), so adding repeats never reruns it."""
    model = ANALYSIS["modality_gap"]["model"]
    return [
        inference_path("caption", model, setting, 0)
        for setting in ANALYSIS["modality_gap"]["conditions"]
    ]


def analysis_targets():
    return [
        "results/analysis/attention/attention.parquet",
        "results/analysis/attention/attention_maps.png",
        "results/analysis/attention/diagonal.png",
        "results/analysis/layer_similarity/similarity.parquet",
        "results/analysis/layer_similarity/layer_similarity.png",
        "results/analysis/modality_gap/gap.parquet",
        "results/analysis/modality_gap/gap_test.parquet",
        "results/analysis/modality_gap/pca.png",
        "results/analysis/modality_gap/gap.png",
    ]


# --- report ----------------------------------------------------------------------------------------------


def report_table_names():
    """The tables copied for `snakemake --report` (the report_table rule), every task's (workflow/scripts/tasks/)."""
    return [name for t in TASKS for name in task_kind(t).table_names(t)]


def report_metrics():
    """The metrics tables the page reads: every task's (POPE, CHAIR and the strip-visibility groups, the
    transcriptions, a further POPE task's)."""
    return [path for t in TASKS for path in task_kind(t).metrics_paths(t)]


def report_inputs(wildcards):
    """Everything the summary page shows; analyses only when their outputs are part of the run. The tables are
    read as data: the metrics tables of the scoring stage, the paper's numbers from the tables' CSV files and the
    paper's model and row names from the paper file (never the Markdown tables)."""
    inputs = {
        "metrics": report_metrics(),
        "invariance": invariance_targets(),
        # every table's copy (for `snakemake --report`); the page reads the paper's numbers from Table 1 / 2's
        "table_csvs": [
            f"results/report/tables/{name}.csv" for name in report_table_names()
        ],
        "paper": scoring_data("paper_numbers.yaml"),
        # the page's templates: editing one rebuilds the page (relative, like scoring_data)
        "templates": [
            os.path.relpath(f"{workflow.basedir}/workflow/report/{name}")
            for name in ("index.html.j2", "summary.md.j2")
        ],
        "contact_sheets": [
            f"results/report/figures/contact_sheet_{t}.png" for t in SAMPLED_TASKS
        ],
        "samples": [sample_path(t) for t in SAMPLED_TASKS],
        "inference": inference_targets(),
        "figures": [p for p in analysis_targets() if p.endswith(".png")],
        # Table 1 / Table 2 drawn (plot_table1_pope, plot_table2_chair), shown after the table they draw
        "result_figures": [
            f"results/figures/{name}.png"
            for name in report_table_names()
            if name in ("table1_pope", "table2_chair")
        ],
    }
    return inputs


# The experiment's settings whose fingerprint the report page shows (not how files are fetched).
REPORT_CONFIG_KEYS = (
    "seed",
    "sampling",
    "models",
    "settings",
    "decoding",
    "tasks",
    "analysis",
    "render",
    ("data", "pope"),
)


def report_config_digest():
    """The report's config hash: of the REPORT_CONFIG_KEYS subtrees' canonical JSON, so any edit to them reruns the
    report and no other edit does."""
    return config_hash(json.loads(canonical_text(*REPORT_CONFIG_KEYS)))


def report_targets():
    return ["results/report/index.html", "results/report/summary.md"]
