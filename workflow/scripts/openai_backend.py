"""The ``openai`` inference backend: the same requests sent to an OpenAI-compatible chat completions server
(vLLM, ``transformers serve``, a hosted API).

One user message per request: the image as a base64 data URL, then the setting's text turn (no text part when
``text_prompt`` is null). Requests of a batch run concurrently (``inference.openai.concurrency``); 429, 5xx,
timeouts and dropped connections are retried with exponential backoff (``max_retries``), then the job fails with
one line. Empty answers are kept with ``finish_reason: error`` and counted in the log.

Secrets never reach a log, an error or a file: credentials in ``base_url`` (``https://user:key@host/v1``) and the
API key's value are replaced by ``***`` wherever the backend reports a URL or a server's answer.

Only ``base_url`` (without credentials) can change what answers, so only it enters the infer jobs' params and
checkpoint fingerprints (``row_settings``); retries, timeouts, concurrency and the key's variable are operational.
"""

from __future__ import annotations

import base64
import hashlib
import json
import mimetypes
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote, urlsplit

from pipeline_io import PipelineError, log

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
AUTH_STATUS = {401, 403}
_USERINFO = re.compile(r"(?<=://)[^/\s@]+@")


def redact_url(text: str | None) -> str | None:
    """``text`` with the credentials of every URL in it replaced: ``https://user:key@host`` -> ``https://***@host``."""
    return None if text is None else _USERINFO.sub("***@", text)


def row_settings(inference: dict) -> dict:
    """The part of the ``inference`` config block that can change a row: the backend, the batch size and, for the
    openai backend, which server answers (its URL without credentials). The infer rule's params and the checkpoint
    fingerprint use only this, so editing how requests are sent (``api_key_env``, ``concurrency``, ``max_retries``,
    ``timeout_s``) reruns and discards nothing."""
    kept = {"backend": inference["backend"], "batch_size": inference["batch_size"]}
    if inference["backend"] == "openai":
        kept["openai"] = {"base_url": redact_url((inference.get("openai") or {}).get("base_url"))}
    return kept


def data_url(path: str) -> tuple[str, str]:
    """The file's bytes as a data URL (no re-encoding), and a short stand-in for the recorded prompt."""
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        raise PipelineError(f"{path}: cannot read image ({err}); rerun the render stage") from err
    mime = mimetypes.guess_type(path)[0] or "image/png"
    b64 = base64.b64encode(raw).decode()
    stand_in = f"data:{mime};base64,<{len(b64)} base64 chars of {Path(path).name}, sha256 {hashlib.sha256(raw).hexdigest()}>"
    return f"data:{mime};base64,{b64}", stand_in


def build_messages(image_url: str, text: str | None) -> list[dict]:
    content: list[dict] = [{"type": "image_url", "image_url": {"url": image_url}}]
    if text is not None:
        content.append({"type": "text", "text": text})
    return [{"role": "user", "content": content}]


def resolve_base_url(openai_cfg: dict) -> str:
    url = openai_cfg.get("base_url") or os.environ.get("OPENAI_BASE_URL")
    if not url:
        raise PipelineError("inference.openai.base_url: not set and OPENAI_BASE_URL is empty; give the server's URL, "
                            "e.g. http://127.0.0.1:8000/v1")
    return url.rstrip("/")


