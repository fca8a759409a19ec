"""The ``openai`` inference backend: the same requests sent to an OpenAI-compatible chat completions server
(vLLM, ``transformers serve``, a hosted API).

One user message per request: the image as a base64 data URL, then the setting's text turn (no text part when
``text_prompt`` is null). Every request carries all decoding values (temperature, top_p, top_k,
repetition_penalty, max_tokens, seed; greedy too), since a server fills what is not sent from the checkpoint's
generation_config (vLLM: Qwen2.5-VL-7B's top_k 1 and repetition_penalty 1.05 would turn T = 0.7 sampling nearly
greedy). A server that rejects top_k / repetition_penalty (the OpenAI API has neither; ``transformers serve``
answers 422) is asked again without them when the config's values are neutral, else the job fails.

Requests of a batch run concurrently (``inference.openai.concurrency``); 429, 5xx, timeouts, dropped connections
and server faults in an HTTP 200 (an ``error`` object, no choices, a null message or content, a body that is not a
JSON object or is cut short) are retried with exponential backoff (``max_retries``), then the job fails with one
line: a fault is never written as an answer. ``timeout_s`` bounds each whole request, not only each read. Empty
answers (content ``""``) are kept with ``finish_reason: error`` and counted in the log.

Secrets never reach a log, an error or a file: credentials in ``base_url`` (``https://user:key@host/v1``) and the
API key's value are replaced by ``***`` wherever the backend reports a URL or a server's answer.

Only ``base_url`` (without credentials) can change what answers, so only it enters the infer jobs' params and
checkpoint fingerprints (``row_settings``); retries, timeouts, concurrency and the key's variable are operational.

P(yes) for POPE: requests ask for ``logprobs: true, top_logprobs: 20`` (OpenAI's maximum, vLLM's default limit).
``p_yes`` is the probability mass of the first generated token's Yes-like candidates over that of its Yes-like
and No-like candidates, with the token strings the transformers backend counts (vlm.py: ``Yes``/``yes``/``YES``
and ``No``/``no``/``NO``, bare or after one leading ``▁``, ``Ġ`` or space), so both backends define P(yes) the
same way. Differences that remain: only the listed candidates count (a spelling outside the top 20 is missing;
the transformers backend sums the whole vocabulary), and the server decides which distribution its logprobs
describe (vLLM by default: the model's, before temperature, as the transformers backend's logits). Only Yes-like
(No-like) candidates listed: ``p_yes`` 1 (0), counted in the metadata; neither: null. A server that returns no
logprobs (``transformers serve`` 5.23 accepts the fields and ignores them) leaves ``p_yes`` null, and one that
rejects the fields (HTTP 400/422 naming them) is asked again without them; the file's metadata (``p_yes``) says
which happened and how often.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import mimetypes
import os
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote, urlsplit

from pii.core import images
from pii.core.stage import PipelineError, log

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
AUTH_STATUS = {401, 403}
TOP_LOGPROBS = 20  # OpenAI's maximum for top_logprobs (and vLLM's default max_logprobs)
# not in the OpenAI API (vLLM takes them), with the values that leave decoding as it is
EXTRA_DECODING = {"top_k": -1, "repetition_penalty": 1.0}
_USERINFO = re.compile(r"(?<=://)[^/\s@]+@")


def redact_url(text: str | None) -> str | None:
    """``text`` with the credentials of every URL in it replaced: ``https://user:key@host`` -> ``https://***@host``."""
    return None if text is None else _USERINFO.sub("***@", text)


def row_settings(inference: dict, entry: dict | None = None) -> dict:
    """The part of the ``inference`` config block that can change a row of the model ``entry``: the backend, the
    batch size and, for the openai backend, which server answers (its URL without credentials), for the vllm backend
    its batch and engine settings (vLLM's batching is not batch-invariant), not where its Python is. The infer rule's
    params and the checkpoint fingerprint use only this, so editing how requests are sent (``api_key_env``,
    ``concurrency``, ``max_retries``, ``timeout_s``) reruns and discards nothing."""
    kept = {"backend": inference["backend"], "batch_size": inference["batch_size"]}
    if inference.get("legible_text_px") is not None:  # sets the rows' text_legible (never regenerates a row)
        kept["legible_text_px"] = inference["legible_text_px"]
    backend = (entry or {}).get("backend") or inference["backend"]
    if backend == "transformers" and inference.get("kv_cache", "dynamic") != "dynamic":
        kept["kv_cache"] = inference["kv_cache"]  # a static cache attends over padded slots: other float sums
    if backend == "openai":
        kept["openai"] = {"base_url": redact_url((inference.get("openai") or {}).get("base_url"))}
    if backend == "vllm":
        kept["vllm"] = {k: v for k, v in (inference.get("vllm") or {}).items() if k != "python"}
    return kept


