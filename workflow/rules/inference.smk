# Stage: inference. One job per task x model x setting x decoding repeat; the demo's tiny checkpoints are built
# here too.
import families
from openai_backend import row_settings


rule build_demo_model:
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
        cfg=canonical("seed"),
    script:
        "../scripts/demo_models.py"


rule infer:
    input:
        sample=lambda wc: sample_path(wc.task),
        manifest=lambda wc: manifest_path(wc.task, setting_variant(wc.setting)),
        model=lambda wc: model_folder_inputs(wc.model),
    output:
        "results/inference/{task}/{model}/{setting}/r{repeat}.parquet",
    log:
        "logs/inference/{task}/{model}/{setting}/r{repeat}.log",
    benchmark:
        "results/benchmarks/infer/{task}/{model}/{setting}/r{repeat}.tsv"
    conda:
        "../../envs/inference.yaml"
    # inference.cpu_threads (default 4): a GPU job needs few; the demo's tiny CPU models run best one thread per
    # job, so that several jobs overlap their start-up
    threads: config["inference"].get("cpu_threads", 4)
    resources:
        gpu=lambda wc: inference_uses_gpu(),
        mem_mb=32000,
        runtime=720,
    params:
        # Only what can change a row: retries, timeouts, concurrency, the key's variable and the base_url's
        # credentials are read by the script from the run's config, so editing them reruns nothing. The repeat
        # is in the output path; inference.repeats (how many) is in no job's params.
        cfg=lambda wc: canonical_text(
            ("models", wc.model),
            ("tasks", wc.task),
            ("settings", wc.setting),
            "decoding",
            "seed",
            inference=row_settings(config["inference"]),
        ),
        partial=lambda wc: f"results/inference/.partial/{wc.task}/{wc.model}/{wc.setting}/r{wc.repeat}",
    script:
        "../scripts/infer.py"
