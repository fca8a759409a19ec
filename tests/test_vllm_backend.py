"""The vllm backend against the transformers backend, on the demo's tiny Qwen2.5-VL and LLaVA checkpoints, with
the real vLLM engine (the CPU build in .venv-vllm, made by bash run.sh vllm-install). One engine per model is shared
by the tests of this file; without a vLLM environment they skip, unless PII_REQUIRE_VLLM is set (as run.sh test
does), when they fail."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import ROOT, merge_configs
from inference_fixtures import disk_full_at, job_config, make_inputs
from test_config import merged_demo

from pii.core.config import ConfigError, validate_config
from pii.core.stage import PipelineError
from pii.core.tables import read_metadata, read_table
from pii.inference import demo_checkpoints, runner, vlm
from pii.inference.backends import SharedModel
from pii.inference.job import Job
from pii.inference.runner import run_job
from pii.inference.vllm_engine import p_yes_from_logprobs, pad_to_square, sampling_values, vllm_python

FAMILIES = ["llava", "qwen2_5_vl"]
# as config.demo-vllm.yaml: no torch.compile (a minute a model on this machine), few sequences at once
ENGINE = {"enforce_eager": True, "max_num_seqs": 8}
SAMPLED = {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 50, "repetition_penalty": 1.0}


def require_vllm() -> str:
    try:
        return vllm_python(None)
    except PipelineError as err:
        if os.environ.get("PII_REQUIRE_VLLM"):
            raise
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("vllm_models")
    return {f: demo_checkpoints.build(f, out / f, seed=0) for f in FAMILIES}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vllm_inputs")
    return {task: make_inputs(folder / task, task, n=8) for task in ("pope", "caption")}


@pytest.fixture(scope="module")
def engines():
    """One SharedModel (one vLLM engine) per family, loaded by the first job that needs it, closed at the end."""
    require_vllm()
    shared = {f: SharedModel() for f in FAMILIES}
    yield shared
    for models in shared.values():
        models.close()


def run_unit(tmp: Path, family: str, path: Path, backend: str, inputs, models=None, task="pope",
             setting="hybrid", text_prompt="{question}", decoding=None, seed=0, max_new_tokens=6, cache=None):
    cfg = job_config("m", family, str(path), task=task, setting=setting, text_prompt=text_prompt, batch_size=4,
                     max_new_tokens=max_new_tokens, backend=backend)
    cfg["inference"]["vllm"] = {"engine": ENGINE}
    cfg["seed"] = seed
    if decoding:
        cfg["decoding"] = decoding
    job = Job(task=task, model="m", setting=setting, cfg=cfg)
    sample, manifest = inputs[task]
    name = f"{family}-{backend}-{task}-{setting}-{seed}-{bool(decoding)}"
    out = tmp / f"{name}.parquet"
    rows = run_job(job, sample, manifest, out, tmp / f"partial-{name}", models=models or SharedModel(),
                         cache=cache)
    return rows, out


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("setting,text_prompt", [("hybrid", "{question}"), ("prompt_in_image", None)])
def test_vllm_rows_match_the_transformers_backend(tmp_path, family, setting, text_prompt, checkpoints, inputs,
                                                  engines):
    """Same prompt strings and prompt-token counts (image tokens included), greedy answers that agree, and P(yes)
    within 1e-3 in float32."""
    kw = dict(setting=setting, text_prompt=text_prompt)
    hf, _ = run_unit(tmp_path, family, checkpoints[family], "transformers", inputs, **kw)
    vl, out = run_unit(tmp_path, family, checkpoints[family], "vllm", inputs, models=engines[family], **kw)
    assert vl["sample_id"].to_list() == hf["sample_id"].to_list()
    assert vl["prompt"].to_list() == hf["prompt"].to_list()
    assert vl["n_prompt_tokens"].to_list() == hf["n_prompt_tokens"].to_list()
    agree = float(np.mean([a == b for a, b in zip(vl["response"], hf["response"], strict=True)]))
    print(f"{family} {setting}: greedy answers agree in {agree:.0%} of {len(vl)} rows; largest |dP(yes)| "
          f"{(vl['p_yes'] - hf['p_yes']).abs().max():.2e}")
    # Tiny random models have near-ties that float rounding may flip; measured: every row agrees.
    assert agree >= 0.75
    assert (vl["p_yes"] - hf["p_yes"]).abs().max() < 1e-3
    # what the model saw of the strip: the same processor, so the same measures
    seen = ["strip_visible_fraction", "photo_visible_fraction", "text_px_in_model", "text_legible"]
    assert hf["strip_visible_fraction"].is_not_null().all() and vl.select(seen).equals(hf.select(seen))
    meta = read_metadata(out)
    assert meta["backend"] == "vllm" and meta["vllm"]["version"].startswith("0.")
    assert meta["vllm"]["engine"]["enforce_eager"] is True
    assert meta["vllm"]["engine"]["generation_config"] == "vllm"  # the checkpoint's defaults are never read


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_vllm_sampling_repeats_for_the_same_seed(tmp_path, family, checkpoints, inputs, engines):
    first, _ = run_unit(tmp_path / "a", family, checkpoints[family], "vllm", inputs, models=engines[family],
                        task="caption", decoding=SAMPLED, max_new_tokens=12)
    again, _ = run_unit(tmp_path / "b", family, checkpoints[family], "vllm", inputs, models=engines[family],
                        task="caption", decoding=SAMPLED, max_new_tokens=12)
    other, _ = run_unit(tmp_path / "c", family, checkpoints[family], "vllm", inputs, models=engines[family],
                        task="caption", decoding=SAMPLED, max_new_tokens=12, seed=1)
    assert first["response"].to_list() == again["response"].to_list()
    assert first["seed"].to_list() == again["seed"].to_list()
    assert sorted(first["seed"].to_list()) == list(range(len(first)))  # seed + sorted position, one per request
    assert first["response"].to_list() != other["response"].to_list()


@pytest.mark.slow
def test_an_interrupted_vllm_unit_resumes_from_its_finished_batches(tmp_path, checkpoints, inputs, engines,
                                                                    monkeypatch):
    """A write that fails after the first of two batches (the disk fills up): that batch is kept, no output is
    written; the rerun sends only the second batch's requests to the engine and gives the uninterrupted rows."""
    whole, _ = run_unit(tmp_path / "whole", "llava", checkpoints["llava"], "vllm", inputs, models=engines["llava"])
    real_write = runner.write_table
    monkeypatch.setattr(runner, "write_table", disk_full_at(real_write, 2))
    with pytest.raises(OSError, match="No space left"):
        run_unit(tmp_path / "cut", "llava", checkpoints["llava"], "vllm", inputs, models=engines["llava"])
    monkeypatch.setattr(runner, "write_table", real_write)
    engine = engines["llava"].engine
    sent, real_generate = [], engine.generate

    def counting_generate(requests, *args, **kwargs):
        sent.append(len(requests))
        return real_generate(requests, *args, **kwargs)

    monkeypatch.setattr(engine, "generate", counting_generate)
    resumed, out = run_unit(tmp_path / "cut", "llava", checkpoints["llava"], "vllm", inputs, models=engines["llava"])
    assert read_metadata(out)["resumed_batches"] == 1 and sent == [4]
    assert resumed.equals(whole)


