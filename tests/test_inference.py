"""Inference stage: demo checkpoints, prompts per family and setting, batching, p_yes, resume, OOM back-off."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from conftest import LIB
from inference_fixtures import disk_full_at, job_config, make_inputs, write_config
from polars.testing import assert_frame_equal

from pii.core.stage import PipelineError
from pii.core.tables import read_metadata, read_table, sha256_file
from pii.inference import demo_checkpoints, families, runner, vlm
from pii.inference.backends import TransformersBackend
from pii.inference.job import ARROW_TYPES, Job, build_requests, format_text_prompt, is_legible, repeat_seed
from pii.inference.runner import plan_batches, run_job, run_requests
from pii.inference.unit_cache import fingerprint, model_files

ROOT = Path(__file__).resolve().parent.parent
SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
Q = "Is there a dog in the image?"
SETTINGS = {  # setting -> text turn after templating (config.yaml)
    "baseline": Q, "control": Q, "hybrid": Q, "prompt_in_image": None,
    "prompt_in_image_instructed": "Answer the question in the image.",
}
GOLDEN = {
    "qwen2_5_vl": lambda t: (SYSTEM + "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>" + (t or "")
                             + "<|im_end|>\n<|im_start|>assistant\n"),
    "llava": lambda t: f"USER: <image>\n{t} ASSISTANT:" if t is not None else "USER: <image>\nASSISTANT:",
    "instructblip": lambda t: t or "",
    "hf": lambda t: f"<|im_start|>User:<image>{t or ''}<end_of_utterance>\nAssistant:",
    # the model card's prompt for llava-v1.6-vicuna, LLaVA-1.5's
    "llava_next": lambda t: f"USER: <image>\n{t} ASSISTANT:" if t is not None else "USER: <image>\nASSISTANT:",
}
GREEDY = {"do_sample": False, "temperature": 0.7, "top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0}


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo_models")
    for family in families.names():
        demo_checkpoints.build(family, out / family, seed=0)
    return out


@pytest.fixture(scope="session")
def loaded(models_dir):
    return {f: vlm.load_model(f"demo_{f}", {"family": f, "path": str(models_dir / f)}) for f in families.names()}


@pytest.fixture(scope="session")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("imgs")
    make_inputs(folder, "pope", n=4)
    return [vlm.open_image(str(p)) for p in sorted(folder.glob("img*.png"))]


def test_demo_checkpoints_are_the_real_classes(models_dir, loaded):
    import transformers

    want = {"qwen2_5_vl": transformers.Qwen2_5_VLForConditionalGeneration,
            "llava": transformers.LlavaForConditionalGeneration,
            "instructblip": transformers.InstructBlipForConditionalGeneration,
            "hf": transformers.Idefics3ForConditionalGeneration,
            "llava_next": transformers.LlavaNextForConditionalGeneration}
    for family, lm in loaded.items():
        assert type(lm.model) is want[family]
        assert lm.tokenizer.padding_side == "left"
        for word in ("Yes", "No"):  # p_yes needs single-token answers
            assert len(lm.tokenizer.encode(word, add_special_tokens=False)) == 1
        assert lm.answer_ids["yes"] and lm.answer_ids["no"]
        assert not set(lm.answer_ids["yes"]) & set(lm.answer_ids["no"])
    llava = loaded["llava"].model.config
    assert llava.vision_config.patch_size == 14 and llava.vision_feature_layer == -2
    assert llava.vision_config.num_hidden_layers >= 4
    assert loaded["instructblip"].model.config.vision_config.initializer_range == 0.02
    # processors load from the folder with the stock classes (Qwen's without torchvision is assembled)
    proc = transformers.AutoProcessor.from_pretrained(models_dir / "llava")
    assert type(proc).__name__ == "LlavaProcessor"
    assert type(transformers.AutoProcessor.from_pretrained(models_dir / "instructblip")).__name__ == \
        "InstructBlipProcessor"
    assert isinstance(loaded["qwen2_5_vl"].processor, transformers.Qwen2_5_VLProcessor)


def test_demo_build_is_seeded(tmp_path, models_dir):
    from safetensors.torch import load_file

    demo_checkpoints.build("llava", tmp_path / "llava", seed=0)
    a, b = load_file(tmp_path / "llava" / "model.safetensors"), load_file(models_dir / "llava" / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


@pytest.mark.parametrize("family", families.names())
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_prompt_golden(loaded, family, setting):
    text = format_text_prompt({"prompt_in_image": None, "prompt_in_image_instructed":
                                     "Answer the question in the image."}.get(setting, "{question}"), Q)
    assert text == SETTINGS[setting]
    lm = loaded[family]
    assert vlm.build_prompt(family, lm.processor, text) == GOLDEN[family](text)


def test_qwen_prompt_expands_image_tokens(loaded, images):
    lm = loaded["qwen2_5_vl"]
    inputs = vlm.prepare_inputs(lm, [vlm.build_prompt("qwen2_5_vl", lm.processor, None)], images[:1])
    n_img = int((inputs["input_ids"] == lm.model.config.image_token_id).sum())
    assert n_img == int(inputs["image_grid_thw"].prod()) // 4 > 1


@pytest.mark.parametrize("family", families.names())
def test_greedy_same_at_batch_1_and_4(loaded, images, family):
    lm = loaded[family]
    texts = [Q, None, "Describe this image in detail.", "Answer the question in the image."]
    prompts = [vlm.build_prompt(family, lm.processor, t) for t in texts]
    batched = vlm.generate(lm, prompts, images, 6, GREEDY, seed=0, want_p_yes=True)
    single = [vlm.generate(lm, [p], [im], 6, GREEDY, seed=0, want_p_yes=True)[0] for p, im in zip(prompts, images, strict=True)]
    for b, s in zip(batched, single, strict=True):
        assert b["response"] == s["response"] and b["n_response_tokens"] == s["n_response_tokens"]
        assert b["n_prompt_tokens"] == s["n_prompt_tokens"]
        assert b["p_yes"] == pytest.approx(s["p_yes"], abs=1e-4)
        assert 0 < b["p_yes"] < 1


@pytest.mark.parametrize("family", families.names())
def test_first_step_logits_are_what_generate_reports(loaded, images, family):
    """P(yes) keeps only the first step's logits (a hook on the output embedding), and they are exactly the raw
    first-step logits ``generate`` itself reports with ``output_logits``: before the repetition penalty and the
    temperature, which are on here so that logits after any processor would differ."""
    import torch

    lm = loaded[family]
    prompts = [vlm.build_prompt(family, lm.processor, t) for t in (Q, None)]
    inputs = vlm.prepare_inputs(lm, prompts, images[:2])
    sampled = {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 5, "repetition_penalty": 1.3}
    torch.manual_seed(0)
    with torch.inference_mode(), vlm.first_step_logits(lm.model) as first:
        out = lm.model.generate(**inputs, **vlm.generation_kwargs(sampled, 3), return_dict_in_generate=True,
                                output_logits=True, output_scores=True, pad_token_id=vlm._pad_id(lm))
    assert first is not None and len(first) == 1
    assert first[0].dtype == torch.float32 and torch.equal(first[0], out.logits[0])
    assert not torch.allclose(out.scores[0], out.logits[0])  # the processors did act on the scores
    # and generate() reports P(yes) from them without keeping every step's logits
    assert vlm.generate(lm, prompts, images[:2], 3, sampled, seed=0, want_p_yes=True)[0]["p_yes"] == pytest.approx(
        vlm.p_yes_from_logits(out.logits[0], lm.answer_ids)[0], abs=1e-6)


@pytest.mark.parametrize("family", families.names())
def test_static_kv_cache_gives_the_dynamic_caches_rows(loaded, images, family):
    """inference.kv_cache: static (one cache allocated for prompt + max_new_tokens) generates what the dynamic
    cache generates, for every family, in a left-padded batch long enough to pass the shortest prompt's padding."""
    lm = loaded[family]
    prompts = [vlm.build_prompt(family, lm.processor, t) for t in ("Describe this image in detail.", None, Q, "x")]
    rows = {kv: vlm.generate(lm, prompts, images, 24, GREEDY, seed=0, want_p_yes=True, kv_cache=kv)
            for kv in ("dynamic", "static")}
    for dynamic, static in zip(rows["dynamic"], rows["static"], strict=True):
        assert static["response"] == dynamic["response"] and static["n_response_tokens"] == dynamic["n_response_tokens"]
        assert static["p_yes"] == pytest.approx(dynamic["p_yes"], abs=1e-5)
    assert vlm.generation_kwargs(GREEDY, 24, "static")["cache_implementation"] == "static"
    assert "cache_implementation" not in vlm.generation_kwargs(GREEDY, 24)


