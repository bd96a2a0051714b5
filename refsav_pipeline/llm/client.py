"""Async OpenAI chat-completions client for one model served by several endpoints.

Why its own client rather than the ``openai`` package: we need per-endpoint concurrency
limits, least-in-flight balancing across replicas, health probing of ``/v1/models`` with
dead endpoints skipped and re-probed later, vLLM-only body fields (``mm_processor_kwargs``),
and failures that end as a ``RecordError`` the pipeline can put in a row.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import httpx

from refsav_pipeline.llm.config import ClientConfig, ModelEndpointConfig
from refsav_pipeline.llm.errors import BadRequestError, ModelCallError, UnparseableOutputError
from refsav_pipeline.llm.results import Usage

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


def jpeg_part(jpeg: bytes) -> dict[str, Any]:
    """An OpenAI ``image_url`` content part carrying the JPEG inline (vLLM reads data URLs)."""
    if not jpeg.startswith(b"\xff\xd8"):
        raise ValueError("image is not JPEG data")
    b64 = base64.b64encode(jpeg).decode("ascii")
    return {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{b64}"}}


@dataclass
class ChatResponse:
    text: str
    usage: Usage
    latency_s: float
    endpoint: str
    attempts: int
    raw: dict[str, Any] = field(repr=False, default_factory=dict)


class HttpPool(Protocol):
    """The connections to one endpoint (``llm.pool.EndpointPool``, or an ``httpx.AsyncClient``):
    answers have ``status_code``, ``headers.get``, ``text`` and ``json()``."""

    async def get(self, url: str, **kwargs: Any) -> Any: ...

    async def post(self, url: str, **kwargs: Any) -> Any: ...


@dataclass
class EndpointState:
    """Live bookkeeping for one base URL."""

    url: str
    semaphore: asyncio.Semaphore
    max_concurrency: int
    http: HttpPool = field(repr=False)
    in_flight: int = 0
    healthy: bool | None = None  # None: not probed yet
    retry_at: float = 0.0
    consecutive_failures: int = 0
    requests: int = 0
    failures: int = 0
    probe_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def snapshot(self) -> dict[str, Any]:
        return {"url": self.url, "healthy": self.healthy, "in_flight": self.in_flight,
                "requests": self.requests, "failures": self.failures}


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ModelClient:
    """Chat completions for one model. Bound to the event loop it is first used in."""

    def __init__(self, cfg: ModelEndpointConfig, client_cfg: ClientConfig,
                 pools: Mapping[str, HttpPool], *, rng: random.Random | None = None) -> None:
        """``pools`` maps each endpoint URL of ``cfg`` to its own connections."""
        self.cfg = cfg
        self.ccfg = client_cfg
        self.rng = rng or random.Random()
        self.endpoints = [EndpointState(u, asyncio.Semaphore(cfg.max_concurrency),
                                        cfg.max_concurrency, pools[u]) for u in cfg.endpoints]
        key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    # -- health ---------------------------------------------------------------------------

    async def probe(self, ep: EndpointState) -> bool:
        """GET /v1/models: healthy iff it answers and lists our served model name."""
        async with ep.probe_lock:
            now = time.monotonic()
            if ep.healthy is not None and (ep.healthy or ep.retry_at > now):
                return bool(ep.healthy)  # someone else just probed it
            ok = False
            try:
                r = await ep.http.get(f"{ep.url}/models", headers=self.headers,
                                        timeout=self.ccfg.health_timeout_s)
                if r.status_code == 200:
                    names = {m.get("id") for m in r.json().get("data", [])}
                    ok = self.cfg.name in names
                    if not ok:
                        log.warning("%s does not serve %r (serves %s)", ep.url, self.cfg.name,
                                    sorted(n for n in names if n))
            except (httpx.HTTPError, ValueError) as e:
                log.info("health probe of %s failed: %r", ep.url, e)
            self._set_health(ep, ok)
            return ok

    def _set_health(self, ep: EndpointState, ok: bool) -> None:
        if ok:
            ep.healthy, ep.consecutive_failures = True, 0
        else:
            if ep.healthy is not False:
                log.warning("endpoint %s for %s marked dead", ep.url, self.cfg.name)
            ep.healthy = False
            ep.retry_at = time.monotonic() + self.ccfg.reprobe_interval_s

    async def check_health(self) -> list[dict[str, Any]]:
        """Probe every endpoint now (ignoring re-probe timers); returns their snapshots."""
        for ep in self.endpoints:
            ep.healthy = None
        await asyncio.gather(*(self.probe(ep) for ep in self.endpoints))
        return [ep.snapshot() for ep in self.endpoints]

    async def _pick(self) -> EndpointState:
        """Least loaded healthy endpoint; unprobed and due-for-reprobe ones are probed first."""
        now = time.monotonic()
        due = [ep for ep in self.endpoints
               if ep.healthy is None or (ep.healthy is False and ep.retry_at <= now)]
        if due:
            await asyncio.gather(*(self.probe(ep) for ep in due))
        live = [ep for ep in self.endpoints if ep.healthy]
        if not live:
            # Wait (as backoff) until the first dead one is due for a re-probe.
            wait = min(ep.retry_at for ep in self.endpoints) - time.monotonic()
            raise _Retryable(f"no healthy endpoint among {self.cfg.endpoints}",
                             retry_after=max(0.0, wait))
        # Reachable but failing (5xx, timeouts) endpoints stay in use — the probe says they are
        # up and a lone endpoint must not be locked out — but come last while they fail.
        return min(live, key=lambda ep: (ep.consecutive_failures > 0,
                                         ep.in_flight / ep.max_concurrency, ep.requests))

    # -- requests -------------------------------------------------------------------------

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        base = min(self.ccfg.backoff_max_s, self.ccfg.backoff_base_s * 2 ** (attempt - 1))
        delay = base * (0.5 + 0.5 * self.rng.random())  # jitter: spread synchronized retries
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.ccfg.backoff_max_s))
        return delay

    async def _attempt(self, ep: EndpointState, body: dict[str, Any]) -> tuple[dict, float]:
        ep.in_flight += 1
        try:
            async with ep.semaphore:
                ep.requests += 1
                t0 = time.perf_counter()
                try:
                    async with asyncio.timeout(self.ccfg.request_timeout_s):
                        r = await ep.http.post(f"{ep.url}/chat/completions", json=body,
                                                 headers=self.headers)
                except (TimeoutError, httpx.TimeoutException) as e:
                    if isinstance(e, httpx.ConnectTimeout):
                        self._set_health(ep, False)
                    else:
                        self._note_failure(ep)
                    raise _Retryable(f"timeout from {ep.url}") from e
                except (httpx.ConnectError, httpx.RemoteProtocolError,
                        httpx.ReadError, httpx.WriteError) as e:
                    ep.failures += 1
                    self._set_health(ep, False)
                    raise _Retryable(f"connection error to {ep.url}: {e!r}") from e
                latency = time.perf_counter() - t0
        finally:
            ep.in_flight -= 1
        if r.status_code in RETRYABLE_STATUS or r.status_code >= 500:
            self._note_failure(ep)
            ra = r.headers.get("retry-after")
            raise _Retryable(f"HTTP {r.status_code} from {ep.url}: {r.text[:200]}",
                             retry_after=float(ra) if ra and ra.replace(".", "").isdigit()
                             else None)
        if r.status_code != 200:
            raise BadRequestError(f"{self.cfg.name}: HTTP {r.status_code} from {ep.url}: "
                                  f"{r.text[:500]}", model=self.cfg.model, attempts=1)
        try:
            data = r.json()
            data["choices"][0]["message"]["content"]  # noqa: B018  (shape check)
        except (ValueError, KeyError, IndexError, TypeError) as e:
            self._note_failure(ep)
            raise _Retryable(f"malformed response from {ep.url}: {r.text[:200]!r}") from e
        ep.consecutive_failures = 0
        return data, latency

    def _note_failure(self, ep: EndpointState) -> None:
        ep.failures += 1
        ep.consecutive_failures += 1

    async def chat(self, body: dict[str, Any],
                   parse: Callable[[str], T] | None = None) -> tuple[ChatResponse, T | None]:
        """POST the body until an answer (that ``parse`` accepts, if given) or the budget ends.

        Transport failures (timeouts, connection errors, 429/5xx, no live endpoint) spend
        ``max_attempts``; answers ``parse`` rejects (ValueError) spend ``max_parse_attempts``.
        """
        body = {**body, "model": self.cfg.name}
        attempts = parse_failures = 0
        last_error = ""
        while True:
            attempts += 1
            try:
                ep = await self._pick()
                data, latency = await self._attempt(ep, body)
            except _Retryable as e:
                last_error = str(e)
                if attempts - parse_failures >= self.ccfg.max_attempts:
                    raise ModelCallError(
                        f"{self.cfg.name}: no answer after {attempts} attempts; last error: "
                        f"{last_error}", model=self.cfg.model, attempts=attempts) from e
                await asyncio.sleep(self._backoff(attempts - parse_failures, e.retry_after))
                continue
            text = data["choices"][0]["message"]["content"] or ""
            parsed: T | None = None
            if parse is not None:
                try:
                    parsed = parse(text)
                except ValueError as e:
                    parse_failures += 1
                    if parse_failures >= self.ccfg.max_parse_attempts:
                        raise UnparseableOutputError(
                            f"{self.cfg.name}: unusable output {parse_failures} times ({e})",
                            raw=text, model=self.cfg.model) from e
                    continue
            u = data.get("usage") or {}
            usage = Usage(prompt_tokens=int(u.get("prompt_tokens") or 0),
                          completion_tokens=int(u.get("completion_tokens") or 0),
                          total_tokens=int(u.get("total_tokens") or 0))
            return ChatResponse(text=text, usage=usage, latency_s=latency, endpoint=ep.url,
                                attempts=attempts, raw=data), parsed