def data_url(path: str) -> tuple[str, str]:
    """The image as a data URL, and a short stand-in for the recorded prompt. A plain file (8-bit RGB or grey,
    opaque, upright) goes as it is; any other is re-encoded as PNG from the pixels the transformers backend sees
    (EXIF orientation applied, transparency on white, 16-bit scaled), since a server need not do the same."""
    try:
        raw, reencoded = images.as_sent(Path(path).read_bytes())
    except (OSError, ValueError, SyntaxError) as err:
        raise PipelineError(f"{path}: cannot read image ({err}); rerun the render stage") from err
    mime = "image/png" if reencoded else mimetypes.guess_type(path)[0] or "image/png"
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


def answer_kind(token: str) -> str | None:
    """"yes" / "no" when a logprobs token string is a spelling the transformers backend counts for P(yes)
    (vlm.answer_token_ids: a word of ANSWER_WORDS, bare or after one prefix of WORD_PREFIXES), else None."""
    from pii.inference.vlm import (  # one definition for both backends; not at import (Snakefile)
        ANSWER_WORDS,
        WORD_PREFIXES,
    )

    for kind, words in ANSWER_WORDS.items():
        for prefix in WORD_PREFIXES:
            if token.startswith(prefix) and token[len(prefix):] in words:
                return kind
    return None


def first_token_candidates(logprobs: dict | None) -> list[tuple[str, float]]:
    """(token, logprob) of the first generated token's candidates in a chat completion choice's ``logprobs``: its
    ``top_logprobs``, plus the chosen token itself when the list lacks it (a sampled token outside the top k).
    Non-finite logprobs (servers write -9999 or null for -inf) are left out. Empty without logprobs."""
    content = (logprobs or {}).get("content") or []
    if not content or not isinstance(content[0], dict):
        return []
    first = content[0]
    pairs = []
    for cand in first.get("top_logprobs") or []:
        if isinstance(cand, dict) and isinstance(cand.get("token"), str):
            pairs.append((cand["token"], cand.get("logprob")))
    chosen = (first.get("token"), first.get("logprob"))
    if isinstance(chosen[0], str) and chosen not in pairs:
        pairs.append(chosen)
    return [(t, float(lp)) for t, lp in pairs
            if isinstance(lp, int | float) and math.isfinite(lp) and lp > -9000]


def answer_logprobs(logprobs: dict | None) -> dict[str, list[float]]:
    """The logprobs of the first generated token's Yes-like and No-like candidates."""
    mass: dict[str, list[float]] = {"yes": [], "no": []}
    for token, lp in first_token_candidates(logprobs):
        kind = answer_kind(token)
        if kind:
            mass[kind].append(lp)
    return mass


def p_yes_from_logprobs(logprobs: dict | None) -> float | None:
    """P(yes) = P(Yes-like) / (P(Yes-like) + P(No-like)) over the first generated token's candidates (see the
    module docstring); None without logprobs or without any Yes-like or No-like candidate."""
    mass = answer_logprobs(logprobs)
    if not mass["yes"] and not mass["no"]:
        return None
    yes, no = (logsumexp(mass[k]) for k in ("yes", "no"))
    if yes == -math.inf:
        return 0.0
    if no == -math.inf:
        return 1.0
    return 1.0 / (1.0 + math.exp(no - yes)) if no - yes < 700 else 0.0