def test_p_yes_sums_spellings():
    import torch

    logits = torch.full((1, 6), -1e9)
    logits[0, [0, 1, 2]] = torch.log(torch.tensor([0.2, 0.1, 0.1]))  # Yes, yes (ids 0, 1), No (id 2)
    assert vlm.p_yes_from_logits(logits, {"yes": [0, 1], "no": [2]})[0] == pytest.approx(0.75)
    assert vlm.p_yes_from_logits(logits, {"yes": [], "no": [2]}) == [None]


def test_decoding_overrides_checkpoint_defaults():
    kw = vlm.generation_kwargs({"do_sample": True, "temperature": 0.7, "top_p": 1.0, "top_k": 0,
                                "repetition_penalty": 1.0}, 32)
    assert kw == {"max_new_tokens": 32, "repetition_penalty": 1.0, "do_sample": True, "temperature": 0.7,
                  "top_p": 1.0, "top_k": 0}
    assert vlm.generation_kwargs(GREEDY, 8)["do_sample"] is False


def test_model_entry_errors_name_the_key(tmp_path):
    with pytest.raises(PipelineError, match=r"^models\.m\.family: 'blip9'") as err:
        vlm.load_model("m", {"family": "blip9", "path": "owner/name"})
    assert "\n" not in str(err.value)
    with pytest.raises(PipelineError, match=r"^models\.m\.path: local folder") as err:
        vlm.load_model("m", {"family": "llava", "path": str(tmp_path / "missing")})
    assert "\n" not in str(err.value)


