"""The analysis stage's part of the DAG: the model entries the analyses load, the captions the modality gap reads,
and the analyses' files."""

from __future__ import annotations

from pii.core.study import Study

# Model settings only the inference stage reads: editing them must not rerun the (GPU-heavy) analyses.
INFERENCE_ONLY_MODEL_KEYS = ("batch_size", "served_name")


def analysis_model(config: dict, name: str) -> dict:
    """The model entry an analysis loads, as a param: without the settings only inference uses, so that editing a
    model's batch size never reruns a GPU analysis (keys in config order: params compare by repr).
    """
    return {k: v for k, v in config["models"][name].items() if k not in INFERENCE_ONLY_MODEL_KEYS}


def modality_gap_captions(study: Study) -> list[str]:
    """The captions of repeat 0 (one caption per sample and condition), so adding repeats never reruns it."""
    gap = study.config["analysis"]["modality_gap"]
    return [study.inference_path("caption", gap["model"], setting, 0) for setting in gap["conditions"]]


def analysis_targets() -> list[str]:
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