@pytest.mark.slow
def test_a_kept_vllm_unit_is_copied_without_starting_an_engine(tmp_path, checkpoints, inputs, engines):
    cache = tmp_path / "cache.parquet"
    rows, _ = run_unit(tmp_path / "first", "llava", checkpoints["llava"], "vllm", inputs, models=engines["llava"],
                       cache=cache)
    fresh = SharedModel()
    again, _ = run_unit(tmp_path / "second", "llava", checkpoints["llava"], "vllm", inputs, models=fresh, cache=cache)
    assert fresh.engine is None
    assert again["response"].to_list() == rows["response"].to_list()


def test_prepadded_images_are_what_the_llava_processor_pads(checkpoints):
    """image_preprocess: pad sends images padded by us; LLaVA's processor without padding then gives the pixels
    that transformers' own do_pad gives."""
    entry = {"family": "llava", "path": str(checkpoints["llava"]), "image_preprocess": "pad"}
    padding = vlm.load_image_processor("pad", entry)
    plain = vlm.load_image_processor("plain", {**entry, "image_preprocess": "checkpoint"})
    assert padding.do_pad and not plain.do_pad
    from PIL import Image

    rng = np.random.default_rng(0)
    for size in [(300, 180), (181, 400), (256, 256)]:
        image = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
        want = padding(images=[image], return_tensors="np")["pixel_values"]
        got = plain(images=[pad_to_square(image, plain.image_mean)], return_tensors="np")["pixel_values"]
        np.testing.assert_array_equal(got, want)


def test_every_decoding_value_is_sent():
    assert sampling_values(SAMPLED, 8) == {"temperature": 0.7, "top_p": 0.9, "top_k": 50, "repetition_penalty": 1.0,
                                           "max_tokens": 8}
    greedy = {**SAMPLED, "do_sample": False, "repetition_penalty": 1.05}
    assert sampling_values(greedy, 3) == {"temperature": 0.0, "top_p": 1.0, "top_k": 0, "repetition_penalty": 1.05,
                                          "max_tokens": 3}


