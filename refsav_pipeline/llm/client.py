"""Async OpenAI chat-completions client for one model served by several endpoints.

Why its own client rather than the ``openai`` package: we need per-endpoint concurrency
limits, least-in-flight balancing across replicas, health probing of ``/v1/models`` with
dead endpoints skipped and re-probed later, vLLM-only body fields (``mm_processor_kwargs``),
and failures that end as a ``RecordError`` the pipeline can put in a row.

Two kinds of failure are kept apart. A *request* fails (5xx, timeout, broken connection) while
its endpoint still answers its health probe: that costs the request one of its attempts. An
*endpoint* is down when its probe fails too (connection refused, no answer): that costs
nothing. When every endpoint of the model is down the model is in an outage: requests wait
while one of them re-probes with backoff, and go on by themselves when an endpoint answers.
Only an outage longer than ``outage_limit_s`` ends the wait, as ``OutageLimitReached``, which
stops the run instead of failing rows: a vLLM restart takes minutes, and over SA-V's 640K
masklets failing every row in flight would hand the user a long ``--retry-failed``.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import httpx
from pydantic import BaseModel

from refsav_pipeline.llm.concurrency import ConcurrencyController
from refsav_pipeline.llm.config import ClientConfig, ModelEndpointConfig
from refsav_pipeline.llm.errors import (
    BadRequestError,
    ModelCallError,
    OutageLimitReached,
    UnparseableOutputError,
)
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
    concurrency: ConcurrencyController  # its limit, and the endpoint's vLLM metrics
    http: HttpPool = field(repr=False)
    in_flight: int = 0
    healthy: bool | None = None  # None: not probed yet
    retry_at: float = 0.0
    probed_at: float = float("-inf")  # monotonic start of the last probe
    last_error: str = ""  # why the last probe failed
    consecutive_failures: int = 0
    requests: int = 0
    failures: int = 0
    probe_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    outcomes: Counter[str] = field(default_factory=Counter)  # attempts by how they ended

    def snapshot(self) -> dict[str, Any]:
        return {"url": self.url, "healthy": self.healthy, "in_flight": self.in_flight,
                "requests": self.requests, "failures": self.failures,
                "last_error": self.last_error, "limit": self.concurrency.limit}


class Outage(BaseModel):
    """A model none of whose endpoints answers right now (shown by the run's progress)."""

    model: str
    down_s: float
    endpoints: list[str]
    last_error: str


def _why(exc: BaseException) -> str:
    """The root cause of a transport error in words ("Connection refused", not httpx's
    "All connection attempts failed")."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and (seen.errno or seen.strerror):
            return os.strerror(seen.errno) if seen.errno else str(seen.strerror)
        seen = seen.__cause__ or seen.__context__
    return str(exc) or exc.__class__.__name__


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _EndpointDown(Exception):
    """The request broke and the endpoint's probe fails too: the endpoint is down."""


class ModelClient:
    """Chat completions for one model. Bound to the event loop it is first used in."""

    def __init__(self, cfg: ModelEndpointConfig, client_cfg: ClientConfig,
                 pools: Mapping[str, HttpPool], *, rng: random.Random | None = None) -> None:
        """``pools`` maps each endpoint URL of ``cfg`` to its own connections."""
        self.cfg = cfg
        self.ccfg = client_cfg
        self.rng = rng or random.Random()
        self.endpoints = [EndpointState(u, ConcurrencyController(
            u, cfg, client_cfg.concurrency, client_cfg.health_timeout_s), pools[u])
            for u in cfg.endpoints]
        key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.down_since: float | None = None  # monotonic start of the current outage
        self._outage_lock = asyncio.Lock()  # one waiter probes at a time, the others wait
        self._outage_probes = 0

    # -- health ---------------------------------------------------------------------------

    async def probe(self, ep: EndpointState) -> bool:
        """GET /v1/models: healthy iff it answers and lists our served model name."""
        async with ep.probe_lock:
            now = time.monotonic()
            if ep.healthy is not None and (ep.healthy or ep.retry_at > now):
                return bool(ep.healthy)  # someone else just probed it
            return await self._probe_now(ep)

    async def _probe_now(self, ep: EndpointState) -> bool:
        """The probe itself (callers hold ``ep.probe_lock``)."""
        ep.probed_at = time.monotonic()
        ok, error = False, ""
        try:
            r = await ep.http.get(f"{ep.url}/models", headers=self.headers,
                                  timeout=self.ccfg.health_timeout_s)
            if r.status_code == 200:
                names = {m.get("id") for m in r.json().get("data", [])}
                ok = self.cfg.name in names
                if not ok:
                    served = sorted(n for n in names if n)
                    error = f"does not serve {self.cfg.name!r} (serves {served})"
                    log.warning("%s %s", ep.url, error)
            else:
                error = f"health probe answered HTTP {r.status_code}"
        except (httpx.HTTPError, ValueError) as e:
            error = _why(e)
            log.info("health probe of %s failed: %r", ep.url, e)
        ep.last_error = error
        self._set_health(ep, ok)
        return ok

    async def _is_down(self, ep: EndpointState, failed_at: float) -> bool:
        """After a request to ``ep`` broke at ``failed_at``: is the endpoint itself down?

        Probes unless a probe started since (many requests break at once when a server dies;
        one probe answers for all of them).
        """
        async with ep.probe_lock:
            if ep.probed_at < failed_at:
                await self._probe_now(ep)
        return not ep.healthy

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
        """Least loaded healthy endpoint; unprobed and due-for-reprobe ones are probed first.

        While none is healthy this waits (see ``_ride_out_outage``); it never spends attempts.
        """
        while True:
            now = time.monotonic()
            due = [ep for ep in self.endpoints
                   if ep.healthy is None or (ep.healthy is False and ep.retry_at <= now)]
            if due:
                await asyncio.gather(*(self.probe(ep) for ep in due))
            live = [ep for ep in self.endpoints if ep.healthy]
            if live:
                break
            await self._ride_out_outage()
        if self.down_since is not None:
            log.warning("%s answers again after %.0f s", self.cfg.name,
                        time.monotonic() - self.down_since)
            self.down_since = None
        # Reachable but failing (5xx, timeouts) endpoints stay in use — the probe says they are
        # up and a lone endpoint must not be locked out — but come last while they fail.
        return min(live, key=lambda ep: (ep.consecutive_failures > 0,
                                         ep.in_flight / ep.concurrency.limit, ep.requests))

    async def _ride_out_outage(self) -> None:
        """One round of waiting while no endpoint answers: sleep (backoff from
        ``backoff_base_s`` up to ``reprobe_interval_s``), then probe every endpoint.

        Raises ``OutageLimitReached`` once the outage is older than ``outage_limit_s``.
        """
        if self.down_since is None:
            self.down_since, self._outage_probes = time.monotonic(), 0
            log.warning("no endpoint of %s answers (%s); its requests wait", self.cfg.name,
                        self._endpoint_errors())
        async with self._outage_lock:
            if any(ep.healthy for ep in self.endpoints) or self.down_since is None:
                return
            down_for = time.monotonic() - self.down_since
            limit = self.ccfg.outage_limit_s
            if down_for >= limit:
                raise OutageLimitReached(
                    f"no endpoint of model {self.cfg.name} has answered for {down_for:.0f} s "
                    f"(client.outage_limit_s = {limit:g}): {self._endpoint_errors()}")
            delay = min(self.ccfg.backoff_base_s * 2 ** min(self._outage_probes, 30),
                        self.ccfg.reprobe_interval_s)
            self._outage_probes += 1
            await asyncio.sleep(min(max(delay, 0.05), limit - down_for))
            now = time.monotonic()  # one probe per endpoint and round, shared as in _is_down
            await asyncio.gather(*(self._is_down(ep, now) for ep in self.endpoints))

    def _endpoint_errors(self) -> str:
        return "; ".join(f"{ep.url}: {ep.last_error or 'not answering'}"
                         for ep in self.endpoints)

    def outage(self) -> Outage | None:
        """The current outage of this model, if every endpoint is down."""
        if self.down_since is None:
            return None
        return Outage(model=self.cfg.name, down_s=time.monotonic() - self.down_since,
                      endpoints=[ep.url for ep in self.endpoints],
                      last_error=self._endpoint_errors())

    # -- requests -------------------------------------------------------------------------

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        base = min(self.ccfg.backoff_max_s, self.ccfg.backoff_base_s * 2 ** (attempt - 1))
        delay = base * (0.5 + 0.5 * self.rng.random())  # jitter: spread synchronized retries
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.ccfg.backoff_max_s))
        return delay

    async def _attempt(self, ep: EndpointState, body: dict[str, Any]) -> tuple[dict, float]:
        broken: tuple[str, Exception] | None = None
        ep.in_flight += 1
        ep.concurrency.poke(ep.http)
        try:
            async with ep.concurrency.semaphore:
                ep.requests += 1
                t0 = time.perf_counter()
                try:
                    async with asyncio.timeout(self.ccfg.request_timeout_s):
                        r = await ep.http.post(f"{ep.url}/chat/completions", json=body,
                                                 headers=self.headers)
                except (TimeoutError, httpx.TimeoutException) as e:
                    broken = f"timeout from {ep.url}", e
                    ep.concurrency.timed_out()
                except (httpx.ConnectError, httpx.RemoteProtocolError,
                        httpx.ReadError, httpx.WriteError) as e:
                    broken = f"connection error to {ep.url}: {e!r}", e
                latency = time.perf_counter() - t0
        finally:
            ep.in_flight -= 1
        if broken is not None:
            message, exc = broken
            timeout = isinstance(exc, TimeoutError | httpx.TimeoutException)
            ep.outcomes["timeout" if timeout else "connection_error"] += 1
            ep.failures += 1
            if await self._is_down(ep, time.monotonic()):
                raise _EndpointDown(message) from exc
            ep.consecutive_failures += 1
            raise _Retryable(message) from exc
        if r.status_code in RETRYABLE_STATUS or r.status_code >= 500:
            ep.outcomes["server_error"] += 1
            self._note_failure(ep)
            ra = r.headers.get("retry-after")
            raise _Retryable(f"HTTP {r.status_code} from {ep.url}: {r.text[:200]}",
                             retry_after=float(ra) if ra and ra.replace(".", "").isdigit()
                             else None)
        if r.status_code != 200:
            ep.outcomes["bad_request"] += 1
            raise BadRequestError(f"{self.cfg.name}: HTTP {r.status_code} from {ep.url}: "
                                  f"{r.text[:500]}", model=self.cfg.model, attempts=1)
        try:
            data = r.json()
            data["choices"][0]["message"]["content"]  # noqa: B018  (shape check)
        except (ValueError, KeyError, IndexError, TypeError) as e:
            ep.outcomes["malformed"] += 1
            self._note_failure(ep)
            raise _Retryable(f"malformed response from {ep.url}: {r.text[:200]!r}") from e
        ep.outcomes["ok"] += 1
        ep.consecutive_failures = 0
        return data, latency

    def _note_failure(self, ep: EndpointState) -> None:
        ep.failures += 1
        ep.consecutive_failures += 1

    async def chat(self, body: dict[str, Any],
                   parse: Callable[[str], T] | None = None) -> tuple[ChatResponse, T | None]:
        """POST the body until an answer (that ``parse`` accepts, if given) or the budget ends.

        Request failures (timeouts, connection errors, 429/5xx on an endpoint that still
        answers its probe) spend ``max_attempts``; answers ``parse`` rejects (ValueError) spend
        ``max_parse_attempts``. A down endpoint spends nothing: the request goes elsewhere or
        waits out the outage (``OutageLimitReached`` past ``outage_limit_s``).
        """
        body = {**body, "model": self.cfg.name}
        failures = parse_failures = 0
        while True:
            ep = await self._pick()
            try:
                data, latency = await self._attempt(ep, body)
            except _EndpointDown:
                continue
            except _Retryable as e:
                failures += 1
                if failures >= self.ccfg.max_attempts:
                    attempts = failures + parse_failures
                    raise ModelCallError(
                        f"{self.cfg.name}: no answer after {attempts} attempts; last error: "
                        f"{e}", model=self.cfg.model, attempts=attempts) from e
                await asyncio.sleep(self._backoff(failures, e.retry_after))
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
                                attempts=failures + parse_failures + 1, raw=data), parsed
