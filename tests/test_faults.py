"""Faults: interruptions (SIGKILL, Ctrl-C), bad inputs and random config mutations.

Every bad input must end in ONE line naming the file, row or key and what to do, and leave no output behind.
Script-level tests call the stage functions (fast); a few Snakemake-level tests run the CLI on a copy of the
session's demo run to show that the line reaches the user and that Snakemake leaves no output file.
docs/faults.md lists every fault tried here and elsewhere in the suite.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import polars as pl
import pytest
import yaml
from conftest import ROOT, config_paths, planned_rules, run_snakemake
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from inference_fixtures import job_config, make_inputs
from PIL import Image

from pii.core.stage import PipelineError
from pii.core.tables import read_table
from pii.data import sampling
from pii.inference import openai_backend
from pii.inference.job import Job, build_requests
from pii.inference.runner import run_job
from pii.render import variants
from pii.scoring import chair_mentions

RENDER_CFG = {"font": "arimo", "font_size": 26, "strip_fraction": 0.05, "padding": 8, "line_spacing": 1.2}


def one_line(err: BaseException | str) -> str:
    text = str(err)
    assert text and "\n" not in text, f"not a single line: {text!r}"
    return text


# --- bad inputs, script level ------------------------------------------------------------------------------

GOOD_POPE = [{"question_id": 1, "image": "COCO_val2014_000000000001.jpg", "text": "Is there a dog in the image?",
              "label": "yes"},
             {"question_id": 2, "image": "COCO_val2014_000000000001.jpg", "text": "Is there a cat in the image?",
              "label": "no"}]


@pytest.mark.parametrize("bad_line, expected", [
    ('{"question_id": 3, "image": "x.jpg", "text": "Is', r"pope\.jsonl:2: not valid JSON .*fix or delete the line"),
    ('{"question_id": 1, "image": "COCO_val2014_000000000002.jpg", "text": "q", "label": "no"}',
     r"pope\.jsonl:2: question_id 1 already used on line 1; question ids must be unique"),
    ('{"question_id": 3, "image": "COCO_val2014_000000000002.jpg", "text": "q", "label": "maybe"}',
     r"pope\.jsonl:2: label 'maybe' is not 'yes' or 'no'; fix the line"),
    ('{"question_id": 3, "image": "COCO_val2014_000000000002.jpg", "text": "q"}',
     r"pope\.jsonl:2: a POPE line needs the keys"),
    ('{"question_id": 3, "image": "COCO_val2014_000000000002.jpg", "text": "  ", "label": "no"}',
     r"pope\.jsonl:2: the question text is empty; fix or delete the line"),
])
def test_bad_pope_line_names_file_and_line(tmp_path, bad_line, expected):
    path = tmp_path / "pope.jsonl"
    path.write_text(json.dumps(GOOD_POPE[0]) + "\n" + bad_line + "\n" + json.dumps(GOOD_POPE[1]) + "\n")
    with pytest.raises(PipelineError, match=expected) as err:
        sampling.read_pope(path)
    one_line(err.value)


def test_pope_file_with_byte_order_mark_reads(tmp_path):
    """Some editors save UTF-8 with a byte order mark; it is not part of the first line's JSON."""
    path = tmp_path / "pope.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\n" for r in GOOD_POPE).encode())
    assert list(sampling.read_pope(path)["question_id"]) == [1, 2]


def test_missing_image_names_it_and_says_what_to_do(tmp_path):
    coco = {"root": str(tmp_path / "coco"), "download": False, "image_url": None}
    with pytest.raises(PipelineError) as err:
        sampling.resolve_image(coco, "COCO_val2014_000000000042.jpg", 42)
    text = one_line(err.value)
    assert "COCO_val2014_000000000042.jpg (id 42) not found under" in text and "data.coco.download: true" in text


