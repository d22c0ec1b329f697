"""A black-box VLM judge over an OpenAI-compatible chat-completions API (docs/rewards.md#judges).

Serving shape as UnifiedReward (CodeGoat24/UnifiedReward ``vllm_server.sh``; Flow-GRPO
``flow_grpo/rewards.py:unifiedreward_score_sglang``): ``POST {base_url}/chat/completions`` with one user message
whose content is the instruction text plus the image(s) as base64 PNG data URLs, ``temperature=0``, requests fanned
out in parallel. Any vLLM / sglang / OpenAI endpoint works.

Two modes:

* ``pointwise`` (MJ-Bench single-image rating, UnifiedReward pointwise score): the judge rates one image on a
  numeric scale ``[low, high]`` (default 1-10); the reward is the rating normalized to [0, 1].
* ``pairwise`` (GenAI-Bench labels ``[[A>B]]``, ``[[B>A]]``, ``[[A=B=Good]]``, ``[[A=B=Bad]]``):
  :meth:`VLMJudge.compare` gives P(a > b) in {0, 0.5, 1}; as a reward, images that share a prompt in a batch are
  compared round-robin and each gets its win rate (ties count 1/2). The A/B order is randomized per query
  (``swap="random"``, seeded) or both orders are asked and averaged (``swap="both"``) against position bias.

Strict parsing: the reply's last non-empty line must be exactly ``Final Score: N`` (``reply_format="final_score"``,
the UnifiedReward marker) or the JSON object ``{"RATING": N}`` (``reply_format="json"``, MJ-Bench style), with N on
the scale, and the marker must appear once; a pairwise reply must end with exactly one label. Anything else, a
request that still times out or fails after the retries, or a malformed response is **NaN** (Flow-GRPO's fallback
of 0.0 silently biases RL); consumers drop NaN samples with :func:`rewardflow.rewards.base.finite_mask`.

Transport: ``urllib`` from the standard library, a thread pool of ``max_concurrency`` workers, ``timeout`` seconds
as a **total deadline** per request (connect, headers and body together: when it passes, the request's socket is shut
down, so a server that drips bytes cannot hold a request longer), and up to ``max_retries`` retries with
exponential backoff ``min(backoff * 2**k, backoff_max)`` (a ``Retry-After`` header is honored up to ``backoff_max``)
on timeouts, connection errors, HTTP 408, 429 and 5xx. 401/403/404 are configuration errors and raise at once, and
so is a redirect (3xx): no redirect is ever followed, so the API key and the images only go to ``base_url``.
A reply body over 16 MiB is a failed request.

The API key is read from the environment variable named by ``api_key_env`` at each request (it is never stored on
the object, so it cannot show up in a repr, a pickle or a checkpoint). Surrounding whitespace (a trailing newline
from ``$(cat key.txt)``) is stripped; a key with whitespace, control or non-ASCII characters inside is refused at
construction without echoing it; the key is redacted from every log line and error.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import logging
import math
import os
import random
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

import torch

from rewardflow.io.images import to_pil
from rewardflow.rewards.base import Reward, register_reward

logger = logging.getLogger(__name__)

POINTWISE_TEMPLATE = (
    "You are an expert judge of AI-generated images. Rate the image for the text prompt below, considering both "
    "how faithfully it depicts the prompt (objects, attributes, counts, spatial relations) and its visual quality "
    "(artifacts, distortions, aesthetics).\n"
    "Prompt: {prompt}\n"
    "Use a scale from {low} (worst) to {high} (best). You may reason briefly first, but the last line of your "
    "reply must be exactly {marker}, with N a number from {low} to {high}, and nothing after it."
)
PAIRWISE_TEMPLATE = (
    "You are an expert judge of AI-generated images. Two images were generated for the text prompt below: the "
    "first image is A, the second image is B. Compare them on faithfulness to the prompt and visual quality.\n"
    "Prompt: {prompt}\n"
    "You may reason briefly first, but the last line of your reply must be exactly one of these labels and "
    "nothing else: [[A>B]] (A is better), [[B>A]] (B is better), [[A=B=Good]] (both equally good), "
    "[[A=B=Bad]] (both equally bad)."
)
_MARKERS = {"final_score": "Final Score: N", "json": '{"RATING": N}'}
_FINAL_SCORE = re.compile(r"Final Score:\s*([+-]?\d+(?:\.\d+)?)")
_LABEL = re.compile(r"\[\[([^\[\]]*)\]\]")
_PAIR_LABELS = {"A>B": ("A", 1.0), "B>A": ("B", 0.0), "A=B=Good": ("tie", 0.5), "A=B=Bad": ("tie", 0.5)}


# ----------------------------------------------------------------------------------------------- parsing
def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def parse_rating(text: str, low: float, high: float, reply_format: str = "final_score") -> float | None:
    """The rating in a pointwise reply, or None unless the reply ends with exactly one well-formed marker whose
    value lies in ``[low, high]``."""
    last = _last_line(text)
    if reply_format == "final_score":
        if len(_FINAL_SCORE.findall(text)) != 1:
            return None
        m = _FINAL_SCORE.fullmatch(last)
        if m is None:
            return None
        value = float(m.group(1))
    elif reply_format == "json":
        if text.count('"RATING"') != 1:
            return None
        try:
            obj = json.loads(last)
        except ValueError:
            return None
        if not isinstance(obj, dict) or set(obj) != {"RATING"}:
            return None
        value = obj["RATING"]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        value = float(value)
    else:
        raise ValueError(f"unknown reply_format {reply_format!r}; use 'final_score' or 'json'")
    return value if math.isfinite(value) and low <= value <= high else None


def parse_preference(text: str) -> tuple[str, float] | None:
    """``(choice, P(A > B))`` from a pairwise reply ending with exactly one GenAI-Bench label, else None."""
    labels = _LABEL.findall(text)
    if len(labels) != 1 or labels[0] not in _PAIR_LABELS or _last_line(text) != f"[[{labels[0]}]]":
        return None
    return _PAIR_LABELS[labels[0]]


# ----------------------------------------------------------------------------------------------- transport
class JudgeConfigError(ValueError):
    """The endpoint rejects every request (bad key, model or URL): raised, not turned into NaN."""


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


class _Failed(Exception):
    """A request that failed for good (after retries, or a non-retryable reply): that sample is NaN."""


@dataclass
class JudgeReply:
    """One judged query. ``value``: normalized rating in [0, 1] (pointwise) or P(A > B) (pairwise); NaN unless
    ``parse_ok``. ``error`` says why a failed query failed (request error or unparseable ``raw_text``)."""

    value: float
    raw_text: str | None = None
    parse_ok: bool = False
    choice: str | None = None
    error: str | None = None


MAX_REPLY_BYTES = 16 * 2 ** 20


def read_api_key(env: str | None) -> str | None:
    """The API key in environment variable ``env``, surrounding whitespace stripped; None when unset or blank.
    A key with whitespace, control or non-ASCII characters inside is refused (the message never shows it)."""
    raw = os.environ.get(env) if env else None
    key = raw.strip() if raw else ""
    if not key:
        return None
    bad = [c for c in key if not 0x21 <= ord(c) <= 0x7E]
    if bad:
        kinds = sorted({"whitespace" if c.isspace() else "control" if ord(c) < 32 or ord(c) == 127 else "non-ASCII"
                        for c in bad})
        raise JudgeConfigError(f"vlm_judge: the API key in ${env} has {len(bad)} {'/'.join(kinds)} character(s) "
                               f"inside it ({len(key)} characters in all); set ${env} to the key alone")
    return key


class _Deadline:
    """A request's total time limit: when it passes, every socket the request opened is shut down, which ends
    any blocked read at once (a per-read socket timeout cannot stop a server that drips one byte at a time)."""

    def __init__(self, seconds: float):
        self.expired = False
        self._socks: list = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    @staticmethod
    def _kill(sock) -> None:
        try:
            socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the raw fd (also under an SSL wrapper)
        except OSError:
            pass

    def watch(self, sock) -> None:
        with self._lock:
            self._socks.append(sock)
            if self.expired:
                self._kill(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for s in self._socks:
                self._kill(s)

    def cancel(self) -> None:
        self._timer.cancel()


class _DeadlineConnections:
    """Handler mixin: every connection the request opens is watched by the request's :class:`_Deadline`."""

    def __init__(self, deadline: _Deadline):
        super().__init__()
        self.deadline = deadline

    def do_open(self, http_class, req, **kwargs):
        deadline = self.deadline

        class Watched(http_class):
            def connect(self):
                super().connect()
                deadline.watch(self.sock)

        return super().do_open(Watched, req, **kwargs)