class FakeBackend:
    """Stands in for a model: echoes the request, raises CUDA OOM above ``max_ok`` requests per call."""

    name = "fake"

    def __init__(self, max_ok: int = 99):
        self.max_ok, self.calls = max_ok, []

    def prompt(self, req):
        return f"P:{req.text_prompt}"

    def sort_key(self, req):
        return len(req.question)

    def run(self, chunk, seed):
        import torch

        self.calls.append(len(chunk))
        if len(chunk) > self.max_ok:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [{"response": f"{r.sample_id}@{seed}", "n_prompt_tokens": 3, "n_response_tokens": 1,
                 "finish_reason": "stop", "p_yes": 0.5} for r in chunk]

    def metadata(self):
        return {"device": "none"}


def _requests(tmp_path, n=10):
    sample, manifest = make_inputs(tmp_path / "in", "pope", n=n)
    job = Job("pope", "m", "hybrid", job_config("m", "llava", "unused", batch_size=4))
    return job, build_requests(read_table(sample), read_table(manifest), job), sample, manifest


def test_oom_halves_batch_and_keeps_every_row(tmp_path, caplog):
    job, reqs, _, _ = _requests(tmp_path)
    backend = FakeBackend(max_ok=1)
    with caplog.at_level(logging.WARNING, logger="pii"):
        df, facts = run_requests(job, reqs, backend, tmp_path / "partial")
    assert sorted(df["sample_id"]) == sorted(r.sample_id for r in reqs) and not df["sample_id"].is_duplicated().any()
    assert backend.calls[:3] == [4, 2, 1] and facts["final_batch_size"] == 1
    assert "halving the batch to 2" in caplog.text and "halving the batch to 1" in caplog.text
    # seeds: each piece is seeded by its position in the sorted order, so they are distinct and reproducible
    assert df["seed"].n_unique() == len(df)


def test_next_batch_is_prepared_while_the_model_generates(tmp_path, loaded):
    """Images are read and processed one batch ahead in a worker thread (Prefetch): each batch's prepare runs
    in that thread and starts before the previous batch's generation has finished, and the rows are the very rows of
    a run that prepares every batch in the main thread."""
    import threading

    sample, manifest = make_inputs(tmp_path / "in", "pope", n=10)
    job = Job("pope", "demo_llava", "hybrid", job_config("demo_llava", "llava", loaded["llava"].path, batch_size=3))
    requests = build_requests(read_table(sample), read_table(manifest), job)
    events = []

    def traced(backend):
        prepare, run = backend.prepare, backend.run

        def traced_prepare(chunk):
            events.append(("prepare", chunk[0].sample_id, threading.current_thread().name))
            return prepare(chunk)

        def traced_run(chunk, seed, prepared=None):
            out = run(chunk, seed, prepared)
            events.append(("ran", chunk[0].sample_id, prepared is not None))
            return out

        backend.prepare, backend.run = traced_prepare, traced_run
        return backend

    ahead, _ = run_requests(job, requests, traced(TransformersBackend(job, lm=loaded["llava"])),
                                  tmp_path / "ahead")
    assert [e[2] for e in events if e[0] == "prepare"] == ["prepare_0"] * 4  # 10 requests, batches of 3
    assert all(e[2] for e in events if e[0] == "ran")  # every batch ran on the inputs made ahead
    order = [e[:2] for e in events]
    firsts = [e[1] for e in events if e[0] == "ran"]
    for before, after in zip(firsts[:-1], firsts[1:], strict=True):  # the next batch was being prepared before this one finished
        assert order.index(("prepare", after)) < order.index(("ran", before))
    inline = TransformersBackend(job, lm=loaded["llava"])
    inline.prepare = None  # no worker: each batch processed in the main thread when it runs
    in_line, _ = run_requests(job, requests, inline, tmp_path / "inline")
    assert_frame_equal(ahead, in_line)


