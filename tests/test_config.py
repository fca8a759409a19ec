"""Config validation: the shipped configs pass, every kind of mistake ends in one line naming the key."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT, config_paths, merge_configs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pii.core.config import ConfigError, validate_config
from pii.inference import families


def load(name="config.yaml"):
    with open(ROOT / name) as f:
        return yaml.safe_load(f)


def merged_demo():
    """config.yaml updated by config.demo.yaml, the way Snakemake merges --configfile (recursively)."""
    return merge_configs(load(), load("config.demo.yaml"))


def test_shipped_configs_are_valid():
    validate_config(load())
    validate_config(merged_demo())


def test_paper_defaults():
    cfg = load()
    assert cfg["sampling"]["pope"]["n"] == 1000 and cfg["sampling"]["caption"]["n"] == 500
    assert set(cfg["settings"]) == {"baseline", "control", "hybrid", "prompt_in_image", "prompt_in_image_instructed",
                                    "transcribe"}
    assert cfg["tasks"]["transcribe"]["settings"] == ["transcribe"] and cfg["scoring"]["baseline"] == "baseline"
    assert cfg["settings"]["prompt_in_image"]["text_prompt"] is None
    assert cfg["decoding"]["temperature"] == 0.7 and cfg["decoding"]["do_sample"] is True
    assert cfg["render"]["font_size"] == 26
    assert {m["path"] for m in cfg["models"].values()} == {
        "Qwen/Qwen2.5-VL-7B-Instruct", "llava-hf/llava-1.5-7b-hf", "Salesforce/instructblip-vicuna-7b"}


def test_greedy_decoding_needs_no_temperature():
    """do_sample: false alone is greedy; the backends send their greedy values, never the missing temperature."""
    from pii.inference.vllm_engine import sampling_values

    cfg = load()
    cfg["decoding"].pop("temperature")
    cfg["decoding"]["do_sample"] = False
    validate_config(cfg)
    assert sampling_values(cfg["decoding"], 8)["temperature"] == 0.0


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda c: c["render"].update(fnt_size=3), "render: unknown key(s) ['fnt_size']"),
        (lambda c: c["models"]["llava_1_5"].update(family="blip9"), "models.llava_1_5.family: 'blip9' is not one of"),
        (lambda c: c["scoring"].update(baseline="control_v2"), "scoring.baseline: 'control_v2' is not a setting"),
        (lambda c: c["scoring"].update(baseline="transcribe"), "scoring.baseline: 'transcribe' is not a setting"),
        (lambda c: c["tasks"]["transcribe"].update(settings=["reading"]),
         "tasks.transcribe.settings[0]: 'reading' is not a key of settings"),
        (lambda c: c["models"]["qwen2_5_vl"].update(image_preprocess="pad"),
         "models.qwen2_5_vl.image_preprocess: pad is offered for the families ['llava'], not 'qwen2_5_vl'"),
        (lambda c: c["models"]["llava_1_5"].update(image_preprocess="square"),
         "models.llava_1_5.image_preprocess: 'square' is not one of ['checkpoint', 'pad']"),
        (lambda c: c["sampling"]["pope"].update(n="many"), "sampling.pope.n: 'many' should be of type"),
        (lambda c: c["sampling"]["pope"].update(n=0), "sampling.pope.n"),
        (lambda c: c["decoding"].pop("temperature"), "decoding: 'temperature' is a required property"),
        (lambda c: c["decoding"].update(temperature=0), "decoding.temperature: 0 with do_sample: true. For greedy "
         "decoding write do_sample: false"),
        (lambda c: c["decoding"].update(top_p=float("nan")), "decoding.top_p: nan is not a number a run can use"),
        (lambda c: c["render"].update(font_size=float("inf")), "render.font_size: inf is not a number"),
        (lambda c: c["inference"].update(batch_size=4096), "inference.batch_size: 4096 is greater than the maximum of "
         "1024"),
        (lambda c: c["models"]["llava_1_5"].update(batch_size=2000), "models.llava_1_5.batch_size: 2000 is greater"),
        (lambda c: c["models"]["qwen2_5_vl"].update(path="./no/such/folder"), "models.qwen2_5_vl.path: local folder"),
        (lambda c: c["analysis"]["attention"].update(model="qwen2_5_vl"), "analysis.attention.model: 'qwen2_5_vl' is a qwen2_5_vl model; attention runs on models of the families ['llava']"),
        (lambda c: c["analysis"]["modality_gap"].update(model="gpt"), "analysis.modality_gap.model: 'gpt' is not a key"),
        (lambda c: c["settings"]["baseline"].update(image="negative"), "settings.baseline.image: 'negative'"),
        (lambda c: c["analysis"]["modality_gap"].update(conditions=["control", "pii"]),
         "analysis.modality_gap.conditions[1]: 'pii' is not a key of settings"),
    ],
)
def test_mistakes_name_the_key(mutate, expected):
    cfg = load()
    mutate(cfg)
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    message = str(err.value)
    assert expected in message
    assert "\n" not in message


RANDOM = {"kind": "pope", "max_new_tokens": 8, "pope": {"file": None, "url": "https://example.org/coco_pope_random.json",
                                                     "sha256": None}}


def with_random(c, task=RANDOM, sampling=True):
    c["tasks"]["pope_random"] = copy.deepcopy(task)
    if sampling:
        c["sampling"]["pope_random"] = {"n": 10, "balanced": True}
    return c


def test_a_further_pope_task_is_one_config_entry():
    """POPE's random split as a task of its own validates with its sampling entry; the paper config ships it
    commented out (off), the demo runs random and popular on the built files."""
    validate_config(with_random(load()))
    assert "pope_random" not in load()["tasks"] and "# pope_random:" in (ROOT / "config.yaml").read_text()
    demo = merged_demo()
    for split in ("random", "popular"):
        task = demo["tasks"][f"pope_{split}"]
        assert task["kind"] == "pope" and task["pope"]["file"] == f"results/pope_built/coco_pope_{split}.json"


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda c: with_random(c, sampling=False),
         "sampling.pope_random: missing; task pope_random draws its own sample"),
        (lambda c: c["sampling"].update(pope_randm={"n": 5, "balanced": True}),
         "sampling.pope_randm: no task of that name draws a sample"),
        (lambda c: with_random(c, {**RANDOM, "kind": "caption"}), "tasks.pope_random.kind: 'caption' is not one of ['pope']"),
        (lambda c: with_random(c, {k: v for k, v in RANDOM.items() if k != "kind"}),
         "tasks.pope_random: 'kind' is a required property"),
        (lambda c: with_random(c, {**RANDOM, "pope": {"file": None, "url": None}}),
         "tasks.pope_random.pope.file: null and tasks.pope_random.pope.url is not set either"),
        (lambda c: with_random(c, {**RANDOM, "pope": {"file": "no/such/pope.json"}}),
         "tasks.pope_random.pope.file: 'no/such/pope.json' does not exist"),
        (lambda c: with_random(c, {**RANDOM, "max_tokens": 3}), "tasks.pope_random: unknown key(s) ['max_tokens']"),
        (lambda c: c["tasks"].update({"POPE-2": RANDOM}), "tasks: 'POPE-2' does not match"),
    ],
)
def test_further_task_mistakes_name_the_key(mutate, expected):
    cfg = load()
    mutate(cfg)
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_cli_reports_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: {llava_1_5: {family: blip9}}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "-s", str(ROOT / "Snakefile"),
         "--directory", str(tmp_path), "--configfile", str(bad)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Config error:")]
    assert errors == ["Config error: models.llava_1_5.family: 'blip9' is not one of "
                      f"{families.names()}. Use one of those"]
    assert "Traceback" not in proc.stderr


# --- fuzzing: any value anywhere ends in a ConfigError, never another exception ----------------------------

PATHS = list(config_paths(load()))
JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True), st.text(max_size=20),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(PATHS), value=JUNK, drop=st.booleans())
def test_fuzzed_config_never_crashes(path, value, drop):
    cfg = copy.deepcopy(load())
    parent = cfg
    for part in path[:-1]:
        parent = parent[part]
    if drop and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    try:
        validate_config(cfg)
    except ConfigError as err:
        assert "\n" not in str(err) and str(err)