def logsumexp(values: list[float]) -> float:
    if not values:
        return -math.inf
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def decoding_values(decoding: dict, top_k_off: int = -1) -> dict:
    """The decoding values every request carries, greedy included, so none is left to the server's defaults
    (vLLM >= 0.7 fills each field a request leaves out from the checkpoint's generation_config). The vllm backend's
    engine requests carry the same (vllm_engine.sampling_values).

    top_k off is ``top_k_off``: -1 for an OpenAI-compatible server, because vLLM's passes top_k to SamplingParams,
    where -1 means "all tokens" in every version (0.7 rejects 0: "top_k must be -1 (disable), or at least 1"; later
    ones take 0 or -1), while the config's 0 is transformers' "off". Greedy is temperature 0 (vLLM's greedy) with
    top_p 1 and top_k off; repetition_penalty applies to greedy decoding too, so it is the config's either way."""
    if decoding["do_sample"]:
        top_k = int(decoding["top_k"])
        values = {"temperature": float(decoding["temperature"]), "top_p": float(decoding["top_p"]),
                  "top_k": top_k if top_k > 0 else top_k_off}
    else:
        values = {"temperature": 0.0, "top_p": 1.0, "top_k": top_k_off}
    return {**values, "repetition_penalty": float(decoding["repetition_penalty"])}


_JSON_TYPE = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean",
              type(None): "null"}


def read_completion(text: str) -> tuple[dict | None, str | None]:
    """(the chat completion, None) when an HTTP 200 body is one whose first choice has a message with text
    content (``""`` included: an empty answer is an answer), else (None, what is wrong with it). Such a body is a
    server fault, retried like a 5xx and never written as an answer."""
    try:
        data = json.loads(text)
    except ValueError:
        return None, "the body is not JSON"
    if not isinstance(data, dict):
        return None, f"the body is {_JSON_TYPE.get(type(data), type(data).__name__)}, not a JSON object"
    if data.get("error") is not None:
        return None, "an error object"
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        return None, "no choices" if choices is None else "empty choices"
    message = choices[0].get("message") if isinstance(choices[0], dict) else None
    if not isinstance(message, dict):
        return None, "a choice without a message"
    if not isinstance(message.get("content"), str):
        return None, "a message without text content"
    return data, None


def cut_connection(resp, expired: threading.Event) -> None:
    """Shut the socket under a streamed response (from the watchdog thread), so the read waiting on it ends now."""
    expired.set()
    stream = resp.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    if sock is not None:
        try:
            socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the plain socket's, under TLS too
        except OSError:
            pass


class RequestDeadline(Exception):
    """A request's answer did not arrive whole within ``timeout_s``."""