def _jpeg(path: Path, size=(120, 90), color=(200, 30, 30)) -> Path:
    Image.new("RGB", size, color).save(path, quality=90)
    return path


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("variant", ["original", "question"])
def test_corrupt_jpeg_fails_render_with_no_output(tmp_path, variant):
    images = [_jpeg(tmp_path / f"{i}.jpg") for i in range(3)]
    _truncate(images[1])
    samples = pl.DataFrame({"sample_id": [f"pope-{i}" for i in range(3)], "image_id": [1, 2, 3],
                            "image_path": [str(p) for p in images], "question": ["Is there a dog in the image?"] * 3})
    manifest = tmp_path / "out" / f"{variant}.parquet"
    with pytest.raises(PipelineError) as err:
        variants.render_variant(samples, variant, manifest, RENDER_CFG, task="pope")
    text = one_line(err.value)
    assert f"sample pope-1: source image '{images[1]}' is corrupt" in text and "rerun the data stage" in text
    assert not manifest.exists()
    # the PNG already rendered for pope-0 is removed again: no image without a manifest row
    assert not list((tmp_path / "out").rglob("*.png")) and not list((tmp_path / "out").rglob("*.part"))


def test_missing_source_image_fails_render(tmp_path):
    samples = pl.DataFrame({"sample_id": ["caption-7"], "image_id": [7], "image_path": [str(tmp_path / "gone.jpg")],
                            "question": ["Describe this image in detail."]})
    with pytest.raises(PipelineError, match=r"sample caption-7: source image '.*gone\.jpg' is missing") as err:
        variants.render_variant(samples, "original", tmp_path / "original.parquet", RENDER_CFG)
    one_line(err.value)
    assert not (tmp_path / "original.parquet").exists()


def test_chair_annotations_missing_a_captioned_image():
    """The meaningful case: a caption was generated for an image the COCO annotations do not describe (wrong split
    or a cut-down annotation file); CHAIR would count every object as hallucinated, so it refuses instead."""
    vocab = chair_mentions.Vocabulary.load()
    instances = {"images": [{"id": 1}], "annotations": [{"image_id": 1, "category_id": 18}],
                 "categories": [{"id": 18, "name": "dog"}]}
    captions = {"images": [{"id": 1}], "annotations": [{"image_id": 1, "caption": "A dog on grass."}]}
    assert chair_mentions.ground_truth(vocab, instances, captions, [1]) == {1: {"dog"}}
    with pytest.raises(chair_mentions.ChairError) as err:
        chair_mentions.ground_truth(vocab, instances, captions, [1, 99], "instances_val2017.json", "captions_val2017.json")
    text = one_line(err.value)
    assert "instances_val2017.json / captions_val2017.json: image id(s) [99] not annotated" in text


def test_sampling_caption_from_annotations_without_images(tmp_path):
    bad = tmp_path / "instances_val2017.json"
    bad.write_text(json.dumps({"annotations": []}))
    with pytest.raises(PipelineError, match=r"instances_val2017\.json: not a COCO instances file") as err:
        sampling.sample_caption_images(bad, 2, 0)
    one_line(err.value)


class SlowOr500(BaseHTTPRequestHandler):
    """A server that either never answers in time or always answers 500."""

    mode = "slow"
    hits = 0

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).hits += 1
        if type(self).mode == "slow":
            time.sleep(1.5)
        raw = b'{"error": "boom"}'
        self.send_response(500)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        try:
            self.wfile.write(raw)
        except OSError:  # the client gave up already
            pass

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("mode, expected", [("slow", r"failed after 1 retries \(ReadTimeout"),
                                            ("500", r"failed after 1 retries \(HTTP 500")])