def test_oom_at_batch_one_is_a_clear_error(tmp_path):
    job, reqs, _, _ = _requests(tmp_path, n=2)
    with pytest.raises(PipelineError, match="out of memory at batch size 1"):
        run_requests(job, reqs, FakeBackend(max_ok=0), tmp_path / "partial")


def test_stale_checkpoints_are_discarded(tmp_path, caplog):
    job, reqs, _, _ = _requests(tmp_path, n=8)
    partial = tmp_path / "partial"
    run_requests(job, reqs, FakeBackend(), partial)  # leaves checkpoints (run_job removes them)
    assert len(list(partial.glob("batch-*.parquet"))) == 2
    other = Job("pope", "m", "hybrid", {**job.cfg, "seed": 1})
    backend = FakeBackend()
    with caplog.at_level(logging.INFO, logger="pii"):
        df, facts = run_requests(other, reqs, backend, partial)
    assert "discarded 2 stale checkpoint" in caplog.text and facts["resumed_batches"] == 0
    assert backend.calls == [4, 4] and set(df["seed"]) >= {1}


def test_missing_manifest_row_is_one_line_error(tmp_path):
    job, _, sample, manifest = _requests(tmp_path, n=3)
    man = read_table(manifest).head(2)
    with pytest.raises(PipelineError, match="no image for sample 'pope-2'"):
        build_requests(read_table(sample), man, job, "m.parquet")


