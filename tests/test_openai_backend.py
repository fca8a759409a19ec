"""The openai backend: request shape, retries with backoff, and a live run against `transformers serve`."""

from __future__ import annotations

import base64
import contextlib
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
import numpy as np
import openai_backend
import pytest
import vlm
from conftest import free_port, stop_process, wait_for_port
from families import demo_parts
from families.base import CHECKPOINT_FILES
from inference_fixtures import job_config, make_inputs
from pipeline_io import PipelineError, log, read_metadata, read_table, setup_logging


def _job(base_url, retries=3, setting_text="{question}", model_path="demo/llava"):
    cfg = job_config("llava_1_5", "llava", model_path, backend="openai", batch_size=2, text_prompt=setting_text,
                     openai={"base_url": base_url, "api_key_env": "PII_TEST_NO_KEY", "concurrency": 2,
                             "max_retries": retries, "timeout_s": 20})
    return infer.Job("pope", "llava_1_5", "hybrid", cfg)


def reply_json(handler: BaseHTTPRequestHandler, status: int, payload: dict) -> None:
    raw = json.dumps(payload).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(raw)))
    handler.end_headers()
    handler.wfile.write(raw)


@contextlib.contextmanager
def serving(handler: type[BaseHTTPRequestHandler]):
    """A threaded HTTP server on a free loopback port (yielded), shut down on exit."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


class Scripted(BaseHTTPRequestHandler):
    """Answers POSTs from a script of (status, content) or (status, content, logprobs) and records the bodies; an
    error's content (if any) is its message."""

    script: list = []
    bodies: list = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).bodies.append(body)
        status, content, *logprobs = type(self).script.pop(0) if type(self).script else (200, "Yes")
        choice = {"message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        if logprobs:
            choice["logprobs"] = logprobs[0]
        payload = {"error": content or "boom"} if status != 200 else {
            "choices": [choice], "usage": {"prompt_tokens": 11, "completion_tokens": 1}}
        reply_json(self, status, payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def scripted():
    Scripted.script, Scripted.bodies = [], []
    with serving(Scripted) as port:
        yield f"http://127.0.0.1:{port}/v1"


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
    assert body["logprobs"] is True and body["top_logprobs"] == 20          # POPE asks for P(yes)
    assert row["p_yes"] is None                                              # ... the server sent no logprobs
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


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory) -> Path:
    return demo_models.build("llava", tmp_path_factory.mktemp("llava") / "llava", seed=0)


def test_live_transformers_serve(tmp_path, llava_dir):
    """The whole job through a real OpenAI-compatible server (`transformers serve`) serving a demo folder.
    llava is served: Qwen's processor needs torchvision, which `transformers serve` loads unconditionally.
    `transformers serve` (5.23) accepts logprobs / top_logprobs but ignores them (it logs "Ignoring unsupported
    fields") and answers without logprobs: p_yes stays null and the metadata says why."""
    model_dir = llava_dir
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
    assert (df["response"].str.len_chars() > 0).all() and set(df["finish_reason"]) <= {"stop", "length"}
    assert df["p_yes"].fill_nan(None).is_null().all()
    facts = read_metadata(tmp_path / "out.parquet")["p_yes"]
    assert facts["requested"] is True and facts["rejected_by_server"] is None
    assert (facts["answers_with_logprobs"], facts["answers_without_logprobs"]) == (0, 4)
    assert facts["note"] == "the server returned no logprobs; p_yes is null"
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
        reply_json(self, status, payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def echo_auth():
    EchoAuth.script, EchoAuth.seen = [], []
    with serving(EchoAuth) as port:
        yield port


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


# --- P(yes) from logprobs -----------------------------------------------------------------------------------------


def _lp(p: float) -> float:
    return float(np.log(p))


def test_p_yes_from_logprobs_hand_cases():
    cands = [{"token": "Yes", "logprob": _lp(0.4)}, {"token": " yes", "logprob": _lp(0.1)},
             {"token": "\u2581No", "logprob": _lp(0.2)}, {"token": "\u0120NO", "logprob": _lp(0.05)},
             {"token": "Yes,", "logprob": _lp(0.1)}, {"token": "\nNo", "logprob": _lp(0.05)},   # not counted
             {"token": "Maybe", "logprob": _lp(0.1)}]
    content = [{"token": "Yes", "logprob": _lp(0.4), "top_logprobs": cands}, {"token": ",", "logprob": -0.1}]
    assert openai_backend.p_yes_from_logprobs({"content": content}) == pytest.approx(0.5 / 0.75)
    # only the first token counts; a chosen token missing from the list is a candidate too
    chosen = [{"token": " No", "logprob": _lp(0.3), "top_logprobs": [{"token": "Yes", "logprob": _lp(0.6)}]}]
    assert openai_backend.p_yes_from_logprobs({"content": chosen}) == pytest.approx(0.6 / 0.9)
    only_yes = [{"token": "Yes", "logprob": _lp(0.9), "top_logprobs": [{"token": "Yes", "logprob": _lp(0.9)},
                                                                      {"token": "No", "logprob": -9999.0}]}]
    assert openai_backend.p_yes_from_logprobs({"content": only_yes}) == 1.0    # vLLM writes -9999 for -inf
    neither = [{"token": "A", "logprob": -0.1, "top_logprobs": [{"token": "A", "logprob": -0.1}]}]
    assert openai_backend.p_yes_from_logprobs({"content": neither}) is None
    for empty in (None, {}, {"content": None}, {"content": []}):
        assert openai_backend.p_yes_from_logprobs(empty) is None


@pytest.mark.parametrize("vocabulary", ["llava-hf--llava-1.5-7b-hf", "Qwen--Qwen2.5-VL-7B-Instruct", "demo"])
def test_counted_token_strings_are_the_transformers_backends(vocabulary):
    """answer_kind counts exactly the vocabulary entries vlm.answer_token_ids counts (raw pieces with the
    SentencePiece or byte-level space, and the same pieces as servers print them, with a plain space), over the
    real llava-1.5 (SentencePiece) and Qwen2.5 (byte-level) vocabularies and the demo's own small one."""
    from transformers import AutoTokenizer

    if vocabulary == "demo":
        tok = demo_parts.llama_tokenizer(["<image>"])
    else:
        tok = AutoTokenizer.from_pretrained(CHECKPOINT_FILES / vocabulary)
    ids = vlm.answer_token_ids(tok)
    words = {w for spellings in vlm.ANSWER_WORDS.values() for w in spellings}
    for token, token_id in tok.get_vocab().items():
        spelled = token.lstrip("\u2581\u0120 ") in words
        for shown in (token, token.replace("\u2581", " ").replace("\u0120", " ")):
            kind = openai_backend.answer_kind(shown)
            want = "yes" if token_id in ids["yes"] else "no" if token_id in ids["no"] else None
            assert kind == want, (token, shown)
            assert want is None or spelled, (token, shown)
    assert ids["yes"] and ids["no"]


class FromModel(BaseHTTPRequestHandler):
    """An OpenAI-compatible server whose answers come from the demo llava itself: the greedy response and the first
    token's log-probabilities over the whole vocabulary, of which it returns the top ``top_logprobs`` asked for
    (token strings as servers print them: SentencePiece's space as a space)."""

    answers: dict = {}
    bodies: list = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).bodies.append(body)
        response, ranked = type(self).answers[body["messages"][0]["content"][0]["image_url"]["url"]]
        choice = {"message": {"role": "assistant", "content": response}, "finish_reason": "stop"}
        if body.get("logprobs"):
            top = [{"token": t, "logprob": lp} for t, lp in ranked[:body["top_logprobs"]]]
            choice["logprobs"] = {"content": [{**top[0], "top_logprobs": top}]}
        reply_json(self, 200, {"choices": [choice], "usage": {"prompt_tokens": 5, "completion_tokens": 1}})

    def log_message(self, *args):
        pass


def test_p_yes_matches_the_transformers_backend(tmp_path, llava_dir, monkeypatch):
    """The same greedy POPE requests through the transformers backend and through the openai backend against a
    loopback server answering with the demo llava's own first-token log-probabilities: with every candidate
    listed, the two P(yes) agree; with the top 20 (what the backend asks for), P(yes) is the share computed by
    hand from those 20 (null where neither a Yes nor a No spelling is among them)."""
    import torch

    sample, manifest = make_inputs(tmp_path / "in", "pope", n=4)
    cfg = job_config("llava_1_5", "llava", str(llava_dir), batch_size=1, max_new_tokens=4)
    ref = infer.run_job(infer.Job("pope", "llava_1_5", "hybrid", cfg), sample, manifest, tmp_path / "ref.parquet",
                        tmp_path / ".p_ref")
    assert ref["p_yes"].fill_nan(None).is_not_null().all()
    lm = vlm.load_model("llava_1_5", {"family": "llava", "path": str(llava_dir)})
    tokens = lm.tokenizer.convert_ids_to_tokens(list(range(len(lm.tokenizer))))
    answers, ranked_of = {}, {}
    for row in ref.iter_rows(named=True):
        inputs = vlm.prepare_inputs(lm, [row["prompt"]], [vlm.open_image(row["image_path"])])
        with torch.inference_mode():
            logp = torch.log_softmax(lm.model(**inputs).logits[0, -1].float(), dim=-1).tolist()
        ranked = sorted(((t.replace("\u2581", " "), lp) for t, lp in zip(tokens, logp, strict=False)),
                        key=lambda x: -x[1])
        answers[openai_backend.data_url(row["image_path"])[0]] = (row["response"], ranked)
        ranked_of[row["sample_id"]] = ranked
    FromModel.answers, FromModel.bodies = answers, []
    with serving(FromModel) as port:
        job = _job(f"http://127.0.0.1:{port}/v1", model_path=str(llava_dir))
        monkeypatch.setattr(openai_backend, "TOP_LOGPROBS", len(tokens))   # a server that lists every candidate
        full = infer.run_job(job, sample, manifest, tmp_path / "full.parquet", tmp_path / ".p_full")
        monkeypatch.undo()
        top20 = infer.run_job(job, sample, manifest, tmp_path / "top20.parquet", tmp_path / ".p_top20")
    assert list(full["response"]) == list(ref["response"])
    np.testing.assert_allclose(full["p_yes"], ref["p_yes"], atol=1e-5)
    assert {b["top_logprobs"] for b in FromModel.bodies} == {len(tokens), 20}
    for row in top20.iter_rows(named=True):
        listed = ranked_of[row["sample_id"]][:20]
        mass = {k: sum(np.exp(lp) for t, lp in listed if openai_backend.answer_kind(t) == k) for k in ("yes", "no")}
        if mass["yes"] + mass["no"] == 0:
            assert row["p_yes"] is None or np.isnan(row["p_yes"])
        else:
            assert row["p_yes"] == pytest.approx(mass["yes"] / (mass["yes"] + mass["no"]))
    facts = read_metadata(tmp_path / "top20.parquet")["p_yes"]
    assert facts["answers_with_logprobs"] == 4 and facts["note"] == "p_yes from logprobs"
    one_sided = sum(sum(openai_backend.answer_kind(t) == k for t, _ in ranked_of[sid][:20]) == 0
                    for sid in top20["sample_id"] for k in ("yes", "no")) - 2 * facts["answers_without_yes_no_candidate"]
    assert facts["answers_with_one_side_only"] == one_sided
    assert read_metadata(tmp_path / "top20.parquet")["n_p_yes"] == int(top20["p_yes"].fill_nan(None).is_not_null().sum())


def test_server_rejecting_logprobs_is_asked_again_without(tmp_path, scripted):
    sample, manifest = make_inputs(tmp_path, "pope", n=2)
    Scripted.script = [(400, "logprobs is not supported by this model"), (200, "No"), (200, "Yes")]
    job = _job(scripted, retries=0)
    backend = openai_backend.OpenAIBackend(job, backoff_s=0.01)
    df = infer.run_job(job, sample, manifest, tmp_path / "out.parquet", tmp_path / ".partial", backend=backend)
    assert df["p_yes"].fill_nan(None).is_null().all() and sorted(df["response"]) == ["No", "Yes"]
    # the rejected request is sent again without the fields (the other, concurrent one may have carried them)
    assert len(Scripted.bodies) == 3 and "logprobs" in Scripted.bodies[0] and "logprobs" not in Scripted.bodies[-1]
    facts = read_metadata(tmp_path / "out.parquet")["p_yes"]
    assert facts["requested"] is False and "logprobs is not supported" in facts["rejected_by_server"]
    assert facts["note"] == "the server rejected the logprobs fields; p_yes is null"


def test_caption_requests_ask_for_no_logprobs(tmp_path, scripted):
    sample, manifest = make_inputs(tmp_path, "caption", n=1)
    cfg = job_config("llava_1_5", "llava", "demo/llava", task="caption", setting="baseline", backend="openai",
                     openai={"base_url": scripted, "api_key_env": "PII_TEST_NO_KEY", "concurrency": 1,
                             "max_retries": 0, "timeout_s": 20})
    job = infer.Job("caption", "llava_1_5", "baseline", cfg)
    Scripted.script = [(200, "A dog.", {"content": [{"token": "Yes", "logprob": 0.0, "top_logprobs": []}]})]
    df = infer.run_job(job, sample, manifest, tmp_path / "out.parquet", tmp_path / ".partial")
    assert "logprobs" not in Scripted.bodies[0] and "top_logprobs" not in Scripted.bodies[0]
    assert df["p_yes"].fill_nan(None).is_null().all()
    assert read_metadata(tmp_path / "out.parquet")["p_yes"]["requested"] is False