def test_openai_timeout_and_500_retried_then_one_line(tmp_path, mode, expected):
    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowOr500)
    SlowOr500.mode, SlowOr500.hits = mode, 0
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        sample_path, manifest = make_inputs(tmp_path, "pope", n=1)
        cfg = job_config("llava_1_5", "llava", "demo/llava", backend="openai",
                         openai={"base_url": f"http://127.0.0.1:{server.server_address[1]}/v1",
                                 "api_key_env": "PII_TEST_NO_KEY", "concurrency": 1, "max_retries": 1,
                                 "timeout_s": 0.3})
        job = Job("pope", "llava_1_5", "hybrid", cfg)
        req = build_requests(read_table(sample_path), read_table(manifest), job)[0]
        backend = openai_backend.OpenAIBackend(job, backoff_s=0.01)
        with pytest.raises(PipelineError, match=expected) as err:
            backend.run([req], seed=0)
        text = one_line(err.value)
        assert "request for pope-0" in text and "raise inference.openai.max_retries / timeout_s" in text
        assert SlowOr500.hits == 2  # the first try and one retry
    finally:
        server.shutdown()
        server.server_close()


def test_openai_failure_leaves_no_inference_file(tmp_path):
    """A server that fails the job: run_job ends with the one line and writes no output (checkpoints stay)."""
    sample_path, manifest = make_inputs(tmp_path, "pope", n=2)
    cfg = job_config("llava_1_5", "llava", "demo/llava", backend="openai",
                     openai={"base_url": "http://127.0.0.1:9/v1", "api_key_env": "PII_TEST_NO_KEY",
                             "concurrency": 1, "max_retries": 0, "timeout_s": 0.5})
    job = Job("pope", "llava_1_5", "hybrid", cfg)
    out = tmp_path / "out.parquet"
    with pytest.raises(PipelineError, match=r"failed after 0 retries \(ConnectError") as err:
        run_job(job, sample_path, manifest, out, tmp_path / ".partial")
    one_line(err.value)
    assert not out.exists() and not list(tmp_path.glob(".out.parquet.*"))


# --- Snakemake level: a copy of the session's demo run ---------------------------------------------------------


# Runs on a copy decide what to redo by file times only: what a test changes (and nothing an edit of the code
# since the demo run might flag) is redone. tests/test_reruns.py tests the other triggers.
ON_COPY = "--rerun-triggers=mtime"


def copy_run(demo_run: Path, dest: Path) -> Path:
    """The demo run with its .snakemake metadata (mtimes kept), so only what a test changes reruns."""
    shutil.copytree(demo_run, dest, symlinks=True, ignore=shutil.ignore_patterns("locks"))
    return dest


def error_lines(proc: subprocess.CompletedProcess, needle: str) -> list[str]:
    return [line for line in (proc.stdout + proc.stderr).splitlines() if needle in line]


def test_dag_malformed_pope_line(demo_run, tmp_path):
    """A user's POPE file (data.pope.file, as for the real data) with a cut line 5."""
    work = copy_run(demo_run, tmp_path / "w")
    lines = (work / "results/pope_built/coco_pope_adversarial.json").read_text().splitlines()
    lines[4] = lines[4][:-7]  # cut the line's end: not JSON any more
    (work / "user").mkdir()
    (work / "user/pope.jsonl").write_text("\n".join(lines) + "\n")
    demo = yaml.safe_load((ROOT / "config.demo.yaml").read_text())
    demo["data"]["pope"]["file"] = "user/pope.jsonl"
    override = tmp_path / "pope.yaml"
    override.write_text(yaml.safe_dump(demo))
    proc = run_snakemake(work, "results/data/pope_sample.parquet", ON_COPY, f"--configfile={override}", configfile=None,
                         check=False, timeout=300)
    assert proc.returncode != 0
    expected = "user/pope.jsonl:5: not valid JSON"
    assert len(error_lines(proc, expected)) >= 1, proc.stderr[-3000:]
    log = (work / "logs/data/sample_pope.log").read_text()
    assert expected in log and "Traceback" not in log
    assert not (work / "results/data/pope_sample.parquet").exists()
    assert not (work / "results/data/pope_sample_ids.txt").exists()
    assert not list((work / "results/data").glob(".*.part"))


