"""The inference stage's part of the DAG: the files each infer job writes and reads, its backend and environment,
and the batch-invariance check's files."""

from __future__ import annotations

from pii.core.study import Study
from pii.inference.unit_cache import local_model_inputs


def inference_units(study: Study) -> list[tuple[str, str]]:
    """(task, setting) of every file an infer job writes (for its repeat): each task in its settings."""
    return [(t, s) for t in study.tasks for s in study.task_settings(t)]


def inference_settings(study: Study) -> list[str]:
    """The settings some task runs, in config order."""
    used = {s for t in study.tasks for s in study.task_settings(t)}
    return [s for s in study.settings if s in used]


def infer_outputs(study: Study) -> list[str]:
    """The files of one infer job, with {model} and {repeat} left as wildcards."""
    return [study.inference_path(task, "{model}", setting, "{repeat}") for task, setting in inference_units(study)]


def infer_inputs(study: Study, model: str) -> dict:
    """An infer job's inputs, named for the script: sample_<task>, manifest_<task>_<setting> (the rendered images
    of each unit; a file may have several names) and the model folder when the DAG builds it.
    """
    inputs = {f"sample_{t}": study.sample_path(t) for t in study.tasks}
    for t, s in inference_units(study):
        inputs[f"manifest_{t}_{s}"] = study.manifest_path(t, study.setting_variant(s))
    inputs["model"] = study.model_folder_inputs(model)
    return inputs


def user_model_inputs(study: Study, model: str) -> list[str]:
    """A user's local checkpoint folder, file by file (only read, never an output): weights replaced in place rerun
    the job, which then generates only the units whose key (file contents included) changed."""
    return local_model_inputs(study.config["models"][model]["path"], study.demo_model_paths.values())


def invariance_targets(study: Study) -> list[str]:
    """The batch-invariance check's files (inference.invariance_check > 0), one per model."""
    if not study.config["inference"].get("invariance_check"):
        return []
    return [f"results/inference/invariance/{model}.parquet" for model in study.models]


def inference_targets(study: Study) -> list[str]:
    return [
        study.inference_path(task, model, setting, repeat)
        for model in study.models
        for repeat in study.repeats
        for task, setting in inference_units(study)
    ] + invariance_targets(study)


def inference_backend(config: dict, model: str) -> str:
    """models.<m>.backend, else inference.backend."""
    return config["models"][model].get("backend") or config["inference"]["backend"]


def inference_uses_gpu(config: dict, model: str) -> int:
    """The local engines (transformers, vllm) hold a GPU; the openai backend only sends requests."""
    return 0 if inference_backend(config, model) == "openai" else 1


def inference_env(config: dict, model: str) -> str:
    """The conda environment of a model's infer job, relative to the rule file: vLLM's own for the vllm backend."""
    name = "vllm" if inference_backend(config, model) == "vllm" else "inference"
    return f"../../envs/{name}.yaml"