class _HTTPHandler(_DeadlineConnections, urllib.request.HTTPHandler):
    pass


class _HTTPSHandler(_DeadlineConnections, urllib.request.HTTPSHandler):
    pass


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Follow no redirect: the 3xx reply reaches the caller as an ``HTTPError`` (a followed redirect would carry
    the ``Authorization`` header to whatever server the reply names)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def _origin(url: str) -> str:
    parts = urlsplit(url or "")
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}" if parts.scheme else repr(url)


class ChatClient:
    """Minimal OpenAI-compatible ``/chat/completions`` client: retries, backoff, a total deadline per request,
    thread-pool fan-out; follows no redirect."""

    def __init__(self, base_url: str, model: str, api_key_env: str | None = "OPENAI_API_KEY",
                 timeout: float = 60.0, max_retries: int = 3, backoff: float = 1.0, backoff_max: float = 30.0,
                 max_concurrency: int = 8, temperature: float = 0.0, max_tokens: int = 512):
        if not base_url or not model:
            raise ValueError("vlm_judge needs base_url (e.g. http://localhost:8000/v1) and model (the served "
                             "model name)")
        if urlsplit(base_url).scheme not in ("http", "https"):
            raise ValueError(f"vlm_judge base_url must start with http:// or https://, got {base_url!r}")
        numbers = {"timeout": timeout, "backoff": backoff, "backoff_max": backoff_max, "temperature": temperature}
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in numbers.values()):
            raise ValueError(f"vlm_judge: timeout, backoff, backoff_max and temperature must be finite numbers, "
                             f"got {numbers}")
        if max_concurrency < 1 or max_retries < 0 or timeout <= 0 or backoff < 0 or backoff_max < 0:
            raise ValueError("vlm_judge: max_concurrency >= 1, max_retries >= 0, timeout > 0 and backoff, "
                             "backoff_max >= 0 are required")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key_env = model, api_key_env
        self.timeout, self.max_retries = float(timeout), int(max_retries)
        self.backoff, self.backoff_max = float(backoff), float(backoff_max)
        self.max_concurrency = int(max_concurrency)
        self.temperature, self.max_tokens = float(temperature), int(max_tokens)
        if api_key_env and read_api_key(api_key_env) is None:  # also refuses a malformed key, here at load
            logger.warning("vlm_judge: environment variable %s is not set; sending requests without an API key",
                           api_key_env)

    def __repr__(self) -> str:
        return (f"ChatClient(url={self.url!r}, model={self.model!r}, api_key_env={self.api_key_env!r}, "
                f"timeout={self.timeout}, max_retries={self.max_retries}, max_concurrency={self.max_concurrency})")

    def _key(self) -> str | None:
        return read_api_key(self.api_key_env)

    def redact(self, text: str) -> str:
        raw = os.environ.get(self.api_key_env) if self.api_key_env else None
        for secret in sorted({raw or "", (raw or "").strip()}, key=len, reverse=True):
            if secret.strip():
                text = text.replace(secret, "***")
        return text

    def _post(self, content: list[dict]) -> str:
        payload = {"model": self.model, "messages": [{"role": "user", "content": content}],
                   "temperature": self.temperature, "max_tokens": self.max_tokens}
        headers = {"Content-Type": "application/json"}
        key = self._key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        req = urllib.request.Request(self.url, data=json.dumps(payload).encode(), headers=headers, method="POST")
        deadline = _Deadline(self.timeout)
        opener = urllib.request.build_opener(_NoRedirect, _HTTPHandler(deadline), _HTTPSHandler(deadline))
        try:
            with opener.open(req, timeout=self.timeout) as resp:
                body = resp.read(MAX_REPLY_BYTES + 1)
                # read(n) returns a body cut short by a closed connection without complaint
                if resp.length and len(body) <= MAX_REPLY_BYTES:
                    raise http.client.IncompleteRead(body, resp.length)
            if deadline.expired:
                raise TimeoutError
        except urllib.error.HTTPError as e:
            if deadline.expired:
                raise _Retryable(f"timed out after {self.timeout:g}s") from None
            self._http_error(e)
        except Exception as e:  # noqa: BLE001 - every transport failure is classified below
            if deadline.expired or isinstance(e, (TimeoutError, socket.timeout)) or (
                    isinstance(e, urllib.error.URLError) and isinstance(e.reason, (TimeoutError, socket.timeout))):
                raise _Retryable(f"timed out after {self.timeout:g}s") from None
            reason = e.reason if isinstance(e, urllib.error.URLError) else e
            if isinstance(reason, (ConnectionError, OSError, http.client.HTTPException)):
                raise _Retryable(f"connection error: {type(reason).__name__}") from None
            raise _Failed(f"request error: {type(e).__name__}: {self.redact(str(reason))}") from None
        finally:
            deadline.cancel()
        if len(body) > MAX_REPLY_BYTES:
            raise _Failed(f"reply larger than {MAX_REPLY_BYTES // 2 ** 20} MiB")
        try:
            message = json.loads(body)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            excerpt = self.redact(body[:200].decode("utf-8", "replace"))
            raise _Failed(f"malformed chat-completions response: {excerpt!r}") from None
        if isinstance(message, list):  # content parts
            message = "".join(p.get("text", "") for p in message if isinstance(p, dict))
        if not isinstance(message, str):
            raise _Failed("malformed chat-completions response: message content is not text")
        return message

    def _http_error(self, e: urllib.error.HTTPError):
        try:
            detail = self.redact(e.read()[:200].decode("utf-8", "replace")) if e.fp is not None else ""
        except Exception:  # noqa: BLE001 - the body of an error reply is only a hint
            detail = ""
        if 300 <= e.code < 400:
            target = _origin(e.headers.get("Location", "")) if e.headers else "?"
            raise JudgeConfigError(
                f"vlm_judge: {self.url} answered HTTP {e.code}, a redirect to {self.redact(target)}; the judge "
                "follows no redirect (it would send the API key and the images to another address): set base_url "
                "to the address that serves /chat/completions") from None
        if e.code in (408, 429) or e.code >= 500:
            retry_after = e.headers.get("Retry-After") if e.headers else None
            try:
                retry_after = float(retry_after) if retry_after is not None else None
            except ValueError:
                retry_after = None
            if retry_after is not None and not math.isfinite(retry_after):
                retry_after = None
            raise _Retryable(f"HTTP {e.code}", retry_after) from None
        if e.code in (401, 403, 404):
            raise JudgeConfigError(
                f"vlm_judge: {self.url} answered HTTP {e.code} ({detail.strip()!r}); check base_url, model "
                f"{self.model!r} and the API key in ${self.api_key_env}") from None
        raise _Failed(f"HTTP {e.code}: {detail.strip()!r}") from None

    def complete(self, content: list[dict]) -> str:
        """One chat completion with retries; raises ``_Failed`` (or ``JudgeConfigError``) when it gives up."""
        for attempt in range(self.max_retries + 1):
            try:
                return self._post(content)
            except _Retryable as e:
                if attempt == self.max_retries:
                    raise _Failed(f"{e} (gave up after {attempt + 1} attempts)") from None
                delay = min(self.backoff * 2 ** attempt, self.backoff_max)
                if e.retry_after is not None:
                    delay = min(max(delay, e.retry_after), self.backoff_max)
                logger.warning("vlm_judge: request to %s failed (%s); retry %d/%d in %.2fs", self.url, e,
                               attempt + 1, self.max_retries, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def complete_many(self, contents: list[list[dict]]) -> list[str | _Failed]:
        """Run the queries with at most ``max_concurrency`` in flight; a failed one is returned as its error."""

        def one(c):
            try:
                return self.complete(c)
            except _Failed as e:
                return e

        if not contents:
            return []
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(contents))) as pool:
            return list(pool.map(one, contents))