def test_dag_truncated_jpeg(demo_run, tmp_path):
    work = copy_run(demo_run, tmp_path / "w")
    samples = read_table(work / "results/data/pope_sample.parquet")
    victim = Path(samples["image_path"][3])
    victim = victim if victim.is_absolute() else work / victim
    _truncate(victim)
    target = "results/images/pope/original.parquet"
    proc = run_snakemake(work, target, ON_COPY, f"--forcerun={target}", check=False, timeout=300)
    assert proc.returncode != 0
    sid = samples["sample_id"][3]
    lines = error_lines(proc, f"sample {sid}: source image")
    assert lines and "is corrupt or not an image" in lines[0], proc.stderr[-3000:]
    log = (work / "logs/render/pope/original.log").read_text()
    assert f"sample {sid}: source image" in log and "Traceback" not in log
    assert not (work / target).exists()


@pytest.mark.parametrize("mutation, expected", [
    ({"family": "gpt9"}, "Config error: models.llava_1_5.family: 'gpt9' is not one of"),
    ({"path": "./no/such/checkpoint"}, "Config error: models.llava_1_5.path: local folder './no/such/checkpoint' "
                                       "does not exist"),
])
def test_dag_bad_model_entry_is_one_config_line(tmp_path, mutation, expected):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump({"models": {"llava_1_5": mutation}}))
    proc = run_snakemake(tmp_path, "-n", f"--configfile={cfg}", configfile=None, check=False, timeout=120)
    assert proc.returncode != 0
    lines = error_lines(proc, "Config error:")
    assert len(lines) == 1 and lines[0].startswith(expected), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("override, expected", [
    ("decoding:\n  temperature: .nan\n", "Config error: decoding.temperature: nan is not a number a run can use"),
    ("inference:\n  batch_size: .inf\n", "Config error: inference.batch_size: inf is not a number a run can use"),
    ("decoding:\n  do_sample: true\n  temperature: 0\n",
     "Config error: decoding.temperature: 0 with do_sample: true. For greedy decoding write do_sample: false"),
    ("decoding:\n  temperature: null\n", "Config error: decoding.temperature: None should be of type number"),
    ("inference:\n  batch_size: 2000\n", "Config error: inference.batch_size: 2000 is greater than the maximum of 1024"),
])
def test_dag_config_values_that_cannot_work_stop_at_the_start(tmp_path, override, expected):
    """YAML's .nan and .inf pass every schema bound; temperature 0 is greedy written wrongly; a batch of 2,000
    would run out of memory hours in."""
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(override)
    proc = run_snakemake(tmp_path, "-n", f"--configfile={cfg}", check=False, timeout=120)
    assert proc.returncode != 0
    lines = error_lines(proc, "Config error:")
    assert len(lines) == 1 and lines[0].startswith(expected), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_dag_greedy_decoding_needs_no_temperature(tmp_path):
    """do_sample: false with config.yaml's temperature unset (null); sampling without one is an error above."""
    cfg = tmp_path / "greedy.yaml"
    cfg.write_text("decoding:\n  do_sample: false\n  temperature: null\n")
    run_snakemake(tmp_path, "-n", f"--configfile={cfg}", timeout=120)


# --- interruptions -------------------------------------------------------------------------------------------------


def snakemake_cmd(work: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), f"--directory={work}", "--cores=2",
            "--quiet=rules", f"--configfile={ROOT / 'config.demo.yaml'}", ON_COPY, *args]


