"""Validate the merged config when the workflow starts and turn the first problem into one readable line."""

from __future__ import annotations

import math
import re
from pathlib import Path

import jsonschema
import yaml

from pii import WORKFLOW_DIR

SCHEMA_PATH = WORKFLOW_DIR / "schemas" / "config.schema.yaml"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


def is_local_model_path(path: str) -> bool:
    """True for a folder on disk (or anything that cannot be a Hugging Face id like 'owner/name')."""
    return path.startswith((".", "/", "~")) or Path(path).exists() or not HUB_ID.match(path)


class ConfigError(ValueError):
    pass


def _where(path) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def _describe(err: jsonschema.ValidationError) -> str:
    where = _where(err.absolute_path)
    if err.validator == "additionalProperties":
        extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
        allowed = sorted(err.schema.get("properties", {}))
        return f"{where}: unknown key(s) {extra}; allowed here: {allowed}. Fix the spelling or remove the key"
    if err.validator == "required":
        return f"{where}: {err.message}. Add it (see config.yaml for the documented default)"
    if err.validator == "enum":
        return f"{where}: {err.instance!r} is not one of {err.validator_value}. Use one of those"
    if err.validator == "type":
        return f"{where}: {err.instance!r} should be of type {err.validator_value}. Change the value's type"
    return f"{where}: {err.message}. Change the value"


def load_schema() -> dict:
    """The config schema, with the model families taken from their registry (families/__init__.py)."""
    from pii.inference import families

    with open(SCHEMA_PATH, encoding="utf-8") as f:
        schema = yaml.safe_load(f)
    schema["$defs"]["family"] = {"enum": families.names()}
    return schema


