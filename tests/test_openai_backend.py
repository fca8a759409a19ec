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
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from conftest import free_port, stop_process, wait_for_port
from inference_fixtures import job_config, make_inputs

from pii.core.stage import PipelineError, log, setup_logging
from pii.core.tables import read_metadata, read_table
from pii.inference import demo_checkpoints, openai_backend, vlm
from pii.inference.families import demo_parts
from pii.inference.families.base import CHECKPOINT_FILES
from pii.inference.job import Job, build_requests
from pii.inference.runner import run_job


def _job(base_url, retries=3, setting_text="{question}", model_path="demo/llava"):
    cfg = job_config("llava_1_5", "llava", model_path, backend="openai", batch_size=2, text_prompt=setting_text,
                     openai={"base_url": base_url, "api_key_env": "PII_TEST_NO_KEY", "concurrency": 2,
                             "max_retries": retries, "timeout_s": 20})
    return Job("pope", "llava_1_5", "hybrid", cfg)


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
    req = build_requests(read_table(sample), read_table(manifest), job)[0]
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
    req = build_requests(read_table(sample), read_table(manifest), job)[0]
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
    req = build_requests(read_table(sample), read_table(manifest), job)[0]
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
    return demo_checkpoints.build("llava", tmp_path_factory.mktemp("llava") / "llava", seed=0)


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
        df = run_job(job, sample, manifest, tmp_path / "out.parquet", tmp_path / ".partial")
    finally:
        stop_process(server)
    assert len(df) == 4 and (df["n_prompt_tokens"] > 0).all() and (df["n_response_tokens"] > 0).all()
    assert (df["response"].str.len_chars() > 0).all() and set(df["finish_reason"]) <= {"stop", "length"}
    assert df["p_yes"].fill_nan(None).is_null().all()
    facts = read_metadata(tmp_path / "out.parquet")["p_yes"]
    assert facts["requested"] is True and facts["rejected_by_server"] is None
    assert (facts["answers_with_logprobs"], facts["answers_without_logprobs"]) == (0, 4)
    assert facts["note"] == "the server returned no logprobs; p_yes is null"
    # it rejects top_k / repetition_penalty (422, not in the OpenAI API); the demo's greedy values are neutral
    sent = read_metadata(tmp_path / "out.parquet")["decoding_sent"]
    assert (sent["temperature"], sent["top_p"]) == (0.0, 1.0) and "top_k" not in sent, sent
    assert sent["rejected_by_server"].startswith("HTTP 422: ") and "top_k" in sent["rejected_by_server"]
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
    return Job("pope", "llava_1_5", "hybrid", cfg)


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
        run_job(job, sample, manifest, tmp_path / "out.parquet", tmp_path / ".partial")
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
    run_job(job, sample, manifest, out, tmp_path / ".partial", backend=backend)
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
    ref = run_job(Job("pope", "llava_1_5", "hybrid", cfg), sample, manifest, tmp_path / "ref.parquet",
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
        full = run_job(job, sample, manifest, tmp_path / "full.parquet", tmp_path / ".p_full")
        monkeypatch.undo()
        top20 = run_job(job, sample, manifest, tmp_path / "top20.parquet", tmp_path / ".p_top20")
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
    df = run_job(job, sample, manifest, tmp_path / "out.parquet", tmp_path / ".partial", backend=backend)
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
    job = Job("caption", "llava_1_5", "baseline", cfg)
    Scripted.script = [(200, "A dog.", {"content": [{"token": "Yes", "logprob": 0.0, "top_logprobs": []}]})]
    df = run_job(job, sample, manifest, tmp_path / "out.parquet", tmp_path / ".partial")
    assert "logprobs" not in Scripted.bodies[0] and "top_logprobs" not in Scripted.bodies[0]
    assert df["p_yes"].fill_nan(None).is_null().all()
    assert read_metadata(tmp_path / "out.parquet")["p_yes"]["requested"] is False


# --- decoding values: all of them in every request -----------------------------------------------------------------


def _decoding_job(base_url, decoding: dict, retries=0):
    cfg = job_config("llava_1_5", "llava", "demo/llava", backend="openai", do_sample=decoding["do_sample"],
                     openai={"base_url": base_url, "api_key_env": "PII_TEST_NO_KEY", "concurrency": 1,
                             "max_retries": retries, "timeout_s": 20})
    cfg["decoding"].update(decoding)
    return Job("pope", "llava_1_5", "hybrid", cfg)


@pytest.mark.parametrize("decoding, sent", [
    ({"do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 50, "repetition_penalty": 1.05},
     {"temperature": 0.7, "top_p": 0.9, "top_k": 50, "repetition_penalty": 1.05}),
    # the paper's sampling: the config's top_k 0 (transformers' "off") goes as vLLM's -1, the penalty's 1.0 too
    ({"do_sample": True, "temperature": 0.7, "top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0},
     {"temperature": 0.7, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0}),
    # greedy: temperature 0 with top_p / top_k off whatever the config says; the penalty applies to greedy too
    ({"do_sample": False, "temperature": 0.7, "top_p": 0.9, "top_k": 50, "repetition_penalty": 1.1},
     {"temperature": 0.0, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.1}),
], ids=["sampling", "sampling-top-k-off", "greedy"])
def test_every_decoding_value_is_sent(tmp_path, scripted, decoding, sent):
    """A vLLM server fills each value a request leaves out from the checkpoint's generation_config (Qwen2.5-VL-7B:
    top_k 1, repetition_penalty 1.05), so every value goes in every request, with the config's value."""
    sample, manifest = make_inputs(tmp_path, "pope", n=1)
    job = _decoding_job(scripted, decoding)
    req = build_requests(read_table(sample), read_table(manifest), job)[0]
    backend = openai_backend.OpenAIBackend(job, backoff_s=0.01)
    backend.run([req], seed=3)
    body = Scripted.bodies[0]
    assert {k: body[k] for k in sent} == sent
    assert all(type(body[k]) is type(v) for k, v in sent.items())          # -1 an int, 0.0 a float
    assert body["max_tokens"] == 6 and body["seed"] == 3
    assert backend.metadata()["decoding_sent"] == {**sent, "rejected_by_server": None}


UNEXPECTED = "Unexpected fields in the request: {'top_k', 'repetition_penalty'}"  # transformers serve's 422


def test_server_rejecting_top_k_is_asked_again_without_when_neutral(tmp_path, scripted, rule_log):
    sample, manifest = make_inputs(tmp_path, "pope", n=1)
    job = _decoding_job(scripted, {"do_sample": True, "top_k": 0, "repetition_penalty": 1.0})
    Scripted.script = [(422, UNEXPECTED)]
    backend = openai_backend.OpenAIBackend(job, backoff_s=0.01)
    df = run_job(job, sample, manifest, tmp_path / "out.parquet", tmp_path / ".partial", backend=backend)
    assert list(df["response"]) == ["Yes"] and len(Scripted.bodies) == 2
    assert Scripted.bodies[0]["top_k"] == -1 and Scripted.bodies[0]["repetition_penalty"] == 1.0
    assert "top_k" not in Scripted.bodies[1] and "repetition_penalty" not in Scripted.bodies[1]
    assert Scripted.bodies[1]["temperature"] == 0.7 and Scripted.bodies[1]["logprobs"] is True
    sent = read_metadata(tmp_path / "out.parquet")["decoding_sent"]
    assert sent == {"temperature": 0.7, "top_p": 1.0, "rejected_by_server": f"HTTP 422: {{\"error\": \"{UNEXPECTED}\"}}"}
    assert "the server rejects top_k / repetition_penalty" in rule_log.read_text(encoding="utf-8")


def test_server_rejecting_top_k_fails_the_job_when_it_matters(tmp_path, scripted):
    """Sampling with top_k 50 on a server that cannot be told of it would be other decoding: the job stops."""
    sample, manifest = make_inputs(tmp_path, "pope", n=1)
    job = _decoding_job(scripted, {"do_sample": True, "top_k": 50, "repetition_penalty": 1.0}, retries=3)
    Scripted.script = [(422, UNEXPECTED)]
    with pytest.raises(PipelineError) as err:
        run_job(job, sample, manifest, tmp_path / "out.parquet", tmp_path / ".partial")
    msg = str(err.value)
    assert msg.startswith(f"{scripted}/chat/completions: request for pope-0 rejected (HTTP 422: ")
    assert "so decoding.top_k 50 cannot be applied" in msg and "\n" not in msg and len(Scripted.bodies) == 1
    assert not (tmp_path / "out.parquet").exists()


def test_empty_completion_is_an_answer_not_a_fault(tmp_path, scripted):
    """Content "" is the model's (empty) answer: kept and counted, not retried like a server fault."""
    sample, manifest = make_inputs(tmp_path, "pope", n=1)
    job = _job(scripted)
    req = build_requests(read_table(sample), read_table(manifest), job)[0]
    Scripted.script = [(200, "")]
    backend = openai_backend.OpenAIBackend(job, backoff_s=0.01)
    row = backend.run([req], seed=0)[0]
    assert row["response"] == "" and row["finish_reason"] == "error" and backend.n_empty == 1
    assert len(Scripted.bodies) == 1


# --- server faults in an HTTP 200: retried like a 5xx, never written as an answer -------------------------------


GOOD = json.dumps({"choices": [{"message": {"role": "assistant", "content": "Yes, there is."}, "finish_reason": "stop"}],
                   "usage": {"prompt_tokens": 11, "completion_tokens": 4}})
# name: (body, its Content-Length: "auto" the true one, a number a longer one (the body cut short), None none (the
# body ends when the connection closes), what the error says)
FAULTS = {
    "error-object": ('{"error": {"message": "CUDA error: illegal memory access (request of {auth})", "code": 500}}',
                     "auto", "HTTP 200 but an error object: {\"error\": {\"message\": \"CUDA error"),
    "no-choices": ('{"id": "chatcmpl-1", "object": "chat.completion", "usage": {"prompt_tokens": 11}}', "auto",
                   "HTTP 200 but no choices: {\"id\": \"chatcmpl-1\""),
    "empty-choices": ('{"choices": [], "usage": {"prompt_tokens": 11}}', "auto", "HTTP 200 but empty choices"),
    "null-message": ('{"choices": [{"message": null, "finish_reason": "stop"}]}', "auto",
                     "HTTP 200 but a choice without a message"),
    "null-content": ('{"choices": [{"message": {"role": "assistant", "content": null}, "finish_reason": "stop"}]}',
                     "auto", "HTTP 200 but a message without text content"),
    "not-json": ("<html><body>502 Bad Gateway</body></html>", "auto", "HTTP 200 but the body is not JSON: <html>"),
    "json-array": ('[{"choices": []}]', "auto", "HTTP 200 but the body is an array, not a JSON object: [{"),
    "cut-short": (GOOD[:40], len(GOOD), "RemoteProtocolError: peer closed connection without sending complete message"),
    "cut-short-unsized": (GOOD[:40], None, "HTTP 200 but the body is not JSON: {\"choices\": [{\"message\""),
}


class Faulty(BaseHTTPRequestHandler):
    """Answers HTTP 200 with the FAULTS named in ``script`` (one per request), then with a good completion; an error
    object echoes the credentials the request carried, as careless servers do."""

    script: list = []
    hits = 0

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).hits += 1
        name = type(self).script.pop(0) if type(self).script else None
        body, length, _ = FAULTS[name] if name else (GOOD, "auto", None)
        auth = self.headers.get("Authorization", "")
        raw = body.replace("{auth}", base64.b64decode(auth[6:]).decode() if auth.startswith("Basic ") else "").encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if length is not None:
            self.send_header("Content-Length", str(len(raw) if length == "auto" else length))
        self.end_headers()
        self.wfile.write(raw)  # HTTP/1.0: the connection closes after each answer

    def log_message(self, *args):
        pass


@pytest.fixture
def faulty():
    Faulty.script, Faulty.hits = [], 0
    with serving(Faulty) as port:
        yield port


def _fault_job(base_url, retries, timeout_s=20.0):
    cfg = job_config("llava_1_5", "llava", "demo/llava", backend="openai",
                     openai={"base_url": base_url, "api_key_env": "PII_TEST_NO_KEY", "concurrency": 1,
                             "max_retries": retries, "timeout_s": timeout_s})
    return Job("pope", "llava_1_5", "hybrid", cfg)


@pytest.mark.parametrize("fault", list(FAULTS))
def test_server_fault_kept_up_stops_the_job(tmp_path, faulty, fault):
    sample, manifest = make_inputs(tmp_path, "pope", n=1)
    job = _fault_job(f"http://alice:{PASSWORD}@127.0.0.1:{faulty}/v1", retries=2)
    Faulty.script = [fault] * 3
    backend = openai_backend.OpenAIBackend(job, backoff_s=0.01)
    with pytest.raises(PipelineError) as err:
        run_job(job, sample, manifest, tmp_path / "out.parquet", tmp_path / ".partial", backend=backend)
    msg = str(err.value)
    assert msg.startswith(f"http://***@127.0.0.1:{faulty}/v1/chat/completions: request for pope-0 failed after 2 "
                          f"retries ({FAULTS[fault][2]}")
    assert "\n" not in msg and PASSWORD not in msg and Faulty.hits == 3
    assert not (tmp_path / "out.parquet").exists()


@pytest.mark.parametrize("fault", list(FAULTS))
def test_server_fault_then_recovery_gives_a_normal_row(tmp_path, faulty, rule_log, fault):
    sample, manifest = make_inputs(tmp_path, "pope", n=1)
    job = _fault_job(f"http://127.0.0.1:{faulty}/v1", retries=3)
    Faulty.script = [fault] * 2
    backend = openai_backend.OpenAIBackend(job, backoff_s=0.01)
    df = run_job(job, sample, manifest, tmp_path / "out.parquet", tmp_path / ".partial", backend=backend)
    row = df.row(0, named=True)
    assert (row["response"], row["finish_reason"], row["n_response_tokens"]) == ("Yes, there is.", "stop", 4)
    assert Faulty.hits == 3 and backend.n_empty == 0
    text = rule_log.read_text(encoding="utf-8")
    for attempt in (1, 2):
        assert f"{FAULTS[fault][2][:60]}" in text and f"for pope-0; retry {attempt}/3 in " in text


# --- timeout_s bounds the whole request ----------------------------------------------------------------------------


class Trickle(BaseHTTPRequestHandler):
    """Answers from a script of modes: "trickle" sends the headers of a good completion, then one byte of it every
    0.4 s (a whole answer would take a minute); "slow" sends it in four parts 0.1 s apart; otherwise at once.
    Handlers stop at ``stop`` and are recorded, so the test can see them end."""

    script: list = []
    hits = 0
    stop = threading.Event()
    threads: list = []

    def do_POST(self):  # noqa: N802
        type(self).threads.append(threading.current_thread())
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).hits += 1
        mode = type(self).script.pop(0) if type(self).script else None
        raw = GOOD.encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        step, gap = {"trickle": (1, 0.4), "slow": (len(raw) // 4 + 1, 0.1)}.get(mode, (len(raw), 0.0))
        try:
            for start in range(0, len(raw), step):
                self.wfile.write(raw[start:start + step])
                self.wfile.flush()
                if gap and type(self).stop.wait(gap):
                    return
        except OSError:  # the client cut the connection
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def trickling():
    Trickle.script, Trickle.hits, Trickle.threads = [], 0, []
    Trickle.stop = threading.Event()
    with serving(Trickle) as port:
        try:
            yield port
        finally:
            Trickle.stop.set()
            for thread in Trickle.threads:
                thread.join(timeout=5)
            assert not any(thread.is_alive() for thread in Trickle.threads)


def test_trickling_server_meets_the_request_timeout(tmp_path, trickling):
    """httpx's timeout bounds each read: a byte every 0.4 s would hold the request for a minute; timeout_s 1 cuts
    each try at 1 s, retried, then the job stops with the URL and the timeout."""
    sample, manifest = make_inputs(tmp_path, "pope", n=1)
    job = _fault_job(f"http://127.0.0.1:{trickling}/v1", retries=1, timeout_s=1)
    req = build_requests(read_table(sample), read_table(manifest), job)[0]
    Trickle.script = ["trickle"] * 2
    backend = openai_backend.OpenAIBackend(job, backoff_s=0.01)
    t0 = time.monotonic()
    with pytest.raises(PipelineError) as err:
        backend.run([req], seed=0)
    elapsed = time.monotonic() - t0
    msg = str(err.value)
    assert msg.startswith(f"http://127.0.0.1:{trickling}/v1/chat/completions: request for pope-0 failed after 1 "
                          "retries (RequestDeadline: no complete answer within timeout_s = 1 s (HTTP 200, ")
    assert "raise inference.openai.max_retries / timeout_s" in msg and "\n" not in msg
    assert Trickle.hits == 2 and 2.0 <= elapsed < 5.0  # two tries of 1 s each, not a minute


def test_trickle_retried_and_a_slow_whole_answer_kept(tmp_path, trickling, rule_log):
    sample, manifest = make_inputs(tmp_path, "pope", n=1)
    job = _fault_job(f"http://127.0.0.1:{trickling}/v1", retries=2, timeout_s=1)
    req = build_requests(read_table(sample), read_table(manifest), job)[0]
    Trickle.script = ["trickle", "slow"]  # then a slow answer that is whole within 1 s
    row = openai_backend.OpenAIBackend(job, backoff_s=0.01).run([req], seed=0)[0]
    assert (row["response"], row["finish_reason"]) == ("Yes, there is.", "stop") and Trickle.hits == 2
    text = rule_log.read_text(encoding="utf-8")
    assert "RequestDeadline: no complete answer within timeout_s = 1 s" in text and "for pope-0; retry 1/2 in" in text
