"""Async OpenAI chat-completions client for one model served by several endpoints.

Why its own client rather than the ``openai`` package: we need per-endpoint concurrency
limits, least-in-flight balancing across replicas, health probing of ``/v1/models`` with
dead endpoints skipped and re-probed later, vLLM-only body fields (``mm_processor_kwargs``),
and failures that end as a ``RecordError`` the pipeline can put in a row.

Two kinds of failure are kept apart. A *request* fails (a transient error: 429, 5xx, timeout,
broken connection) while its endpoint otherwise works: that costs the request one of its
attempts. An *endpoint* is down when its probe fails (connection refused, no answer), or when
its completions keep failing: ``failing_after`` transient errors in a row, with no success in
between (a load balancer answering 503 while a replica restarts, 429s, resets, hangs). That
costs nothing. A down endpoint comes back when its probe succeeds; for one whose completions
failed the probe is a trial completion, since ``/v1/models`` may answer while completions do
not. When every endpoint of the model is down the model is in an outage: requests wait while
one of them re-probes with backoff (never before a ``Retry-After``), and go on by themselves
when an endpoint answers. Only an outage longer than ``outage_limit_s`` ends the wait, as
``OutageLimitReached``, which stops the run instead of failing rows: a vLLM restart takes
minutes, and over SA-V's 640K masklets failing every row in flight would hand the user a long
``--retry-failed``. A request that fails for its own reasons (a malformed answer, or errors
while other requests succeed) still fails after its attempts, with a kind that says why.
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

RETRYABLE_STATUS = {408, 409, 425, 429}
"""Besides every 5xx: answers that say "not now" rather than "never"."""

TRIAL_BODY: dict[str, Any] = {
    "messages": [{"role": "user", "content": "Reply with OK."}],
    "max_completion_tokens": 1, "temperature": 0.0}
"""The trial completion that decides whether an endpoint whose completions failed is back."""


def status_kind(status: int) -> str:
    """The row's ``error_kind`` for a transient HTTP status."""
    if status == 429:
        return "rate_limited"
    return "http_5xx" if status >= 500 else "server_error"