def _check_finite(value, path=()) -> None:
    """No NaN or infinity anywhere (YAML's .nan, .inf): every number the config holds must be usable, and a NaN
    passes every schema bound, since it compares false with everything."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{_where(path)}: {value} is not a number a run can use. Give a finite value")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_finite(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_finite(v, (*path, i))


def _check_decoding(decoding) -> None:
    """Temperature 0 means greedy, which is written do_sample: false (transformers rejects temperature 0)."""
    if isinstance(decoding, dict) and decoding.get("do_sample") and decoding.get("temperature") == 0:
        raise ConfigError("decoding.temperature: 0 with do_sample: true. For greedy decoding write do_sample: false "
                          "(no temperature is needed then)")


def validate_config(config: dict) -> None:
    """Raise ConfigError with a one-line message naming the config key and what to do."""
    _check_finite(config)
    _check_decoding(config.get("decoding") if isinstance(config, dict) else None)
    schema = load_schema()
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        raise ConfigError(_describe(errors[0]))
    _check_references(config)


def demo_model_paths(config: dict) -> dict[str, str]:
    """Local model folders that the DAG builds itself (the demo's tiny checkpoints), by family."""
    demo = config["data"].get("demo") or {}
    return {family: f"resources/demo/models/{family}" for family in demo.get("models", [])}


def _check_data(data: dict) -> None:
    """The user's data paths exist (they are only ever read, never made), and POPE has a source."""
    from pii.data.fetch import (  # fetch imports the tables module (polars): import on use
        DEMO_COCO_ROOT,
        is_pipeline_output,
    )

    root = data["coco"]["root"]
    if root and root != DEMO_COCO_ROOT and not Path(root).is_dir():
        raise ConfigError(f"data.coco.root: folder '{root}' does not exist. Point it at your COCO copy, or set it "
                          "to null to fetch what the run needs into resources/downloads/coco")
    _check_pope_file("data.pope", data["pope"], "coco_pope_adversarial.json")
    annotations = data["pope_build"]["annotations"]
    if annotations and not is_pipeline_output(annotations) and not Path(annotations).is_file():
        raise ConfigError(f"data.pope_build.annotations: '{annotations}' does not exist. Fix the path, or set it "
                          "to null to build from the COCO instances file")


def _check_pope_file(key: str, pope: dict, official: str) -> None:
    """A POPE source: an existing file of the user's (or one a rule makes), or a URL to fetch."""
    from pii.data.fetch import is_pipeline_output

    if pope["file"] is None and not pope.get("url"):
        raise ConfigError(f"{key}.file: null and {key}.url is not set either. Set {key}.file to your copy of "
                          f"POPE's {official}, or {key}.url to fetch it")
    if pope["file"] and not is_pipeline_output(pope["file"]) and not Path(pope["file"]).is_file():
        raise ConfigError(f"{key}.file: '{pope['file']}' does not exist. Fix the path, or set it to null to "
                          f"fetch the pinned file ({key}.url) into resources/downloads/pope")


def _check_tasks(config: dict) -> None:
    """Every task that draws its own POPE sample has sampling.<task> and a POPE file; no sampling entry is left
    without its task."""
    from pii import tasks

    for task, task_cfg in config["tasks"].items():
        if "pope" in task_cfg:  # the schema admits further tasks of kind pope only, each with its file
            _check_pope_file(f"tasks.{task}.pope", task_cfg["pope"], f"coco_pope_<split>.json for {task}")
    sampled = [t for t, c in config["tasks"].items() if tasks.kind_of(t, c).own_sample]
    for task in sampled:
        if task not in config["sampling"]:
            raise ConfigError(f"sampling.{task}: missing; task {task} draws its own sample. Add sampling.{task} "
                              "with n (and balanced for a POPE task)")
    for key in config["sampling"]:
        if key not in sampled:
            raise ConfigError(f"sampling.{key}: no task of that name draws a sample ({sampled}). Remove the entry "
                              "or add the task")


def _check_prompts(settings: dict) -> None:
    """A text prompt may name only {question} (filled in by plain replacement): a misspelt placeholder would be
    sent to the model verbatim."""
    for name, setting in settings.items():
        unknown = sorted(set(PLACEHOLDER.findall(setting["text_prompt"] or "")) - {"question"})
        if unknown:
            raise ConfigError(f"settings.{name}.text_prompt: unknown placeholder(s) "
                              f"{', '.join('{' + f + '}' for f in unknown)} in {setting['text_prompt']!r}; the "
                              "only one is {question}. Fix the spelling")


def _check_analysis_family(key: str, model: str, family: str) -> None:
    """An encoder analysis runs only on the families whose module declares it (``Family.analyses``)."""
    from pii.inference import families

    analysis = key.split(".")[1].split("[")[0]
    allowed = families.supporting(analysis)
    if family not in allowed:
        raise ConfigError(f"{key}: '{model}' is a {family} model; {analysis} runs on models of the families "
                          f"{allowed}. Name one of those")


def _check_image_preprocess(models: dict) -> None:
    from pii.inference import families

    for name, entry in models.items():
        if entry.get("image_preprocess") == "pad" and not families.get(entry["family"]).supports_pad:
            offered = [n for n, f in families.REGISTRY.items() if f.supports_pad]
            raise ConfigError(f"models.{name}.image_preprocess: pad is offered for the families {offered}, not "
                              f"'{entry['family']}'. Use checkpoint")


def _check_backends(config: dict) -> None:
    """A model on the vllm backend is of a family vLLM implements (``Family.vllm_supported``)."""
    from pii.inference import families

    default = config["inference"]["backend"]
    for name, entry in config["models"].items():
        backend = entry.get("backend") or default
        if backend == "vllm" and not families.get(entry["family"]).vllm_supported:
            where = f"models.{name}.backend" if entry.get("backend") else "inference.backend"
            raise ConfigError(f"{where}: vLLM cannot serve '{name}' (family {entry['family']}, which vLLM does not "
                              f"implement); set models.{name}.backend: transformers")


def _check_baseline(config: dict) -> None:
    """scoring.baseline names a setting that the scored tasks run (not one a task claims for itself)."""
    baseline = config["scoring"].get("baseline", "baseline")
    claimed = {s for task in config["tasks"].values() for s in task.get("settings") or []}
    study = [s for s in config["settings"] if s not in claimed]
    if baseline not in study:
        raise ConfigError(f"scoring.baseline: '{baseline}' is not a setting POPE and captions run ({study}); the "
                          "paired tests compare every setting with it. Use one of those")


def _check_references(config: dict) -> None:
    _check_data(config["data"])
    _check_tasks(config)
    _check_prompts(config["settings"])
    models = config["models"]
    _check_image_preprocess(models)
    _check_backends(config)
    built = set(demo_model_paths(config).values())
    for name, entry in models.items():
        path = entry["path"]
        if path in built or Path(path).exists():
            continue
        if is_local_model_path(path):
            raise ConfigError(
                f"models.{name}.path: local folder '{path}' does not exist. "
                "Point it at a saved checkpoint folder or use a Hugging Face id like 'owner/name'"
            )
    analysis = config["analysis"]
    refs = [("analysis.attention.model", analysis["attention"]["model"]),
            ("analysis.modality_gap.model", analysis["modality_gap"]["model"])]
    refs += [(f"analysis.layer_similarity.models[{i}]", m) for i, m in enumerate(analysis["layer_similarity"]["models"])]
    for key, model in refs:
        if model not in models:
            raise ConfigError(f"{key}: '{model}' is not a key of models ({sorted(models)}). Use one of those")
    for key, model in refs:
        _check_analysis_family(key, model, models[model]["family"])
    _check_baseline(config)
    for task, task_cfg in config["tasks"].items():
        for i, setting in enumerate(task_cfg.get("settings") or []):
            if setting not in config["settings"]:
                raise ConfigError(f"tasks.{task}.settings[{i}]: '{setting}' is not a key of settings "
                                  f"({sorted(config['settings'])}). Use one of those")
    for i, setting in enumerate(analysis["modality_gap"]["conditions"]):
        if setting not in config["settings"]:
            raise ConfigError(f"analysis.modality_gap.conditions[{i}]: '{setting}' is not a key of settings "
                              f"({sorted(config['settings'])}). Use one of those")
    demo = config["data"].get("demo")
    if demo and demo["min_size"] > demo["max_size"]:
        raise ConfigError("data.demo.min_size: larger than data.demo.max_size. Swap them")