class FieldsRejected(Exception):
    """The server rejected optional fields of a request (HTTP 400/422 naming them): ``kind`` is "logprobs"
    (logprobs / top_logprobs) or "decoding" (top_k / repetition_penalty)."""

    def __init__(self, kind: str, answer: str):
        super().__init__(answer)
        self.kind, self.answer = kind, answer


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
        # top_k / repetition_penalty: switched off for the run when the server rejects them (neutral values only)
        self.send_extra_decoding = True
        self.decoding_rejected: str | None = None
        # P(yes) from logprobs: POPE only; switched off for the run when the server rejects the fields
        self.want_p_yes = job.wants_p_yes
        self.send_logprobs = self.want_p_yes
        self.logprobs_rejected: str | None = None
        self.n_with_logprobs = self.n_without_logprobs = self.n_no_answer_candidate = self.n_one_sided = 0
        self._lock = threading.Lock()

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
        body = {"model": self.served_name, "messages": build_messages(data_url(req.image_path)[0], req.text_prompt),
                "max_tokens": int(self.job.task_cfg["max_new_tokens"]), "seed": int(seed),
                **decoding_values(self.job.decoding)}
        if not self.send_extra_decoding:
            for key in EXTRA_DECODING:
                body.pop(key)
        if self.send_logprobs:
            body.update(logprobs=True, top_logprobs=TOP_LOGPROBS)
        return body

    @property
    def url(self) -> str:
        return f"{self.base_url}/chat/completions"

    def post(self, body: dict, sample_id: str) -> dict:
        """POST with retries on 429 / 5xx / timeouts / connection errors / faults in an HTTP 200, exponential
        backoff. Returns a chat completion whose first choice has a message with text content."""
        import httpx

        shown = redact_url(self.url)
        retries = int(self.cfg["max_retries"])
        last = ""
        for attempt in range(retries + 1):
            try:
                status, text = self.exchange(body)
            except (httpx.TransportError, RequestDeadline) as err:  # httpx's timeouts are TransportErrors
                last = self.redact(f"{type(err).__name__}: {err}")
            else:
                if status == 200:
                    data, fault = read_completion(text)
                    if fault is None:
                        return data
                    last = self.redact(f"HTTP 200 but {fault}: {' '.join(text.split()) or '(empty body)'}")[:200]
                else:
                    last = self.redact(f"HTTP {status}: {' '.join(text.split())}")[:200]
                    self.check_rejection(status, text, last, body, sample_id)
            if attempt < retries:
                wait = self.backoff_s * 2 ** attempt
                log.warning("%s: %s for %s; retry %d/%d in %.1fs", shown, last, sample_id, attempt + 1, retries, wait)
                time.sleep(wait)
        raise PipelineError(f"{shown}: request for {sample_id} failed after {retries} retries ({last}); check the "
                            "server or raise inference.openai.max_retries / timeout_s")

    def check_rejection(self, status: int, text: str, last: str, body: dict, sample_id: str) -> None:
        """Raise for an answer other than 200 that is not worth retrying: the server rejects fields we can drop
        (FieldsRejected), the key (401/403) or the request (other 4xx)."""
        shown = redact_url(self.url)
        if status in (400, 422):
            named = text.lower()
            if any(key in body for key in EXTRA_DECODING) and any(key in named for key in EXTRA_DECODING):
                raise FieldsRejected("decoding", last)
            if "logprobs" in body and "logprob" in named:
                raise FieldsRejected("logprobs", last)
        if status in AUTH_STATUS:
            raise PipelineError(f"{shown}: request for {sample_id} rejected ({last}); check the API key in "
                                f"${self.key_env} (the variable named by inference.openai.api_key_env)")
        if status not in RETRY_STATUS:
            raise PipelineError(f"{shown}: request for {sample_id} rejected ({last}); check "
                                f"models.{self.job.model}.served_name and the server")

    def exchange(self, body: dict) -> tuple[int, str]:
        """One POST and its whole answer: (status, body text). httpx's timeout bounds each read, so a server that
        trickles a byte now and then would hold a request for ever; a watchdog shuts the connection at
        ``timeout_s`` after the request starts (a server that sends nothing at all meets httpx's read timeout)."""
        import httpx

        timeout = float(self.cfg["timeout_s"])
        deadline = time.monotonic() + timeout
        expired = threading.Event()
        chunks: list[bytes] = []
        with self.client.stream("POST", self.url, json=body) as resp:
            watchdog = threading.Timer(max(0.0, deadline - time.monotonic()), cut_connection, (resp, expired))
            watchdog.daemon = True
            watchdog.start()
            try:
                for chunk in resp.iter_bytes():
                    chunks.append(chunk)
                    if time.monotonic() > deadline:  # where no socket could be shut (another transport)
                        expired.set()
                        break
            except httpx.TransportError:
                if not expired.is_set():
                    raise
            finally:
                watchdog.cancel()
                watchdog.join()  # a cut under way ends before the answer is judged
        if expired.is_set():
            raise RequestDeadline(f"no complete answer within timeout_s = {timeout:g} s (HTTP {resp.status_code}, "
                                  f"{sum(map(len, chunks))} bytes of the body by then)")
        return resp.status_code, b"".join(chunks).decode("utf-8", errors="replace")

    def one(self, req, seed: int) -> dict:
        while True:  # ends: each FieldsRejected turns its fields off for all later bodies (or fails the job)
            try:
                data = self.post(self.body(req, seed), req.sample_id)
                break
            except FieldsRejected as err:
                self.drop_fields(err, req.sample_id)
        choice = data["choices"][0]
        text = choice["message"]["content"].strip()
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        finish = choice.get("finish_reason") or "stop"
        if not text:
            self.n_empty += 1
            log.warning("empty response for %s (finish_reason %s)", req.sample_id, finish)
            finish = "error"
        p_yes = self.read_p_yes(choice, req.sample_id) if self.want_p_yes else None
        return {"response": text, "n_prompt_tokens": int(usage.get("prompt_tokens") or 0),
                "n_response_tokens": int(usage.get("completion_tokens") or 0),
                "finish_reason": finish if finish in ("stop", "length") else ("error" if not text else "stop"),
                "seed": int(seed), "p_yes": p_yes}

    def drop_fields(self, err: FieldsRejected, sample_id: str) -> None:
        """Send later requests without the fields the server rejected: the logprobs fields (p_yes stays null), or
        top_k / repetition_penalty when the config's values are neutral (then the server's own values apply,
        which ``transformers serve`` takes from the checkpoint's generation_config). Sampling with a top_k or a
        repetition penalty such a server cannot be told of fails the job rather than running other decoding."""
        with self._lock:
            if err.kind == "logprobs":
                if self.send_logprobs:
                    log.warning("the server rejects logprobs (%s); asking without them, p_yes stays null", err.answer)
                    self.send_logprobs, self.logprobs_rejected = False, err.answer
                return
            values = decoding_values(self.job.decoding)
            unsendable = [f"decoding.{key} {self.job.decoding[key]}" for key, off in EXTRA_DECODING.items()
                          if values[key] != off]
            if unsendable:
                raise PipelineError(
                    f"{redact_url(self.url)}: request for {sample_id} rejected ({err.answer}); the server does not "
                    f"take top_k / repetition_penalty, so {' and '.join(unsendable)} cannot be applied; use a server "
                    "that takes them (vLLM) or set decoding.top_k: 0 and decoding.repetition_penalty: 1.0")
            if self.send_extra_decoding:
                log.warning("the server rejects top_k / repetition_penalty (%s); asking without them (the config's "
                            "are neutral; the server's own values for them apply)", err.answer)
                self.send_extra_decoding, self.decoding_rejected = False, err.answer

    def read_p_yes(self, choice: dict, sample_id: str) -> float | None:
        """P(yes) of one POPE answer from its logprobs, counting what the server gave."""
        has_logprobs = bool(first_token_candidates(choice.get("logprobs")))
        p_yes = p_yes_from_logprobs(choice.get("logprobs")) if has_logprobs else None
        sides = answer_logprobs(choice.get("logprobs"))
        with self._lock:
            if not has_logprobs:
                if not self.n_without_logprobs and self.logprobs_rejected is None:
                    log.warning("no logprobs in the answer for %s; p_yes stays null where the server gives none",
                                sample_id)
                self.n_without_logprobs += 1
            else:
                self.n_with_logprobs += 1
                self.n_no_answer_candidate += p_yes is None
                self.n_one_sided += bool(sides["yes"]) != bool(sides["no"])
        return p_yes

    def run(self, chunk: list, seed: int) -> list[dict]:
        """Requests of a batch concurrently; request k of the batch uses the server seed ``seed + k``."""
        workers = max(1, min(int(self.cfg["concurrency"]), len(chunk)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(lambda kr: self.one(kr[1], seed + kr[0]), enumerate(chunk)))

    def metadata(self) -> dict:
        import httpx

        return {"base_url": redact_url(self.base_url), "served_name": self.served_name,
                "n_empty_responses": self.n_empty, "device": "remote", "versions": {"httpx": httpx.__version__},
                "p_yes": self.p_yes_facts(), "decoding_sent": self.decoding_facts()}

    def decoding_facts(self) -> dict:
        """The decoding values the requests carried (all of them unless the server rejected top_k /
        repetition_penalty: then its answer, and the values requests carried from then on)."""
        values = decoding_values(self.job.decoding)
        if not self.send_extra_decoding:
            values = {k: v for k, v in values.items() if k not in EXTRA_DECODING}
        return {**values, "rejected_by_server": self.decoding_rejected}

    def p_yes_facts(self) -> dict:
        """Where p_yes came from in this run (requests of this run only: a resumed job's earlier batches are not
        counted; the file's ``n_p_yes`` counts every row)."""
        if not self.want_p_yes:
            return {"requested": False, "source": None, "note": f"not asked for the {self.job.task} task"}
        facts = {"requested": self.logprobs_rejected is None, "top_logprobs": TOP_LOGPROBS,
                 "source": "first generated token's top_logprobs", "rejected_by_server": self.logprobs_rejected,
                 "answers_with_logprobs": self.n_with_logprobs, "answers_without_logprobs": self.n_without_logprobs,
                 "answers_without_yes_no_candidate": self.n_no_answer_candidate,
                 # only Yes-like or only No-like candidates listed: p_yes is 1 or 0, the other side's mass unknown
                 # (below the smallest listed probability)
                 "answers_with_one_side_only": self.n_one_sided}
        if self.logprobs_rejected is not None:
            facts["note"] = "the server rejected the logprobs fields; p_yes is null"
        elif self.n_without_logprobs and not self.n_with_logprobs:
            facts["note"] = "the server returned no logprobs; p_yes is null"
        elif self.n_without_logprobs:
            facts["note"] = "the server returned logprobs for some answers only; p_yes is null for the others"
        else:
            facts["note"] = "p_yes from logprobs"
        return facts
