# Stage: inference. One job per model and decoding repeat, writing one file per task x setting; the demo's tiny
# checkpoints are built here too.
from pii.inference import families
from pii.inference.dag import (
    infer_inputs,
    infer_outputs,
    inference_env,
    inference_settings,
    inference_targets,
    inference_uses_gpu,
    user_model_inputs,
)
from pii.inference.openai_backend import row_settings


rule demo_models:
    input:
        # the real checkpoint files (tokenizer, chat template, processor settings) the tiny model is built from;
        # relative paths, so a moved project reruns nothing
        reference=lambda wc: [
            os.path.relpath(p) for p in families.get(wc.family).reference_files()
        ],
    output:
        directory("resources/demo/models/{family}"),
    log:
        "logs/demo_models/{family}.log",
    wildcard_constraints:
        family="|".join(families.names()),
    conda:
        "../../envs/inference.yaml"
    params:
        seed=config["seed"],
    script:
        "../scripts/demo_models.py"


# One job per model and decoding repeat: every task x setting ("unit") of that model in one process, so the model
# is loaded once per repeat, and raising inference.repeats adds jobs without touching the existing ones. Each unit
# is its own output file; a finished unit is also kept in results/inference/.cache/, stamped with a fingerprint of
# what can change its rows, so a rerun of the job (one setting edited) copies the unchanged units and generates only
# the others, loading the model only if any remains.
rule infer:
    input:
        unpack(lambda wc: infer_inputs(STUDY, wc.model)),
        # a user's local checkpoint folder, file by file (only read, never an output): weights replaced in place
        # rerun the job, which then generates only the units whose key (file contents included) changed
        user_model=lambda wc: user_model_inputs(STUDY, wc.model),
    output:
        infer_outputs(STUDY),
    log:
        "logs/inference/{model}/r{repeat}.log",
    benchmark:
        "results/benchmarks/infer/{model}/r{repeat}.tsv"
    conda:
        lambda wc: inference_env(config, wc.model)
    # inference.cpu_threads (default 4): a GPU job needs few; the demo's tiny CPU models run best one thread per
    # job, so that two models' jobs run side by side
    threads: config["inference"].get("cpu_threads", 4)
    resources:
        gpu=lambda wc: inference_uses_gpu(config, wc.model),
        mem_mb=32000,
        runtime=1440,
    params:
        # Only what can change a row: retries, timeouts, concurrency, the key's variable and the base_url's
        # credentials are read by the script from the run's config, so editing them reruns nothing. The repeat
        # is in the output paths; inference.repeats (how many) is in no job's params. Values that hold
        # {question} go through a function, which Snakemake does not format.
        model=lambda wc: config["models"][wc.model],
        # sorted by name: params compare by repr, and merging config files may reorder keys
        tasks=lambda wc: {t: config["tasks"][t] for t in sorted(TASKS)},
        settings=lambda wc: {
            s: config["settings"][s] for s in sorted(inference_settings(STUDY))
        },
        decoding=config["decoding"],
        seed=config["seed"],
        inference=lambda wc: row_settings(
            config["inference"], config["models"][wc.model]
        ),
        checkpoints="results/inference/.partial",
        cache="results/inference/.cache",
    script:
        "../scripts/infer.py"


# The batch-invariance check (inference.invariance_check: N > 0): N POPE requests of the baseline setting, greedy,
# in the job's batches and one at a time, through the model's own backend and environment.
rule invariance_check:
    input:
        sample=sample_path("pope"),
        manifest=manifest_path("pope", setting_variant(SCORING_BASELINE)),
        model=lambda wc: model_folder_inputs(wc.model),
    output:
        "results/inference/invariance/{model}.parquet",
    log:
        "logs/inference/{model}/invariance.log",
    conda:
        lambda wc: inference_env(config, wc.model)
    threads: config["inference"].get("cpu_threads", 4)
    resources:
        gpu=lambda wc: inference_uses_gpu(config, wc.model),
        mem_mb=32000,
        runtime=120,
    params:
        model_name=lambda wc: wc.model,
        model=lambda wc: config["models"][wc.model],
        task="pope",
        task_cfg=lambda wc: config["tasks"]["pope"],
        setting=SCORING_BASELINE,
        setting_cfg=lambda wc: config["settings"][SCORING_BASELINE],
        seed=config["seed"],
        inference=lambda wc: row_settings(
            config["inference"], config["models"][wc.model]
        ),
        n=config["inference"].get("invariance_check", 0),
    script:
        "../scripts/invariance_check.py"
