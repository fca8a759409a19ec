# Stage: analyses explaining the result: CLIP attention on the text strip, layer-wise similarity of question vs
# control images in both vision encoders, and Qwen2.5-VL's modality gap. Three GPU jobs (they run on CPU too).

from pii.analysis.dag import analysis_model, analysis_targets, modality_gap_captions

ANALYSIS = config["analysis"]


rule attention:
    input:
        question=manifest_path("pope", "question"),
        control=manifest_path("pope", "control"),
        model=model_folder_inputs(ANALYSIS["attention"]["model"]),
    output:
        table="results/analysis/attention/attention.parquet",
        maps=report(
            "results/analysis/attention/attention_maps.png",
            caption="../report/attention_maps.rst",
            category="Analyses",
        ),
        diagonal=report(
            "results/analysis/attention/diagonal.png",
            caption="../report/attention_diagonal.rst",
            category="Analyses",
        ),
    log:
        "logs/analysis/attention.log",
    benchmark:
        "results/benchmarks/analysis/attention.tsv"
    conda:
        "../../envs/analysis.yaml"
    resources:
        gpu=1,
        mem_mb=24000,
        runtime=30,
    params:
        model=ANALYSIS["attention"]["model"],
        model_entry=analysis_model(config, ANALYSIS["attention"]["model"]),
        n_pairs=ANALYSIS["attention"]["n_pairs"],
        layers=ANALYSIS["attention"]["layers"],
        seed=config["seed"],
    script:
        "../scripts/attention.py"


rule layer_similarity:
    input:
        question=manifest_path("pope", "question"),
        control=manifest_path("pope", "control"),
        models=[
            p
            for m in ANALYSIS["layer_similarity"]["models"]
            for p in model_folder_inputs(m)
        ],
    output:
        table="results/analysis/layer_similarity/similarity.parquet",
        figure=report(
            "results/analysis/layer_similarity/layer_similarity.png",
            caption="../report/layer_similarity.rst",
            category="Analyses",
        ),
    log:
        "logs/analysis/layer_similarity.log",
    benchmark:
        "results/benchmarks/analysis/layer_similarity.tsv"
    conda:
        "../../envs/analysis.yaml"
    resources:
        gpu=1,
        mem_mb=48000,
        runtime=30,
    params:
        models=ANALYSIS["layer_similarity"]["models"],
        model_entries={
            m: analysis_model(config, m)
            for m in ANALYSIS["layer_similarity"]["models"]
        },
        n_pairs=ANALYSIS["layer_similarity"]["n_pairs"],
        last_n_layers=ANALYSIS["layer_similarity"]["last_n_layers"],
        seed=config["seed"],
    script:
        "../scripts/layer_similarity.py"


rule modality_gap:
    input:
        captions=modality_gap_captions(STUDY),
        model=model_folder_inputs(ANALYSIS["modality_gap"]["model"]),
    output:
        table="results/analysis/modality_gap/gap.parquet",
        tests="results/analysis/modality_gap/gap_test.parquet",
        pca=report(
            "results/analysis/modality_gap/pca.png",
            caption="../report/modality_gap_pca.rst",
            category="Analyses",
        ),
        figure=report(
            "results/analysis/modality_gap/gap.png",
            caption="../report/modality_gap.rst",
            category="Analyses",
        ),
    log:
        "logs/analysis/modality_gap.log",
    benchmark:
        "results/benchmarks/analysis/modality_gap.tsv"
    conda:
        "../../envs/analysis.yaml"
    resources:
        gpu=1,
        mem_mb=48000,
        runtime=30,
    params:
        model=ANALYSIS["modality_gap"]["model"],
        model_entry=analysis_model(config, ANALYSIS["modality_gap"]["model"]),
        n_samples=ANALYSIS["modality_gap"]["n_samples"],
        conditions=ANALYSIS["modality_gap"]["conditions"],
        resamples=ANALYSIS["modality_gap"]["bootstrap_resamples"],
        confidence=ANALYSIS["modality_gap"]["confidence"],
        seed=config["seed"],
    script:
        "../scripts/modality_gap.py"