def interrupt_when(cmd: list[str], ready, sig: int, timeout: float = 240) -> None:
    """Start Snakemake in its own process group, wait until ``ready()``, then send ``sig`` to the whole group
    (what a terminal's Ctrl-C or an OOM killer / scheduler does) and wait for it to end."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert proc.poll() is None, "snakemake ended before the interruption point"
            assert time.monotonic() < deadline, "interruption point not reached in time"
            time.sleep(0.01)
        os.killpg(proc.pid, sig)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    time.sleep(0.5)  # let the group's last processes go


def verify_png(path: Path) -> None:
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        im.load()


def test_sigkill_during_render_leaves_no_truncated_png(demo_run, tmp_path):
    work = copy_run(demo_run, tmp_path / "w")
    target = "results/images/pope/question.parquet"
    folder = work / "results/images/pope/question"
    shutil.rmtree(folder)
    (work / target).unlink()
    n_samples = len(read_table(work / "results/data/pope_sample.parquet"))

    interrupt_when(snakemake_cmd(work, target), lambda: len(list(folder.glob("*.png"))) >= 3, signal.SIGKILL)
    assert not (work / target).exists(), "the render job finished before the kill: nothing was tested"
    pngs = sorted(folder.glob("*.png"))
    assert 3 <= len(pngs) < n_samples
    for png in pngs:  # every PNG that exists is complete (written under a temporary name, then renamed)
        verify_png(png)

    # a killed Snakemake leaves its lock: the next run says how to remove it
    locked = run_snakemake(work, target, ON_COPY, "--rerun-incomplete", check=False, timeout=120)
    assert locked.returncode != 0 and "--unlock" in locked.stderr
    run_snakemake(work, target, "--unlock", timeout=120)
    run_snakemake(work, target, ON_COPY, "--rerun-incomplete", timeout=300)
    manifest = read_table(work / target, "manifest")
    assert len(manifest) == n_samples and not manifest["sample_id"].is_duplicated().any()
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{s}.png" for s in manifest["sample_id"])
    for row in manifest.iter_rows(named=True):
        path = Path(row["image_path"])
        path = path if path.is_absolute() else work / path
        verify_png(path)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == row["image_sha256"]


def _cheapest_infer(demo_run: Path) -> str:
    """The first output (POPE, baseline) of the demo model whose repeat-0 inference job ran fastest."""
    times = {tsv.parent.name: float(pl.read_csv(tsv, separator="\t")["s"][0])
             for tsv in (demo_run / "results/benchmarks/infer").glob("*/r0.tsv")}
    return f"results/inference/pope/{min(times, key=times.get)}/baseline/r0.parquet"


def test_ctrl_c_during_infer_then_rerun_completes(demo_run, tmp_path):
    """Ctrl-C (SIGINT to the process group) of Snakemake while an infer job has checkpointed some batches, the
    task's render manifests redone in the same run: the rerun completes, resumes from the checkpoints and has
    every sample once. (SIGKILL of the infer script itself: tests/test_inference.py::test_resume_after_sigkill.)"""
    work = copy_run(demo_run, tmp_path / "w")
    infer_target = _cheapest_infer(demo_run)
    manifests = [f"results/images/pope/{v}.parquet" for v in ("original", "control", "question")]
    task, model, setting, repeat = Path(infer_target).with_suffix("").parts[-4:]
    # without its kept copy the job's first unit is generated again (the model's other units are copied)
    for path in [infer_target, *manifests, f"results/inference/.cache/{task}/{model}/{setting}/{repeat}.parquet"]:
        (work / path).unlink()
    partial = work / "results/inference/.partial" / task / model / setting / repeat

    interrupt_when(snakemake_cmd(work, infer_target, *manifests),
                   lambda: len(list(partial.glob("batch-*.parquet"))) >= 2, signal.SIGINT)
    assert not (work / infer_target).exists(), "the infer job finished before the interruption"
    n_done = len(list(partial.glob("batch-*.parquet")))
    assert n_done >= 2

    run_snakemake(work, infer_target, *manifests, ON_COPY, "--rerun-incomplete", timeout=600)
    log = (work / "logs/inference" / model / f"{repeat}.log").read_text(encoding="utf-8")
    assert "resuming:" in log
    df = read_table(work / infer_target, "inference")
    expected = read_table(work / "results/data/pope_sample.parquet")["sample_id"]
    assert sorted(df["sample_id"]) == sorted(expected) and not df["sample_id"].is_duplicated().any()
    assert not partial.exists()
    for path in manifests:
        assert len(read_table(work / path, "manifest")) == len(expected)


# --- what a week-long run needs: retried logs, GPU waits, read-only folders, a user's model folder -----------------


def demo_with(path: Path, over: dict) -> Path:
    """config.demo.yaml with ``over`` merged in, as one file: a second --configfile would replace the first."""
    from conftest import merge_configs

    demo = yaml.safe_load((ROOT / "config.demo.yaml").read_text(encoding="utf-8"))
    path.write_text(yaml.safe_dump(merge_configs(demo, over)), encoding="utf-8")
    return path


def test_dag_retried_job_keeps_the_first_attempts_log(demo_run, tmp_path):
    """The workstation profile retries a failed job once, and Snakemake deletes the log before the retry: the
    first attempt's log is kept beside it, and the new log says where."""
    work = copy_run(demo_run, tmp_path / "w")
    samples = read_table(work / "results/data/pope_sample.parquet")
    victim = Path(samples["image_path"][3])
    _truncate(victim if victim.is_absolute() else work / victim)
    target = "results/images/pope/original.parquet"
    proc = run_snakemake(work, target, ON_COPY, f"--forcerun={target}", "--retries=1", check=False, timeout=300)
    assert proc.returncode != 0
    logs = work / "logs/render/pope"
    current = logs / "original.log"
    kept = sorted(logs.glob("original.unfinished-*.log"))
    assert len(kept) == 2, sorted(p.name for p in logs.iterdir())  # neither attempt finished
    first = next(p for p in kept if not p.samefile(current))  # the other one is the second attempt's own log
    first, second = first.read_text(encoding="utf-8"), current.read_text(encoding="utf-8")
    needle = f"sample {samples['sample_id'][3]}: source image"
    assert needle in first and needle in second
    assert "earlier attempts of this job did not finish; their logs: logs/render/pope/original.unfinished-" in second


