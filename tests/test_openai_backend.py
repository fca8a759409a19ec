"""The openai backend: request shape, retries with backoff, and a live run against `transformers serve`."""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import demo_models
import infer
import openai_backend
import pytest
from conftest import free_port, stop_process, wait_for_port
from inference_fixtures import job_config, make_inputs
from pipeline_io import PipelineError, log, read_metadata, read_table, setup_logging


def _job(base_url, retries=3, setting_text="{question}", model_path="demo/llava"):
    cfg = job_config("llava_1_5", "llava", model_path, backend="openai", batch_size=2, text_prompt=setting_text,
                     openai={"base_url": base_url, "api_key_env": "PII_TEST_NO_KEY", "concurrency": 2,
                             "max_retries": retries, "timeout_s": 20})
    return infer.Job("pope", "llava_1_5", "hybrid", cfg)


class Scripted(BaseHTTPRequestHandler):
    """Answers POSTs from a script of (status, content) and records the bodies."""

    script: list = []
    bodies: list = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).bodies.append(body)
        status, content = type(self).script.pop(0) if type(self).script else (200, "Yes")
        payload = {"error": "boom"} if status != 200 else {
            "choices": [{"message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 1}}
        raw = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args):
        pass


@pytest.fixture
def scripted():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    Scripted.script, Scripted.bodies = [], []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_retries_500_twice_then_succeeds(tmp_path, scripted):
    sample, manifest = make_inputs(tmp_path, "pope", n=1)
    job = _job(scripted)
    req = infer.build_requests(read_table(sample), read_table(manifest), job)[0]
    Scripted.script = [(500, ""), (503, ""), (200, "Yes, there is.")]
    backend = openai_backend.OpenAIBackend(job, backoff_s=0.01)
    row = backend.run([req], seed=7)[0]
    assert row["response"] == "Yes, there is." and row["finish_reason"] == "stop" and row["seed"] == 7
    assert len(Scripted.bodies) == 3
    body = Scripted.bodies[-1]
    assert body["model"] == "demo/llava" and body["seed"] == 7 and body["max_tokens"] == 6
    content = body["messages"][0]["content"]
    assert content[0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert content[1] == {"type": "text", "text": req.text_prompt}


def test_gives_up_after_max_retries_and_fails_fast_on_4xx(tmp_path, scripted):
    sample, manifest = make_inputs(tmp_path, "pope", n=1)
    job = _job(scripted, retries=2)
    req = infer.build_requests(read_table(sample), read_table(manifest), job)[0]
    backend = openai_backend.OpenAIBackend(job, backoff_s=0.01)
    Scripted.script = [(429, "")] * 3
    with pytest.raises(PipelineError, match=r"failed after 2 retries \(HTTP 429") as err:
        backend.run([req], seed=0)
    assert "\n" not in str(err.value) and len(Scripted.bodies) == 3
    Scripted.script = [(404, "")]
    with pytest.raises(PipelineError, match="rejected .HTTP 404"):
        backend.run([req], seed=0)
    assert len(Scripted.bodies) == 4


def test_no_text_turn_and_empty_answer_flagged(tmp_path, scripted):
    sample, manifest = make_inputs(tmp_path, "pope", n=1)
    job = _job(scripted, setting_text=None)
    req = infer.build_requests(read_table(sample), read_table(manifest), job)[0]
    Scripted.script = [(200, "  ")]
    backend = openai_backend.OpenAIBackend(job, backoff_s=0.01)
    row = backend.run([req], seed=0)[0]
    assert row["finish_reason"] == "error" and backend.n_empty == 1
    assert [c["type"] for c in Scripted.bodies[0]["messages"][0]["content"]] == ["image_url"]
    recorded = json.loads(backend.prompt(req))
    assert recorded[0]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,<")


def test_missing_base_url_names_the_key(monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(PipelineError, match=r"^inference\.openai\.base_url"):
        openai_backend.resolve_base_url({"base_url": None})


def test_live_transformers_serve(tmp_path):
    """The whole job through a real OpenAI-compatible server (`transformers serve`) serving a demo folder.
    llava is served: Qwen's processor needs torchvision, which `transformers serve` loads unconditionally."""
    model_dir = demo_models.build("llava", tmp_path / "llava", seed=0)
    port = free_port()
    exe = Path(sys.executable).with_name("transformers")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    server = subprocess.Popen([str(exe), "serve", str(model_dir), "--host", "127.0.0.1", "--port", str(port),
                               "--device", "cpu"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, server, timeout=120, name="transformers serve")
        sample, manifest = make_inputs(tmp_path / "in", "pope", n=4)
        job = _job(f"http://127.0.0.1:{port}/v1", model_path=str(model_dir))
        df = infer.run_job(job, sample, manifest, tmp_path / "out.parquet", tmp_path / ".partial")
    finally:
        stop_process(server)
    assert len(df) == 4 and (df["n_prompt_tokens"] > 0).all() and (df["n_response_tokens"] > 0).all()
    assert df["response"].str.len().gt(0).all() and set(df["finish_reason"]) <= {"stop", "length"}
    assert df["p_yes"].isna().all()
    assert json.loads(df["prompt"][0])[0]["content"][1]["text"] == df["text_prompt"][0]
    assert not (tmp_path / ".partial").exists()


class EchoAuth(BaseHTTPRequestHandler):
    """Answers from a script of status codes; every error body echoes the credentials the request carried (as
    careless servers do), so anything that logs a body verbatim leaks them."""

    script: list = []
    seen: list = []

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        auth = self.headers.get("Authorization", "")
        type(self).seen.append(auth)
        status = type(self).script.pop(0) if type(self).script else 200
        if status == 200:
            payload = {"choices": [{"message": {"role": "assistant", "content": "Yes"}, "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 11, "completion_tokens": 1}}
        else:
            decoded = base64.b64decode(auth[6:]).decode() if auth.startswith("Basic ") else ""
            payload = {"error": f"Incorrect API key provided: {auth} {decoded}\nSee the docs."}
        raw = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args):
        pass


@pytest.fixture
def echo_auth():
    server = ThreadingHTTPServer(("127.0.0.1", 0), EchoAuth)
    EchoAuth.script, EchoAuth.seen = [], []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
def rule_log(tmp_path):
    """The rule log as run_main sets it up; the pii logger is restored afterwards (caplog needs propagation)."""
    saved = list(log.handlers), log.propagate, log.level
    path = tmp_path / "rule.log"
    setup_logging(path)
    yield path
    for handler in log.handlers:
        handler.close()
    log.handlers[:], log.propagate = saved[0], saved[1]
    log.setLevel(saved[2])


KEY = "sk-test-" + secrets.token_hex(12)
PASSWORD = "pw-" + secrets.token_hex(12)


def _secret_job(base_url, retries=0):
    cfg = job_config("llava_1_5", "llava", "demo/llava", backend="openai", batch_size=2,
                     openai={"base_url": base_url, "api_key_env": "PII_TEST_SECRET_KEY", "concurrency": 1,
                             "max_retries": retries, "timeout_s": 20})
    return infer.Job("pope", "llava_1_5", "hybrid", cfg)


@pytest.mark.parametrize("status", [401, 403])
@pytest.mark.parametrize("with_url_credentials", [False, True])
def test_auth_failure_names_key_variable_and_redacts(tmp_path, echo_auth, rule_log, monkeypatch, status,
                                                     with_url_credentials):
    monkeypatch.setenv("PII_TEST_SECRET_KEY", KEY)
    creds = f"alice:{PASSWORD}@" if with_url_credentials else ""
    job = _secret_job(f"http://{creds}127.0.0.1:{echo_auth}/v1")
    sample, manifest = make_inputs(tmp_path, "pope", n=1)
    EchoAuth.script = [status]
    with pytest.raises(PipelineError) as err:
        infer.run_job(job, sample, manifest, tmp_path / "out.parquet", tmp_path / ".partial")
    log.error("%s", err.value)  # as run_main ends the rule log
    msg = str(err.value)
    assert EchoAuth.seen[0] and (KEY in EchoAuth.seen[0] or with_url_credentials)  # credentials were sent
    assert f"rejected (HTTP {status}: " in msg and "\n" not in msg and "***" in msg
    assert "check the API key in $PII_TEST_SECRET_KEY (the variable named by inference.openai.api_key_env)" in msg
    for text in (msg, rule_log.read_text(encoding="utf-8")):
        assert KEY not in text and PASSWORD not in text
    assert not (tmp_path / "out.parquet").exists()


def test_credentials_never_reach_metadata_or_log(tmp_path, echo_auth, rule_log, monkeypatch):
    """A retried 503 (its body echoing the credentials) then success: the retry warning, the file's metadata and
    the checkpoints hold neither the key nor the URL's password, and the server still received them."""
    monkeypatch.setenv("PII_TEST_SECRET_KEY", KEY)
    job = _secret_job(f"http://alice:{PASSWORD}@127.0.0.1:{echo_auth}/v1", retries=1)
    sample, manifest = make_inputs(tmp_path, "pope", n=2)
    EchoAuth.script = [503]
    out = tmp_path / "out.parquet"
    backend = openai_backend.OpenAIBackend(job, backoff_s=0.01)
    infer.run_job(job, sample, manifest, out, tmp_path / ".partial", backend=backend)
    text = rule_log.read_text(encoding="utf-8")
    assert "retry 1/1" in text and f"http://***@127.0.0.1:{echo_auth}/v1/chat/completions" in text
    assert base64.b64decode(EchoAuth.seen[0][6:]).decode() == f"alice:{PASSWORD}"
    meta = read_metadata(out)
    assert meta["base_url"] == f"http://***@127.0.0.1:{echo_auth}/v1"
    stored = out.read_bytes() + json.dumps(meta).encode() + text.encode()
    assert KEY.encode() not in stored and PASSWORD.encode() not in stored


def test_redact_url():
    assert openai_backend.redact_url("see https://u:p%40ss@h.example:8/v1 and http://h/v1") == \
        "see https://***@h.example:8/v1 and http://h/v1"
    assert openai_backend.redact_url(None) is None