def test_resume_after_sigkill(tmp_path, models_dir):
    """Kill a real infer run after its first checkpoint, rerun: only the rest is redone, rows are identical to an
    uninterrupted run (sampling on), every sample exactly once, checkpoints gone."""
    sample, manifest = make_inputs(tmp_path / "in", "caption", n=10)
    cfg = job_config("llava_1_5", "llava", str(models_dir / "llava"), task="caption", setting="baseline",
                     batch_size=1, max_new_tokens=24, do_sample=True)
    cfg_path = write_config(tmp_path / "cfg.json", cfg)
    out, partial, log = tmp_path / "out.parquet", tmp_path / ".partial", tmp_path / "infer.log"
    cmd = [sys.executable, "-m", "pii.inference.cli", "--config", str(cfg_path), "--task",
           "caption", "--model", "llava_1_5", "--setting", "baseline", "--sample", str(sample), "--manifest",
           str(manifest), "--out", str(out), "--partial", str(partial), "--log", str(log), "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(LIB)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while not list(partial.glob("batch-*.parquet")):
            assert proc.poll() is None, "infer finished or failed before the first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    n_done = len(list(partial.glob("batch-*.parquet")))
    assert not out.exists() and 1 <= n_done < 10
    subprocess.run(cmd, env=env, check=True, timeout=180, capture_output=True)
    text = log.read_text()
    assert f"resuming: {n_done} of 10 batches" in text
    df = read_table(out, "inference")
    assert sorted(df["sample_id"]) == sorted(f"caption-{i}" for i in range(10))
    assert not df["sample_id"].is_duplicated().any() and not partial.exists()
    meta = read_metadata(out)
    assert meta["resumed_batches"] == n_done and meta["versions"]["transformers"]
    # the same job uninterrupted, in-process: identical rows
    run_job(Job("caption", "llava_1_5", "baseline", json.loads(cfg_path.read_text())), sample, manifest,
                  tmp_path / "ref.parquet", tmp_path / ".partial_ref", threads=1)
    assert_frame_equal(df, read_table(tmp_path / "ref.parquet"))


def test_demo_tokenizers_identical_across_processes():
    """Hash maps in the tokenizer trainers are seeded per process: the demo tokenizers must not depend on them."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from pii.inference.families import demo_parts as d; "
            "print(d.bert_tokenizer().backend_tokenizer.to_str()"
            " + d.llama_tokenizer(['<image>']).backend_tokenizer.to_str())")
    outs = [subprocess.run([sys.executable, "-c", code, str(LIB)], capture_output=True, text=True, timeout=120,
                           check=True).stdout for _ in range(3)]
    assert outs[0] and outs[0] == outs[1] == outs[2]


def test_operational_settings_keep_checkpoints(tmp_path):
    """Retries, timeout, concurrency and the key's variable cannot change a row: editing them (in the job's config
    or in the run's config, where the Snakemake entry reads them) keeps a resumed job's checkpoints."""
    job, reqs, _, _ = _requests(tmp_path, n=8)
    partial = tmp_path / "partial"
    run_requests(job, reqs, FakeBackend(), partial)  # leaves 2 checkpoints
    ops = {"max_retries": 9, "timeout_s": 1.5, "concurrency": 32, "api_key_env": "OTHER_KEY"}
    in_cfg = {**job.cfg, "inference": {**job.inference, "openai": {**job.inference["openai"], **ops}}}
    for edited in (Job("pope", "m", "hybrid", in_cfg), Job("pope", "m", "hybrid", job.cfg, settings=ops)):
        assert fingerprint(edited, reqs) == fingerprint(job, reqs)
        backend = FakeBackend()
        _, facts = run_requests(edited, reqs, backend, partial)
        assert facts["resumed_batches"] == 2 and backend.calls == []
    # what decides the rows still does
    assert fingerprint(Job("pope", "m", "hybrid", {**job.cfg, "seed": 5}), reqs) != \
        fingerprint(job, reqs)


def test_openai_fingerprint_keeps_server_drops_credentials():
    def fp(url):
        cfg = job_config("m", "llava", "demo/llava", backend="openai", openai={
            "base_url": url, "api_key_env": "K", "concurrency": 1, "max_retries": 0, "timeout_s": 1})
        return fingerprint(Job("pope", "m", "hybrid", cfg), [])

    assert fp("https://alice:key-1@llm.example/v1") == fp("https://bob:key-2@llm.example/v1")
    assert fp("https://alice:key-1@llm.example/v1") != fp("https://alice:key-1@other.example/v1")


@pytest.mark.parametrize("fault", ["deleted", "replaced"])
def test_image_deleted_or_replaced_after_rendering(tmp_path, models_dir, fault):
    """Each image is checked against the manifest's sha256 before the model loads; one line names the file and
    the command that renders it again (checked through the CLI in test_reliability_inference.py)."""
    sample, manifest = make_inputs(tmp_path / "in", "pope", n=3)
    victim = tmp_path / "in" / "img001.png"
    if fault == "deleted":
        victim.unlink()
    else:  # a valid PNG, just not the one rendered
        shutil.copyfile(tmp_path / "in" / "img002.png", victim)
    job = Job("pope", "llava_1_5", "hybrid", job_config("llava_1_5", "llava", str(models_dir / "llava")))
    out = tmp_path / "out.parquet"
    with pytest.raises(PipelineError) as err:
        run_job(job, sample, manifest, out, tmp_path / ".partial")
    msg = str(err.value)
    assert msg.startswith(f"{victim} (sample pope-1, {manifest}): ") and "\n" not in msg
    assert ("No such file" if fault == "deleted" else "changed after rendering") in msg
    assert f"snakemake {manifest} --forcerun render_variants" in msg
    assert not out.exists()


def test_disk_full_keeps_checkpoints_and_resumes(tmp_path, models_dir, monkeypatch):
    """An OSError (disk full) while writing the second checkpoint: the first stays, no output; the rerun resumes
    from it and gives every row. (The disk is the one stand-in: a real full file system cannot be made here.)"""
    sample, manifest = make_inputs(tmp_path / "in", "pope", n=4)
    job = Job("pope", "llava_1_5", "hybrid",
                    job_config("llava_1_5", "llava", str(models_dir / "llava"), batch_size=2, max_new_tokens=2))
    out, partial = tmp_path / "out.parquet", tmp_path / ".partial"
    real_write = runner.write_table
    monkeypatch.setattr(runner, "write_table", disk_full_at(real_write, 2))
    with pytest.raises(OSError, match="No space left"):
        run_job(job, sample, manifest, out, partial)
    assert [p.name for p in partial.glob("batch-*.parquet")] == ["batch-00000.parquet"] and not out.exists()
    monkeypatch.setattr(runner, "write_table", real_write)
    run_job(job, sample, manifest, out, partial)
    meta = read_metadata(out)
    assert meta["resumed_batches"] == 1 and len(read_table(out)) == 4 and not partial.exists()


def test_cli_reads_utf8_config_under_ascii_locale(tmp_path, models_dir):
    """A hand-written UTF-8 job config (non-ASCII prompt) works under an ASCII locale; the log is UTF-8 too."""
    sample, manifest = make_inputs(tmp_path / "in", "pope", n=2)
    prompt = "Réponds à la question : {question}"
    cfg = job_config("llava_1_5", "llava", str(models_dir / "llava"), text_prompt=prompt, batch_size=2,
                     max_new_tokens=2)
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(cfg, ensure_ascii=False), encoding="utf-8")
    out, log = tmp_path / "out.parquet", tmp_path / "infer.log"
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0",
           "PYTHONIOENCODING": "ascii:backslashreplace", "PYTHONPATH": str(LIB)}
    proc = subprocess.run([sys.executable, "-m", "pii.inference.cli", "--config", str(cfg_path),
                           "--task", "pope", "--model", "llava_1_5", "--setting", "hybrid", "--sample", str(sample),
                           "--manifest", str(manifest), "--out", str(out), "--partial", str(tmp_path / ".p"),
                           "--log", str(log), "--threads", "1"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    df = read_table(out, "inference")
    assert df["text_prompt"][0] == prompt.replace("{question}", df["question"][0])
    assert "wrote" in log.read_text(encoding="utf-8")


# --- decoding repeats ----------------------------------------------------------------------------------------------


def test_repeat_seeds():
    assert repeat_seed(0, 0) == 0 and repeat_seed(123, 0) == 123     # repeat 0: the config seed itself
    seeds = [repeat_seed(0, r) for r in range(1, 100)] + [repeat_seed(1, r) for r in range(1, 100)]
    assert len(set(seeds)) == len(seeds) and all(0 <= s < 2**31 for s in seeds)
    assert repeat_seed(0, 1) == 1896983678                                 # pinned: a changed rule shows here
    with pytest.raises(PipelineError):
        repeat_seed(0, -1)


def test_repeat_zero_is_the_single_run_and_repeat_one_samples_anew(tmp_path, models_dir, loaded):
    """Sampling on: repeat 0 gives exactly the rows of a run without repeats (each request generated alone with seed
    config seed + its sorted position, as the infer stage has always done); repeat 1 uses its derived seed, gives
    other text, and is itself reproducible. Greedy: every repeat gives the same text."""
    sample, manifest = make_inputs(tmp_path / "in", "caption", n=4)
    cfg = job_config("llava_1_5", "llava", str(models_dir / "llava"), task="caption", setting="baseline",
                     batch_size=1, max_new_tokens=12, do_sample=True)

    def run(repeat, config=cfg, name=""):
        job = Job("caption", "llava_1_5", "baseline", config, repeat=repeat)
        return run_job(job, sample, manifest, tmp_path / f"r{repeat}{name}.parquet", tmp_path / f".p{repeat}{name}")

    r0, r1, r1_again = run(0), run(1), run(1, name="again")
    assert (r0["repeat"] == 0).all() and (r1["repeat"] == 1).all()
    lm = loaded["llava"]
    order = sorted(range(4), key=lambda i: (vlm.prompt_length(lm, r0["prompt"][i]), r0["sample_id"][i]))
    for position, i in enumerate(order):     # the single run's rule, computed here without the infer stage
        alone = vlm.generate(lm, [r0["prompt"][i]], [vlm.open_image(r0["image_path"][i])], 12, cfg["decoding"],
                             seed=position)[0]
        assert r0["seed"][i] == position and r0["response"][i] == alone["response"]
    assert sorted(r1["seed"]) == [repeat_seed(0, 1) + k for k in range(4)]
    assert (r0["response"] != r1["response"]).any()
    assert_frame_equal(r1, r1_again)
    meta = read_metadata(tmp_path / "r1.parquet")
    assert meta["repeat"] == 1 and meta["repeat_seed"] == repeat_seed(0, 1) and meta["seed"] == 0
    greedy = {**cfg, "decoding": GREEDY}
    g0, g1 = run(0, greedy, "greedy"), run(1, greedy, "greedy")
    assert list(g0["response"]) == list(g1["response"])


def test_checkpoints_are_per_repeat(tmp_path, caplog):
    """Each repeat has its own fingerprint: its checkpoints resume only the same repeat, and another repeat's
    checkpoints in the folder are discarded as stale."""
    job, reqs, _, _ = _requests(tmp_path, n=8)
    rep1 = Job("pope", "m", "hybrid", job.cfg, repeat=1)
    assert fingerprint(rep1, reqs) != fingerprint(job, reqs)
    partial = tmp_path / "partial_r1"
    first, _ = run_requests(rep1, reqs, FakeBackend(), partial)   # leaves 2 checkpoints
    backend = FakeBackend()
    resumed, facts = run_requests(rep1, reqs, backend, partial)
    assert facts["resumed_batches"] == 2 and backend.calls == []
    assert_frame_equal(first, resumed, check_dtypes=False)  # fresh rows vs rows read back
    base = repeat_seed(0, 1)
    assert set(resumed["seed"]) == {base, base + 4} and (resumed["repeat"] == 1).all()
    assert {int(r.split("@")[1]) for r in resumed["response"]} == {base, base + 4}
    backend = FakeBackend()
    with caplog.at_level(logging.INFO, logger="pii"):
        rows, facts = run_requests(job, reqs, backend, partial)    # repeat 0 in repeat 1's folder
    assert "discarded 2 stale checkpoint" in caplog.text and facts["resumed_batches"] == 0
    assert backend.calls == [4, 4] and set(rows["seed"]) == {0, 4} and (rows["repeat"] == 0).all()


def test_a_task_asks_the_questions_of_its_source_sample(tmp_path, models_dir):
    """transcribe reuses POPE's sample (tasks.transcribe.source): its job answers every POPE row under its own
    task name and prompt, and records how much of the strip the model saw; a sample without the source task's rows
    is an error, not an empty file."""
    sample, manifest = make_inputs(tmp_path / "in", "pope", n=3)
    cfg = job_config("llava_1_5", "llava", str(models_dir / "llava"), task="transcribe", setting="transcribe",
                     text_prompt="What is written in the white strip at the bottom of the image?")
    cfg["tasks.transcribe"].update(source="pope", settings=["transcribe"])
    out = tmp_path / "out.parquet"
    run_job(Job("transcribe", "llava_1_5", "transcribe", cfg), sample, manifest, out, tmp_path / ".p")
    rows = read_table(out, "inference")
    assert len(rows) == 3 and set(rows["task"]) == {"transcribe"}
    assert set(rows["text_prompt"]) == {"What is written in the white strip at the bottom of the image?"}
    # measured through the demo LLaVA's own processor (Family.strip_geometry); no threshold set: legibility null
    assert rows["photo_visible_fraction"].is_not_null().all() and rows["text_px_in_model"].is_not_null().all()
    assert rows["text_legible"].is_null().all()
    cfg["tasks.transcribe"]["source"] = "caption"
    with pytest.raises(PipelineError, match="no sampled row of task 'caption'"):
        run_job(Job("transcribe", "llava_1_5", "transcribe", cfg), sample, manifest,
                      tmp_path / "out2.parquet", tmp_path / ".p2")
    assert not (tmp_path / "out2.parquet").exists()


class NoRun(FakeBackend):
    """A backend that must not run: a unit copied from the cache generates nothing."""

    def run(self, chunk, seed):
        raise AssertionError(f"{len(chunk)} requests generated, which the cache holds")


def test_finished_units_are_kept_and_reused_only_when_unchanged(tmp_path, caplog):
    """An infer job reruns every unit of its model when anything in its params changes. A unit whose fingerprint
    (config that can change its rows, repeat, inputs, prompts) is unchanged is copied byte for byte from the cache
    without generating; a changed prompt, repeat or input image
    generates again and replaces the kept copy."""
    job, _, sample, manifest = _requests(tmp_path, n=6)
    cache, out = tmp_path / "cache" / "r0.parquet", tmp_path / "out" / "r0.parquet"
    first = run_job(job, sample, manifest, out, tmp_path / "p", backend=FakeBackend(), cache=cache)
    assert cache.read_bytes() == out.read_bytes()
    reqs = build_requests(read_table(sample), read_table(manifest), job)
    planned = [r.sample_id for _, chunk in plan_batches(reqs, FakeBackend().sort_key, job.batch_size)
               for r in chunk]  # the order requests run in: each one's seed is its position
    assert read_metadata(out)["fingerprint"] == fingerprint(job, reqs, [FakeBackend().prompt(r) for r in reqs],
                                                                  order=planned)
    before = out.read_bytes()
    out.unlink()  # Snakemake deletes a job's outputs before it reruns
    with caplog.at_level(logging.INFO, logger="pii"):
        again = run_job(job, sample, manifest, out, tmp_path / "p", cache=cache, backend=NoRun())
    assert out.read_bytes() == before and "unchanged, copied from" in caplog.text
    assert_frame_equal(first, again, check_dtypes=False)

    def regenerated(changed_job, manifest_path=manifest):
        backend = FakeBackend()
        out.unlink()
        run_job(changed_job, sample, manifest_path, out, tmp_path / "p", backend=backend, cache=cache)
        assert backend.calls, "a changed unit must be generated again"
        assert cache.read_bytes() == out.read_bytes()  # the kept copy follows the new rows

    prompt = {**job.cfg, "settings.hybrid": {"image": "question", "text_prompt": "Say: {question}"}}
    regenerated(Job("pope", "m", "hybrid", prompt))
    regenerated(Job("pope", "m", "hybrid", prompt, repeat=1))
    # an image rendered anew (another sha256 in the manifest) is another input
    from PIL import Image

    man = read_table(manifest)
    first_image = man["image_path"][0]
    Image.new("RGB", (32, 32), "red").save(first_image)
    man = man.with_columns(man["image_sha256"].scatter(0, sha256_file(first_image)))
    from pii.core.tables import write_table

    write_table(man, tmp_path / "manifest2.parquet", "manifest")
    regenerated(Job("pope", "m", "hybrid", prompt, repeat=1), tmp_path / "manifest2.parquet")
    # a corrupt kept copy is not trusted: generated again
    cache.write_bytes(b"not parquet")
    regenerated(Job("pope", "m", "hybrid", prompt, repeat=1), tmp_path / "manifest2.parquet")


class SeesText(FakeBackend):
    """Records a text height per request, as the backends that know the processor do."""

    def run(self, chunk, seed):
        return [{**row, "strip_visible_fraction": 1.0, "photo_visible_fraction": 1.0, "text_px_in_model": 4.0 + i}
                for i, row in enumerate(super().run(chunk, seed))]


def test_text_legible_follows_the_threshold_without_regenerating(tmp_path, caplog):
    """text_legible is text_px_in_model >= inference.legible_text_px; the threshold is no part of the fingerprint,
    so a kept unit is relabelled when it changes, and nothing is generated again."""
    job, reqs, sample, manifest = _requests(tmp_path, n=6)
    cache, out = tmp_path / "cache" / "r0.parquet", tmp_path / "out" / "r0.parquet"
    at = lambda px: Job("pope", "m", "hybrid", {**job.cfg, "inference": {**job.inference,  # noqa: E731
                                                                                "legible_text_px": px}})
    rows = run_job(at(6), sample, manifest, out, tmp_path / "p", backend=SeesText(), cache=cache)
    px = rows["text_px_in_model"].to_list()
    assert rows["text_legible"].to_list() == [v >= 6 for v in px] and len(set(px)) > 1
    prompts = [FakeBackend().prompt(r) for r in reqs]
    assert fingerprint(at(6), reqs, prompts) == fingerprint(at(9), reqs, prompts)
    out.unlink()
    with caplog.at_level(logging.INFO, logger="pii"):
        again = run_job(at(7.5), sample, manifest, out, tmp_path / "p", backend=NoRun(), cache=cache)
    assert "unchanged, copied from" in caplog.text
    for frame in (again, read_table(out, "inference"), read_table(cache, "inference")):
        assert frame["text_legible"].to_list() == [v >= 7.5 for v in frame["text_px_in_model"].to_list()]
    assert read_metadata(out)["fingerprint"] == read_metadata(cache)["fingerprint"]
    assert is_legible(None, 8) is None and is_legible(8.0, None) is None and is_legible(8.0, 8)


def test_a_kept_unit_is_checked_before_it_is_copied(tmp_path, caplog):
    """A kept unit with its metadata (fingerprint) intact but rows cut away or edited, or whose prompts the backend
    now builds differently, is generated again with a log line saying why; 4.0 and 4 are one key."""
    job, reqs, sample, manifest = _requests(tmp_path, n=6)
    cache, out = tmp_path / "cache" / "r0.parquet", tmp_path / "out" / "r0.parquet"
    run_job(job, sample, manifest, out, tmp_path / "p", backend=FakeBackend(), cache=cache)
    floats = Job("pope", "m", "hybrid", {**job.cfg, "inference": {**job.inference, "batch_size": 4.0}})
    prompts = [FakeBackend().prompt(r) for r in reqs]
    assert fingerprint(floats, reqs, prompts) == fingerprint(job, reqs, prompts)
    meta, rows = read_metadata(cache), read_table(cache, "inference")
    from pii.core.tables import write_table

    class OtherPrompt(FakeBackend):
        def prompt(self, req):
            return f"Q:{req.text_prompt}"

    for edit, why, backend in [(rows.head(4), "4 rows for 6 requests", FakeBackend()),
                               (rows.reverse(), "row 0 is sample", FakeBackend()),
                               (rows.with_columns(prompt=pl.lit("edited")), "prompt of sample", FakeBackend()),
                               (rows, "another fingerprint", OtherPrompt())]:
        write_table(edit, cache, "inference", metadata=meta, types=ARROW_TYPES)
        out.unlink()
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="pii"):
            run_job(job, sample, manifest, out, tmp_path / "p", backend=backend, cache=cache)
        assert backend.calls and why in caplog.text and "generating again" in caplog.text
        assert len(read_table(out, "inference")) == 6


def test_a_rewritten_local_checkpoint_is_not_taken_from_the_cache(tmp_path):
    """The fingerprint covers a local model folder's files by content (sha256): other bytes written in place make
    another key, the same bytes with another mtime (touch, tar, rsync) do not; a hub id (no folder) has no such
    part."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights v1")
    job, _, sample, manifest = _requests(tmp_path, n=4)
    job = Job("pope", "m", "hybrid", {**job.cfg, "models.m": {**job.entry, "path": str(folder)}})
    reqs = build_requests(read_table(sample), read_table(manifest), job)
    before = fingerprint(job, reqs)
    assert fingerprint(job, reqs) == before
    os.utime(folder / "model.safetensors", ns=(1, 1))  # the same bytes, another mtime
    assert fingerprint(job, reqs) == before
    (folder / "model.safetensors").write_bytes(b"weights v2")  # new bytes (and a new mtime)
    assert fingerprint(job, reqs) != before
    assert model_files("owner/name") is None