def test_p_yes_from_logprobs_is_the_logit_rule():
    import torch

    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0, -2.0]])
    ids = {"yes": [0, 2], "no": [3]}
    logp = torch.log_softmax(logits, -1)[0]
    first = {str(i): float(logp[i]) for i in (0, 2, 3)}
    assert p_yes_from_logprobs(first, ids) == pytest.approx(vlm.p_yes_from_logits(logits, ids)[0], abs=1e-7)
    assert p_yes_from_logprobs({"0": -1e4, "3": 0.0}, {"yes": [0], "no": [3]}) == pytest.approx(0.0)
    assert p_yes_from_logprobs({"0": -1.0}, {"yes": [0], "no": [3]}) is None


def demo_on_vllm() -> dict:
    """config.yaml, config.demo.yaml and config.demo-vllm.yaml merged as Snakemake merges --configfile."""
    return merge_configs(merged_demo(), yaml.safe_load((ROOT / "config.demo-vllm.yaml").read_text()))


def test_the_demo_overlay_puts_qwen_and_llava_on_vllm():
    config = demo_on_vllm()
    validate_config(config)
    on_vllm = {m: e["path"].rsplit("/", 1)[-1] for m, e in config["models"].items() if e.get("backend") == "vllm"}
    assert set(on_vllm.values()) == {"qwen2_5_vl", "llava"}
    assert config["models"]["instructblip"].get("backend") is None and config["inference"]["backend"] == "transformers"


def test_a_family_vllm_cannot_serve_is_a_config_error():
    config = demo_on_vllm()
    config["models"]["instructblip"]["backend"] = "vllm"
    with pytest.raises(ConfigError, match=r"models\.instructblip\.backend: vLLM cannot serve 'instructblip'.*"
                                          r"models\.instructblip\.backend: transformers"):
        validate_config(config)
    config["models"]["instructblip"].pop("backend")
    config["inference"]["backend"] = "vllm"
    with pytest.raises(ConfigError, match=r"^inference\.backend: vLLM cannot serve 'instructblip'"):
        validate_config(config)


@pytest.mark.slow
def test_the_demo_runs_qwen_and_llava_through_vllm(demo_run, tmp_path):
    """The README's vllm-demo on a copy of the finished demo: the infer jobs of the three models the overlay moves
    to vLLM run again (their entries changed), in the job's vLLM engine, and give the transformers rows' prompts,
    prompt-token counts and P(yes); the batch-invariance check of the plain LLaVA entry runs on the engine too."""
    require_vllm()
    from conftest import run_snakemake

    work = tmp_path / "demo"
    shutil.copytree(demo_run, work, symlinks=True)
    models = ["qwen2_5_vl", "llava_1_5", "llava_1_5_pad"]
    units = sorted(p.relative_to(work).as_posix() for m in models for p in work.glob(f"results/inference/*/{m}/*/r0.parquet"))
    assert len(units) >= 3 * 5
    invariance = "results/inference/invariance/llava_1_5.parquet"
    run_snakemake(work, *units, invariance, "--configfile", str(ROOT / "config.demo.yaml"), str(ROOT / "config.demo-vllm.yaml"),
                  configfile=None, timeout=1800)
    for unit in units:
        vl, hf = read_table(work / unit, "inference"), read_table(demo_run / unit, "inference")
        assert read_metadata(work / unit)["backend"] == "vllm", unit
        assert vl["sample_id"].to_list() == hf["sample_id"].to_list(), unit
        assert vl["prompt"].to_list() == hf["prompt"].to_list(), unit
        assert vl["n_prompt_tokens"].to_list() == hf["n_prompt_tokens"].to_list(), unit
        if hf["p_yes"].is_not_null().any():
            assert (vl["p_yes"] - hf["p_yes"]).abs().max() < 1e-3, unit
    for model in models:
        log = (work / f"logs/inference/{model}/r0.log").read_text()
        assert "vLLM 0.32.0 engine loaded" in log, model
    vl, hf = read_table(work / invariance, "invariance"), read_table(demo_run / invariance, "invariance")
    assert (vl["backend"] == "vllm").all() and (vl["batch_size"] == 64).all()  # config.demo-vllm.yaml's batch
    assert vl["sample_id"].to_list() == hf["sample_id"].to_list()
    assert vl["identical"].to_list() == (vl["response_batched"] == vl["response_single"]).to_list()
    print(f"vLLM batch invariance, LLaVA: {int(vl['identical'].sum())}/{len(vl)} identical, largest |dP(yes)| "
          f"{vl['abs_diff_p_yes'].max():.1e}")
    assert (vl["p_yes_single"] - hf["p_yes_single"]).abs().max() < 1e-3
    # what the overlay does not move stays as the transformers run wrote it
    kept = next(work.glob("results/inference/pope/instructblip/*/r0.parquet"))
    assert kept.read_bytes() == (demo_run / kept.relative_to(work)).read_bytes()