class OpenAIBackend:
    name = "openai"

    def __init__(self, job, client=None, backoff_s: float = 1.0):
        import httpx

        self.job = job
        self.cfg = job.openai
        self.base_url = resolve_base_url(self.cfg)
        self.served_name = job.entry.get("served_name") or job.entry["path"]
        self.key_env = self.cfg["api_key_env"]
        key = os.environ.get(self.key_env)
        if not key:
            log.info("no API key in $%s; sending requests without one (fine for local servers)", self.key_env)
        password = urlsplit(self.base_url).password
        self.secrets = [s for s in (key, password, unquote(password or "")) if s]
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = client or httpx.Client(headers=headers, timeout=float(self.cfg["timeout_s"]))
        self.backoff_s = backoff_s
        self.n_empty = 0

    def redact(self, text: str) -> str:
        """``text`` safe to log: URL credentials and the key's value (a server may echo it) replaced."""
        text = redact_url(text)
        for secret in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        return text

    # the same interface as TransformersBackend
    def prompt(self, req) -> str:
        _, stand_in = data_url(req.image_path)
        return json.dumps(build_messages(stand_in, req.text_prompt), ensure_ascii=False)

    def sort_key(self, req) -> int:
        return len(req.text_prompt or "")

    def body(self, req, seed: int) -> dict:
        dec = self.job.decoding
        body = {"model": self.served_name, "messages": build_messages(data_url(req.image_path)[0], req.text_prompt),
                "max_tokens": int(self.job.task_cfg["max_new_tokens"]), "seed": int(seed),
                "temperature": float(dec["temperature"]) if dec["do_sample"] else 0.0, "top_p": float(dec["top_p"])}
        # Not part of the OpenAI API: sent only when they change anything (vLLM accepts them).
        if dec["do_sample"] and int(dec["top_k"]) > 0:
            body["top_k"] = int(dec["top_k"])
        if float(dec["repetition_penalty"]) != 1.0:
            body["repetition_penalty"] = float(dec["repetition_penalty"])
        return body

    def post(self, body: dict, sample_id: str) -> dict:
        """POST with retries on 429 / 5xx / timeouts / connection errors, exponential backoff."""
        import httpx

        url = f"{self.base_url}/chat/completions"
        shown = redact_url(url)
        retries = int(self.cfg["max_retries"])
        last = ""
        for attempt in range(retries + 1):
            try:
                resp = self.client.post(url, json=body)
            except (httpx.TimeoutException, httpx.TransportError) as err:
                last = self.redact(f"{type(err).__name__}: {err}")
            else:
                if resp.status_code == 200:
                    return resp.json()
                last = self.redact(f"HTTP {resp.status_code}: {' '.join(resp.text.split())}")[:200]
                if resp.status_code in AUTH_STATUS:
                    raise PipelineError(f"{shown}: request for {sample_id} rejected ({last}); check the API key in "
                                        f"${self.key_env} (the variable named by inference.openai.api_key_env)")
                if resp.status_code not in RETRY_STATUS:
                    raise PipelineError(f"{shown}: request for {sample_id} rejected ({last}); check "
                                        f"models.{self.job.model}.served_name and the server")
            if attempt < retries:
                wait = self.backoff_s * 2 ** attempt
                log.warning("%s: %s for %s; retry %d/%d in %.1fs", shown, last, sample_id, attempt + 1, retries, wait)
                time.sleep(wait)
        raise PipelineError(f"{shown}: request for {sample_id} failed after {retries} retries ({last}); check the "
                            "server or raise inference.openai.max_retries / timeout_s")

    def one(self, req, seed: int) -> dict:
        data = self.post(self.body(req, seed), req.sample_id)
        choice = (data.get("choices") or [{}])[0]
        text = ((choice.get("message") or {}).get("content") or "").strip()
        usage = data.get("usage") or {}
        finish = choice.get("finish_reason") or "stop"
        if not text:
            self.n_empty += 1
            log.warning("empty response for %s (finish_reason %s)", req.sample_id, finish)
            finish = "error"
        return {"response": text, "n_prompt_tokens": int(usage.get("prompt_tokens") or 0),
                "n_response_tokens": int(usage.get("completion_tokens") or 0),
                "finish_reason": finish if finish in ("stop", "length") else ("error" if not text else "stop"),
                "seed": int(seed), "p_yes": None}

    def run(self, chunk: list, seed: int) -> list[dict]:
        """Requests of a batch concurrently; request k of the batch uses the server seed ``seed + k``."""
        workers = max(1, min(int(self.cfg["concurrency"]), len(chunk)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(lambda kr: self.one(kr[1], seed + kr[0]), enumerate(chunk)))

    def metadata(self) -> dict:
        import httpx

        return {"base_url": redact_url(self.base_url), "served_name": self.served_name,
                "n_empty_responses": self.n_empty, "device": "remote", "versions": {"httpx": httpx.__version__}}