def retry_after_s(value: str | None) -> float | None:
    """``Retry-After`` in seconds (its delay-seconds form; an HTTP date is ignored)."""
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


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
    consecutive_failures: int = 0  # transient errors of completions since the last success
    failing: bool = False  # down because its completions failed: its probe is a trial
    not_before: float = 0.0  # monotonic time a Retry-After asked us to wait until
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
    """A failed attempt worth another try; ``kind`` becomes the row's ``error_kind``."""

    def __init__(self, message: str, kind: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.retry_after = retry_after


class _EndpointDown(Exception):
    """The request broke and the endpoint's probe fails too: the endpoint is down."""


def _usage(u: Any) -> Usage:
    """The answer's token counts (absent: zeros); ValueError/TypeError if not counts."""
    if u is None:
        return Usage(prompt_tokens=0, completion_tokens=0, total_tokens=0)
    if not isinstance(u, dict):
        raise TypeError(f"usage is {type(u).__name__}, not an object")
    counts = {}
    for name in ("prompt_tokens", "completion_tokens", "total_tokens"):
        v = u.get(name) or 0
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(f"usage.{name} is {v!r}, not a count")
        counts[name] = v
    return Usage(**counts)


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
        """The probe itself (callers hold ``ep.probe_lock``): ``GET /v1/models``, or a trial
        completion for an endpoint whose completions failed."""
        ep.probed_at = time.monotonic()
        if ep.failing:
            ok, error = await self._trial(ep)
            ep.last_error = error or ep.last_error
            if ok:
                ep.failing, ep.consecutive_failures = False, 0
                log.warning("completions of %s at %s answer again", self.cfg.name, ep.url)
            self._set_health(ep, ok)
            return ok
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

    async def _trial(self, ep: EndpointState) -> tuple[bool, str]:
        """One small completion: (it answered, why not)."""
        try:
            r = await ep.http.post(f"{ep.url}/chat/completions", headers=self.headers,
                                   json={**TRIAL_BODY, "model": self.cfg.name},
                                   timeout=self.ccfg.trial_timeout_s)
        except (httpx.HTTPError, ValueError) as e:
            return False, f"completions failing: trial completion failed: {_why(e)}"
        if r.status_code != 200:
            ra = retry_after_s(r.headers.get("retry-after"))
            if ra is not None:
                ep.not_before = max(ep.not_before, time.monotonic() + ra)
            return False, ("completions failing: trial completion answered "
                           f"HTTP {r.status_code}")
        return True, ""

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
        if ok:  # completions' errors are counted on: /v1/models answering says nothing of them
            ep.healthy = True
        else:
            if ep.healthy is not False:
                log.warning("endpoint %s for %s marked dead", ep.url, self.cfg.name)
            ep.healthy = False
            now = time.monotonic()
            ep.retry_at = max(now + self.ccfg.reprobe_interval_s, ep.not_before)

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
            asked = min(ep.not_before for ep in self.endpoints) - time.monotonic()  # Retry-After
            self._outage_probes += 1
            await asyncio.sleep(min(max(delay, asked, 0.05), limit - down_for))
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

    async def _attempt(self, ep: EndpointState, body: dict[str, Any]
                       ) -> tuple[dict, Usage, float]:
        broken: tuple[str, str, Exception] | None = None
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
                    broken = (f"timeout from {ep.url} after "
                              f"{self.ccfg.request_timeout_s:g} s"), "timeout", e
                    ep.concurrency.timed_out()
                except (httpx.ConnectError, httpx.RemoteProtocolError,
                        httpx.ReadError, httpx.WriteError) as e:
                    broken = (f"connection to {ep.url} broken: {_why(e)}", "connection_error",
                              e)
                latency = time.perf_counter() - t0
        finally:
            ep.in_flight -= 1
        if broken is not None:
            message, kind, exc = broken
            ep.outcomes["timeout" if kind == "timeout" else "connection_error"] += 1
            if await self._is_down(ep, time.monotonic()):  # refused: down, whatever came before
                ep.failures += 1
                raise _EndpointDown(message) from exc
            raise self._transient(ep, _Retryable(message, kind)) from exc
        if r.status_code in RETRYABLE_STATUS or r.status_code >= 500:
            ep.outcomes["server_error"] += 1
            raise self._transient(ep, _Retryable(
                f"HTTP {r.status_code} from {ep.url}: {r.text[:200]}",
                status_kind(r.status_code), retry_after_s(r.headers.get("retry-after"))))
        if r.status_code != 200:
            ep.outcomes["bad_request"] += 1
            raise BadRequestError(f"{self.cfg.name}: HTTP {r.status_code} from {ep.url}: "
                                  f"{r.text[:500]}", model=self.cfg.model, attempts=1)
        try:
            data = r.json()
            content = data["choices"][0]["message"]["content"]
            if not isinstance(content, str | None):
                raise TypeError(f"content is {type(content).__name__}, not text")
            usage = _usage(data.get("usage"))
        except (ValueError, KeyError, IndexError, TypeError) as e:
            ep.outcomes["malformed"] += 1
            ep.failures += 1  # the server answered: this request's fault, not the endpoint's
            raise _Retryable(f"malformed response from {ep.url} ({e}): {r.text[:200]!r}",
                             "bad_response") from e
        ep.outcomes["ok"] += 1
        ep.consecutive_failures = 0
        return data, usage, latency

    def _transient(self, ep: EndpointState, err: _Retryable) -> Exception:
        """What a transient error of a completion means: ``err`` (the request spends an
        attempt), or ``_EndpointDown`` (free) once the endpoint's completions have failed
        ``failing_after`` times in a row, or if it is already down."""
        ep.failures += 1
        now = time.monotonic()
        if err.retry_after is not None:
            ep.not_before = max(ep.not_before, now + err.retry_after)
        if ep.healthy is False:
            return _EndpointDown(str(err))
        ep.consecutive_failures += 1
        if ep.consecutive_failures < self.ccfg.failing_after:
            return err
        ep.failing = True
        ep.last_error = f"completions failing ({ep.consecutive_failures} in a row): {err}"
        log.warning("completions of %s at %s keep failing (%s): endpoint down", self.cfg.name,
                    ep.url, err)
        self._set_health(ep, False)
        return _EndpointDown(str(err))

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
                data, usage, latency = await self._attempt(ep, body)
            except _EndpointDown:
                continue
            except _Retryable as e:
                failures += 1
                if failures >= self.ccfg.max_attempts:
                    attempts = failures + parse_failures
                    raise ModelCallError(
                        f"{self.cfg.name}: no answer after {attempts} attempts; last error: "
                        f"{e}", kind=e.kind, model=self.cfg.model, attempts=attempts) from e
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
            return ChatResponse(text=text, usage=usage, latency_s=latency, endpoint=ep.url,
                                attempts=failures + parse_failures + 1, raw=data), parsed