def test_dag_gpu_job_waits_for_a_taken_device_and_says_so(demo_run, tmp_path):
    """Another job (here: the test) holds the only visible GPU's lock: the infer job logs that it waits, then
    takes the device when it is freed and finishes."""
    from pii.core import gpu_slot

    work = copy_run(demo_run, tmp_path / "w")
    locks = tmp_path / "locks"
    holder = gpu_slot.try_lock("0", locks)
    target = "results/inference/pope/llava_1_5/baseline/r0.parquet"
    log = work / "logs/inference/llava_1_5/r0.log"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "0", gpu_slot.LOCK_DIR_ENV: str(locks), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(snakemake_cmd(work, target, f"--forcerun={target}"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while "are taken by other jobs" not in (log.read_text(encoding="utf-8") if log.exists() else ""):
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "the job never said it waits"
            time.sleep(0.2)
        time.sleep(2.5)  # still waiting, not failing
        assert proc.poll() is None
        holder.release()
        assert proc.wait(timeout=600) == 0, proc.stderr.read()[-3000:]
    finally:
        holder.release()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text(encoding="utf-8")
    assert "gpu_slot: all 1 visible GPU(s) ['0'] are taken by other jobs" in text
    assert "gpu_slot: using GPU 0" in text and "after waiting" in text
    assert not list(log.parent.glob("r0.unfinished-*")), "a finished job keeps no second log"


def test_dag_a_kept_unit_with_rows_cut_away_is_generated_again(demo_run, tmp_path):
    """A kept unit in the cache whose rows were cut (metadata kept) is not copied: the rerun generates it again,
    says why, copies the model's other units, and its output answers the whole sample."""
    import pyarrow.parquet as pq

    work = copy_run(demo_run, tmp_path / "w")
    unit = "pope/llava_1_5/baseline/r0.parquet"
    kept = work / "results/inference/.cache" / unit
    table = pq.read_table(kept)
    pq.write_table(table.slice(0, table.num_rows // 2), kept)  # the schema's metadata (the fingerprint) kept
    target = f"results/inference/{unit}"
    run_snakemake(work, target, ON_COPY, f"--forcerun={target}", timeout=600)
    log = (work / "logs/inference/llava_1_5/r0.log").read_text(encoding="utf-8")
    assert (f"pope / llava_1_5 / baseline, repeat 0: kept copy results/inference/.cache/{unit} not used "
            f"({table.num_rows // 2} rows for {table.num_rows} requests); generating again") in log
    assert log.count("unchanged, copied from") == len(list((work / "results/inference").glob("*/llava_1_5/*/r0.parquet"))) - 1
    assert len(read_table(work / target, "inference")) == table.num_rows


def test_dag_scoring_refuses_an_inference_file_that_lost_rows(demo_run, tmp_path):
    work = copy_run(demo_run, tmp_path / "w")
    path = work / "results/inference/pope/llava_1_5/baseline/r0.parquet"
    rows = read_table(path, "inference")
    from pii.core.tables import read_metadata, write_table

    write_table(rows.slice(1), path, "inference", metadata=read_metadata(path))
    target = "results/scores/pope_metrics.parquet"
    proc = run_snakemake(work, target, ON_COPY, check=False, timeout=600)
    assert proc.returncode != 0
    lines = error_lines(proc, "results/inference/pope/llava_1_5/baseline/r0.parquet: its rows do not match")
    assert lines and f"({rows['sample_id'][0]})" in lines[0] and "rerun inference for it" in lines[0], proc.stderr[-3000:]
    assert not (work / target).exists()


class ErrorBody(BaseHTTPRequestHandler):
    """An OpenAI-compatible server that answers every request HTTP 200 with an error object, as some do when
    overloaded."""

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        body = json.dumps({"error": {"message": "model overloaded", "code": 503}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_dag_openai_server_fault_is_never_an_answer(demo_run, tmp_path):
    """Through Snakemake: a server answering 200 with an error object is retried, then the job stops with one
    line naming the URL and what came back; no inference file, no empty answers."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), ErrorBody)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        work = copy_run(demo_run, tmp_path / "w")
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        config = demo_with(tmp_path / "openai.yaml", {"inference": {"backend": "openai", "openai": {
            "base_url": url, "api_key_env": "PII_TEST_NO_KEY", "concurrency": 1, "max_retries": 1, "timeout_s": 5}}})
        target = "results/inference/pope/llava_1_5/baseline/r0.parquet"
        proc = run_snakemake(work, target, ON_COPY, f"--configfile={config}", f"--forcerun={target}", check=False,
                             configfile=None, timeout=300)
    finally:
        server.shutdown()
        server.server_close()
    assert proc.returncode != 0
    lines = error_lines(proc, f"{url}/chat/completions: request for")
    assert lines and "failed after 1 retries (HTTP 200 but an error object" in lines[0], proc.stderr[-3000:]
    assert "model overloaded" in lines[0]
    assert not (work / target).exists()


@pytest.fixture
def read_only(tmp_path):
    """Remount folders read-only (a bind mount): file permissions do not stop root, who runs CI; a read-only
    mount stops everyone, as on an archive or network share."""
    mounted = []

    def make(folder: Path) -> None:
        for cmd in (["mount", "--bind", str(folder), str(folder)],
                    ["mount", "-o", "remount,ro,bind", str(folder)]):
            if subprocess.run(cmd, capture_output=True).returncode != 0:
                if mounted or cmd[1] != "--bind":
                    subprocess.run(["umount", str(folder)], capture_output=True)
                pytest.skip("needs a read-only bind mount (root on Linux)")
        mounted.append(folder)

    yield make
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=True)


def test_dag_read_only_unit_cache_stops_before_any_work(demo_run, tmp_path, read_only):
    """A read-only results/inference/.cache would fail only when the job saves hours of results: it is one line
    naming the folder before the model is loaded."""
    work = copy_run(demo_run, tmp_path / "w")
    read_only(work / "results/inference/.cache")
    target = "results/inference/pope/llava_1_5/baseline/r0.parquet"
    proc = run_snakemake(work, target, ON_COPY, f"--forcerun={target}", check=False, timeout=300)
    assert proc.returncode != 0
    lines = error_lines(proc, "results/inference/.cache/ is not writable (Read-only file system)")
    assert lines and "make it writable" in lines[0], proc.stderr[-3000:]
    log = (work / "logs/inference/llava_1_5/r0.log").read_text(encoding="utf-8")
    assert log.count("ERROR") == 1 and "Traceback" not in log and "loading llava_1_5" not in log, log


def test_dag_users_model_folder_is_an_input_and_a_touch_copies_every_unit(demo_run, tmp_path):
    """models.<m>.path naming a user's folder: its files are the job's inputs (never outputs). Moving the
    checkpoint there (and writing batch_size 4 as 4.0) keeps every unit (the key is the files' content and the
    normalised config), and a touched weight file reruns the job, which copies every unit again."""
    work = copy_run(demo_run, tmp_path / "w")
    # copied with new file times: a checkpoint the user has just put there
    shutil.copytree(work / "resources/demo/models/llava", work / "user/llava", copy_function=shutil.copyfile)
    # batch_size 4.0 for the demo's 4: YAML's float is the same key
    config = demo_with(tmp_path / "user_model.yaml", {"models": {"llava_1_5": {"path": "user/llava"}},
                                                       "inference": {"batch_size": 4.0}})
    target = "results/inference/pope/llava_1_5/baseline/r0.parquet"
    log = work / "logs/inference/llava_1_5/r0.log"

    def run_copies_all() -> int:
        run_snakemake(work, target, ON_COPY, f"--configfile={config}", configfile=None, timeout=600)
        text = log.read_text(encoding="utf-8")
        assert "loading llava_1_5" not in text, text  # no unit needed the model
        return text.count("unchanged, copied from")

    units = len(list((work / "results/inference").glob("*/llava_1_5/*/r0.parquet")))
    assert run_copies_all() == units
    weights = next((work / "user/llava").glob("*.safetensors"))
    os.utime(weights)  # same bytes, a new time
    dry = run_snakemake(work, target, ON_COPY, f"--configfile={config}", "-n", "--quiet=progress", configfile=None,
                        timeout=300)
    assert planned_rules(dry.stdout) == ["infer"] and "Updated input files: user/llava/" in dry.stdout, dry.stdout
    assert run_copies_all() == units
    assert (work / "user/llava").is_dir() and weights.read_bytes() == (
        work / "resources/demo/models/llava" / weights.name).read_bytes()


# --- config fuzzing through the CLI ----------------------------------------------------------------------------


with open(ROOT / "config.yaml") as _f:
    BASE_CONFIG = yaml.safe_load(_f)
CONFIG_PATHS = [p for p in config_paths(BASE_CONFIG) if all(isinstance(part, str) for part in p)]
JUNK = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**4), st.floats(-1e3, 1e3),
                 st.text(alphabet="abc{}/._- ", max_size=8), st.lists(st.integers(0, 3), max_size=2))


def _nest(path, value):
    node = value
    for part in reversed(path):
        node = {part: node}
    return node


@settings(max_examples=8, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(path=st.sampled_from(CONFIG_PATHS), value=JUNK)
def test_cli_on_mutated_config_never_tracebacks(tmp_path_factory, path, value):
    """A dry run on config.yaml with one value replaced: the run plans fine or ends in ONE 'Config error:' line."""
    work = tmp_path_factory.mktemp("fuzz")
    override = work / "override.yaml"
    override.write_text(yaml.safe_dump(_nest(path, copy.deepcopy(value))))
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores=1", "--quiet=all", "-s", str(ROOT / "Snakefile"),
         f"--directory={work}", f"--configfile={override}"],
        capture_output=True, text=True, timeout=120,
    )
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output, f"{path} = {value!r}:\n{output[-3000:]}"
    if proc.returncode != 0:
        errors = [line for line in output.splitlines() if line.startswith("Config error:")]
        assert len(errors) == 1, f"{path} = {value!r}: exit {proc.returncode} without one config line:\n{output[-3000:]}"