def image_data_url(image: torch.Tensor, size: int | None = None) -> str:
    """``[3, H, W]`` float in [0, 1] -> ``data:image/png;base64,...`` (optionally resized to ``size``x``size``
    with PIL bicubic, as UnifiedReward resizes to 512x512 before sending)."""
    from PIL import Image

    pil = to_pil(image)
    if size is not None:
        pil = pil.resize((int(size), int(size)), Image.BICUBIC)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# ----------------------------------------------------------------------------------------------- reward
class VLMJudge(Reward):
    """Black-box VLM judge (see the module docstring). ``last_replies`` keeps the replies of the last call."""

    name = "vlm_judge"
    modality = "image"
    differentiable = False

    def __init__(self, client: ChatClient, mode: str = "pointwise", template: str | None = None,
                 scale: tuple[float, float] = (1, 10), reply_format: str = "final_score",
                 image_size: int | None = None, swap: str = "random", seed: int = 0):
        super().__init__()
        if mode not in ("pointwise", "pairwise"):
            raise ValueError(f"vlm_judge mode must be 'pointwise' or 'pairwise', got {mode!r}")
        if reply_format not in _MARKERS:
            raise ValueError(f"unknown reply_format {reply_format!r}; use one of {sorted(_MARKERS)}")
        if swap not in ("random", "both", "none"):
            raise ValueError(f"swap must be 'random', 'both' or 'none', got {swap!r}")
        low, high = (float(v) for v in scale)
        if not low < high:
            raise ValueError(f"scale must be (low, high) with low < high, got {scale}")
        self.client, self.mode, self.reply_format = client, mode, reply_format
        self.template = template or (POINTWISE_TEMPLATE if mode == "pointwise" else PAIRWISE_TEMPLATE)
        self.low, self.high, self.image_size, self.swap = low, high, image_size, swap
        self._rng = random.Random(seed)
        self.last_replies: list[JudgeReply] = []
        self._text("check")  # a template with unknown placeholders fails at construction

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, client={self.client!r}, scale=({self.low:g}, {self.high:g})"

    def _text(self, prompt: str) -> str:
        try:
            return self.template.format(prompt=prompt, low=f"{self.low:g}", high=f"{self.high:g}",
                                        marker=_MARKERS[self.reply_format])
        except (KeyError, IndexError) as e:
            raise ValueError(f"vlm_judge template has an unknown placeholder {e}; available: {{prompt}}, {{low}}, "
                             "{high}, {marker}") from None

    def _content(self, prompt: str, *images: torch.Tensor) -> list[dict]:
        parts: list[dict] = [{"type": "text", "text": self._text(prompt)}]
        for im in images:
            parts.append({"type": "image_url", "image_url": {"url": image_data_url(im, self.image_size)}})
        return parts

    def _run(self, contents: list[list[dict]], parse) -> list[JudgeReply]:
        replies = []
        for out in self.client.complete_many(contents):
            if isinstance(out, _Failed):
                replies.append(JudgeReply(math.nan, error=str(out)))
                continue
            parsed = parse(out)
            if parsed is None:
                replies.append(JudgeReply(math.nan, raw_text=out, error="unparseable reply"))
            else:
                replies.append(JudgeReply(parsed[1], raw_text=out, parse_ok=True, choice=parsed[0]))
        bad = [r for r in replies if not r.parse_ok]
        if bad:
            logger.warning("vlm_judge: %d of %d queries gave no score (NaN); first: %s", len(bad), len(replies),
                           self.client.redact(bad[0].error or ""))
        return replies

    # -- pointwise --------------------------------------------------------------------------------------
    def rate(self, media: torch.Tensor, prompts: list[str]) -> list[JudgeReply]:
        """One pointwise query per image; ``value`` is the rating normalized to [0, 1]."""

        def parse(text):
            v = parse_rating(text, self.low, self.high, self.reply_format)
            return None if v is None else (None, (v - self.low) / (self.high - self.low))

        return self._run([self._content(p, m) for m, p in zip(media, prompts)], parse)

    # -- pairwise ---------------------------------------------------------------------------------------
    def compare(self, media_a: torch.Tensor, media_b: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """``Tensor[B]``: P(a_i > b_i) in {0, 0.5, 1} (the mean of both orders with ``swap="both"``), NaN when
        the judge gave no valid label."""
        if media_a.shape != media_b.shape or len(prompts) != media_a.shape[0]:
            raise ValueError(f"compare needs two equally shaped batches and one prompt per pair, got "
                             f"{tuple(media_a.shape)}, {tuple(media_b.shape)} and {len(prompts)} prompts")
        queries = []  # (pair index, flipped)
        for i in range(len(prompts)):
            if self.swap == "both":
                queries += [(i, False), (i, True)]
            else:
                queries.append((i, self.swap == "random" and self._rng.random() < 0.5))
        contents = [self._content(prompts[i], *((media_b[i], media_a[i]) if flip else (media_a[i], media_b[i])))
                    for i, flip in queries]
        replies = self._run(contents, parse_preference)
        self.last_replies = replies
        sums = torch.zeros(len(prompts), dtype=torch.float64)
        counts = torch.zeros(len(prompts), dtype=torch.float64)
        for (i, flip), r in zip(queries, replies):
            sums[i] += (1.0 - r.value) if flip else r.value  # NaN stays NaN
            counts[i] += 1
        return (sums / counts).float()

    def win_rates(self, media: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Round-robin among the images that share a prompt: each image's mean P(win) over its opponents (failed
        comparisons left out). An image without an opponent, or whose comparisons all failed, gets NaN."""
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault(p, []).append(i)
        pairs = [(g[a], g[b]) for g in groups.values() for a in range(len(g)) for b in range(a + 1, len(g))]
        out = torch.full((len(prompts),), math.nan)
        if not pairs:
            return out
        ia, ib = [a for a, _ in pairs], [b for _, b in pairs]
        p = self.compare(media[ia], media[ib], [prompts[a] for a in ia])
        wins = torch.zeros(len(prompts), dtype=torch.float64)
        n = torch.zeros(len(prompts), dtype=torch.float64)
        for (a, b), pab in zip(pairs, p.tolist()):
            if math.isfinite(pab):
                wins[a] += pab
                wins[b] += 1.0 - pab
                n[a] += 1
                n[b] += 1
        ok = n > 0
        out[ok] = (wins[ok] / n[ok]).float()
        return out

    def score(self, media, prompts):
        if self.mode == "pairwise":
            return self.win_rates(media, prompts).to(media.device)
        replies = self.rate(media, prompts)
        self.last_replies = replies
        return torch.tensor([r.value for r in replies], dtype=torch.float32, device=media.device)


@register_reward("vlm_judge", differentiable=False,
                 description="black-box VLM judge over an OpenAI-compatible chat API (pointwise 1-10 or pairwise); "
                             "NaN on failure")
def _vlm_judge(base_url: str | None = None, model: str | None = None, *, api_key_env: str | None = "OPENAI_API_KEY",
               mode: str = "pointwise", template: str | None = None, scale: tuple[float, float] = (1, 10),
               reply_format: str = "final_score", image_size: int | None = None, swap: str = "random",
               seed: int = 0, timeout: float = 60.0, max_retries: int = 3, backoff: float = 1.0,
               backoff_max: float = 30.0, max_concurrency: int = 8, temperature: float = 0.0,
               max_tokens: int = 512) -> VLMJudge:
    """``base_url`` / ``model`` default to the environment variables REWARDFLOW_JUDGE_URL / REWARDFLOW_JUDGE_MODEL."""
    base_url = base_url or os.environ.get("REWARDFLOW_JUDGE_URL")
    model = model or os.environ.get("REWARDFLOW_JUDGE_MODEL")
    if not base_url or not model:
        raise ValueError("vlm_judge needs base_url= and model= (or the environment variables REWARDFLOW_JUDGE_URL "
                         "and REWARDFLOW_JUDGE_MODEL), e.g. base_url='http://localhost:8000/v1', "
                         "model='UnifiedReward'")
    client = ChatClient(base_url, model, api_key_env=api_key_env, timeout=timeout, max_retries=max_retries,
                        backoff=backoff, backoff_max=backoff_max, max_concurrency=max_concurrency,
                        temperature=temperature, max_tokens=max_tokens)
    return VLMJudge(client, mode=mode, template=template, scale=scale, reply_format=reply_format,
                    image_size=image_size, swap=swap, seed=seed)
