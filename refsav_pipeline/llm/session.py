"""``ModelSession``: config + prompts + request cache + HTTP clients, the context every call takes.

Built from ``PipelineConfig`` and the run's output directory; cheap to build inside a Ray
actor (pickling a session rebuilds it from config on the other side instead of shipping
sockets). HTTP connections and semaphores belong to an event loop, so they are made per running
loop, one pool per (model, endpoint) sized to that endpoint's concurrency; sync callers use
``run()``, which drives a private loop thread kept for the session's lifetime so connections
and endpoint health survive between calls. The request cache answers from memory and writes
on the calling thread, so a call costs no thread hop.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from functools import cached_property, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import httpx

from refsav_pipeline.errors import writing_under
from refsav_pipeline.llm.answer_checks import RETRY_NOTES, UNPARSEABLE, AnswerChecker, Defect
from refsav_pipeline.llm.budget import check_fits
from refsav_pipeline.llm.cache import RequestCache, cache_key
from refsav_pipeline.llm.client import ModelClient, Outage, jpeg_part
from refsav_pipeline.llm.concurrency import limits
from refsav_pipeline.llm.config import (
    AnswerChecksConfig,
    CheckedCall,
    ClientConfig,
    ModelEndpointConfig,
    ModelsConfig,
)
from refsav_pipeline.llm.errors import AnswerRejected, ModelCallError, UnparseableOutputError
from refsav_pipeline.llm.images import image_digest, is_jpeg
from refsav_pipeline.llm.pool import EndpointPool
from refsav_pipeline.llm.prompts import PromptTemplate, load_prompt
from refsav_pipeline.llm.results import CallResult, Usage
from refsav_pipeline.llm.telemetry import CallFigures, EndpointFigures, SessionFigures

if TYPE_CHECKING:
    from collections.abc import Callable

    from refsav_pipeline.config import PipelineConfig

Role = Literal["captioner", "judge"]
PromptKey = Literal["object_crop", "object_masked", "judge", "scene", "video",
                    "video_contrastive"]
PROMPT_KEYS: tuple[PromptKey, ...] = ("object_crop", "object_masked", "judge", "scene", "video",
                                      "video_contrastive")
CHECKED_AS: dict[str, CheckedCall] = {
    "object_crop": "object", "object_masked": "object", "judge": "judge", "scene": "scene",
    "video": "video", "video_contrastive": "video"}
"""Which answer checks each call's answers get (``AnswerChecksConfig``)."""
T = TypeVar("T")


CACHE_DIR = "cache"
"""The request cache's folder inside a run's output directory."""


def _content(raw: dict[str, Any]) -> str | None:
    return raw["choices"][0]["message"].get("content")


def _finish_reason(raw: dict[str, Any]) -> str | None:
    return raw["choices"][0].get("finish_reason")


def cache_folder(client: ClientConfig, out_dir: str | Path | None) -> Path | None:
    """The shared request-cache folder of a run, or None (no cache)."""
    if not client.cache:
        return None
    if client.cache_path:
        return Path(client.cache_path)
    return Path(out_dir) / CACHE_DIR if out_dir is not None else None


@dataclass
class _Request:
    """One call's request, as asked at each attempt: the first as configured; a retry with
    another seed, the retry temperature and a note on what was wrong (greedy decoding answers
    the same request the same way). The first attempt's cache key is the same as before
    retries existed, so older caches still answer it."""

    tpl: PromptTemplate
    mcfg: ModelEndpointConfig
    system: str | None
    user: str
    images: Sequence[bytes]
    inputs: dict[str, str]
    image_digests: list[str]
    sampling: dict[str, Any]
    mm_kwargs: dict[str, Any]
    response_format: dict[str, Any] | None
    retry_temperature: float

    @cached_property
    def parts(self) -> list[dict[str, Any]]:
        """The images as base64 parts: made for a request actually sent, never for a cache
        hit, and once for all of a call's attempts."""
        return [jpeg_part(j) for j in self.images]

    def attempt(self, n: int, note: str | None
                ) -> tuple[Callable[[], dict[str, Any]], str]:
        """(a maker of the body, cache key) of attempt ``n`` (0: the first); raises
        ``request_too_long``."""
        user = f"{self.user}\n{note}" if note else self.user
        sampling = dict(self.sampling)
        if n:
            sampling["seed"] = int(self.sampling.get("seed") or 0) + n
            sampling["temperature"] = max(float(self.sampling.get("temperature", 0.0)),
                                          self.retry_temperature)
        check_fits(self.mcfg, self.tpl.ref, [self.system, user], self.images, sampling,
                   self.mm_kwargs)
        key_parts: dict[str, Any] = {
            "model": self.mcfg.model, "prompt": self.tpl.ref, "prompt_digest": self.tpl.digest,
            "system": self.system, "user": user, "inputs": self.inputs,
            "images": self.image_digests, "sampling": sampling,
            "mm_processor_kwargs": self.mm_kwargs, "response_format": self.response_format,
        }
        if n:
            key_parts["attempt"] = n
        return partial(self._body, user, sampling), cache_key(key_parts)

    def _body(self, user: str, sampling: dict[str, Any]) -> dict[str, Any]:
        """The request of one attempt (its images as base64 parts)."""
        messages: list[dict[str, Any]] = []
        if self.system:
            messages.append({"role": "system", "content": self.system})
        messages.append({"role": "user", "content": [*self.parts, {"type": "text",
                                                                   "text": user}]
                         if self.parts else user})
        body: dict[str, Any] = {"messages": messages, **sampling}
        if self.mm_kwargs:
            body["mm_processor_kwargs"] = self.mm_kwargs
        if self.response_format is not None:
            body["response_format"] = self.response_format
        return body


@dataclass
class _LoopState:
    pools: list[EndpointPool]
    clients: dict[str, ModelClient]


class ModelSession:
    """Everything needed to make model calls; see ``refsav_pipeline.llm.calls``."""

    def __init__(self, models: ModelsConfig, client: ClientConfig | None = None,
                 out_dir: str | Path | None = None,
                 checks: AnswerChecksConfig | None = None) -> None:
        self.models = models
        self.client_cfg = client or ClientConfig()
        self.checks = checks or AnswerChecksConfig()
        self.checker = AnswerChecker(self.checks)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.prompts: dict[str, PromptTemplate] = {
            k: load_prompt(getattr(models.prompts, k), models.prompts.dir) for k in PROMPT_KEYS}
        self.cache: RequestCache | None = None
        path = cache_folder(self.client_cfg, self.out_dir)
        if path is not None:
            c = self.client_cfg
            self.cache = RequestCache(path, local_dir=c.cache_local_dir,
                                      promote_interval_s=c.cache_promote_interval_s)
        self._states: dict[int, tuple[asyncio.AbstractEventLoop, _LoopState]] = {}
        self._lock = threading.Lock()
        self._totals: dict[str, dict[str, int]] = {}
        self._figures = CallFigures()
        self._runner: tuple[asyncio.AbstractEventLoop, threading.Thread] | None = None

    @classmethod
    def from_config(cls, cfg: PipelineConfig, out_dir: str | Path | None) -> ModelSession:
        return cls(cfg.models, cfg.client, out_dir, cfg.checks)

    def __reduce__(self) -> tuple[Any, ...]:
        return (ModelSession, (self.models, self.client_cfg, self.out_dir, self.checks))

    # -- per-loop HTTP state --------------------------------------------------------------

    def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        with self._lock:
            entry = self._states.get(id(loop))
            if entry is not None and entry[0] is loop:
                return entry[1]
            c = self.client_cfg
            timeout = httpx.Timeout(c.request_timeout_s, connect=c.connect_timeout_s)
            rng = random.Random()
            clients: dict[str, ModelClient] = {}
            all_pools: list[EndpointPool] = []
            for role in ("captioner", "judge"):
                mcfg = self.model_cfg(role)  # type: ignore[arg-type]
                ceiling = limits(mcfg, c.concurrency)[1]
                pools = {u: EndpointPool(ceiling, timeout) for u in mcfg.endpoints}
                all_pools.extend(pools.values())
                clients[role] = ModelClient(mcfg, c, pools, rng=rng)
            state = _LoopState(all_pools, clients)
            self._states[id(loop)] = (loop, state)
            return state

    def model_cfg(self, role: Role) -> ModelEndpointConfig:
        return self.models.captioner if role == "captioner" else self.models.judge

    def client(self, role: Role) -> ModelClient:
        """The client for ``role`` on the running loop (for health checks, stats)."""
        return self._state().clients[role]

    async def check_health(self) -> dict[str, list[dict[str, Any]]]:
        """Probe all endpoints of both models now."""
        st = self._state()
        return {role: await c.check_health() for role, c in st.clients.items()}

    # -- the one generic call -------------------------------------------------------------

    @property
    def prompt_versions(self) -> dict[str, str]:
        """``{call: "id@vN"}`` for the rows / run manifest."""
        return {k: p.ref for k, p in self.prompts.items()}

    async def complete(self, prompt_key: PromptKey, images: Sequence[bytes] = (),
                       inputs: dict[str, str] | None = None, *,
                       response_format: dict[str, Any] | None = None,
                       parse: Callable[[str], T] | None = None,
                       prose: Callable[[T], Sequence[str]] | None = None,
                       first_attempt: int = 0) -> tuple[CallResult, T | None]:
        """Render a prompt, answer it from cache or the server, check the answer, cache it.

        Every answer, from the server or the cache, passes ``llm.answer_checks`` first: its raw
        text (empty, truncated), then ``parse`` (raise ValueError for a wrong structure), then
        the prose checks on the text, or on ``prose(parsed)`` for a structured answer. A failed
        answer is never cached; the call is asked again with a changed request (another seed,
        a note saying what was wrong: ``RETRY_NOTES``), ``checks.attempts`` times in all
        (``client.max_parse_attempts`` for unparseable answers). A cached answer that a
        stricter check now fails is skipped the same way, without calling the model for it.
        Then ``AnswerRejected`` (or ``UnparseableOutputError``) with the last answer.
        ``first_attempt`` > 0 starts from a retry's request (a contrastive re-caption asked
        again after its cached answer was found ambiguous).
        """
        tpl = self.prompts[prompt_key]
        role: Role = tpl.model
        mcfg = self.model_cfg(role)
        try:
            system, user = tpl.render(len(images), **(inputs or {}))
        except ValueError as e:  # wrong image count / inputs: this record's input is wrong
            raise ModelCallError(str(e), kind="bad_input", model=mcfg.model) from e
        if not all(is_jpeg(j) for j in images):
            raise ModelCallError(f"{tpl.ref}: image is not JPEG data", kind="bad_image",
                                 model=mcfg.model)
        ask = _Request(tpl, mcfg, system, user, images, inputs or {},
                       [image_digest(j) for j in images],  # hashed once, in the CPU stage
                       {**mcfg.sampling.as_body(), **tpl.sampling},
                       {**mcfg.mm_processor_kwargs, **tpl.mm_processor_kwargs} if images else {},
                       response_format, self.checks.retry_temperature)
        failures: list[str] = []
        unparseable, attempt = 0, first_attempt
        while True:
            make_body, key = ask.attempt(attempt, RETRY_NOTES[failures[-1]] if failures else None)
            rec = self.cache.get(key) if self.cache is not None else None
            text: str | None
            if rec is not None:
                text, finish, endpoint = rec["text"], rec.get("finish_reason", "stop"), ""
                usage, latency, tries = Usage(**rec["usage"]), rec["latency_s"], rec["attempts"]
            else:
                resp, _ = await self._state().clients[role].chat(make_body())
                finish, endpoint = _finish_reason(resp.raw), resp.endpoint
                text = None if _content(resp.raw) is None else resp.text  # null stays null
                usage, latency, tries = resp.usage, resp.latency_s, resp.attempts + attempt
            result = CallResult(text=text or "", model=mcfg.model, prompt_id=tpl.id,
                                prompt_version=tpl.version, usage=usage, latency_s=latency,
                                attempts=tries, cached=rec is not None,
                                check_failures=list(failures))
            self._count(role, result)  # every attempt: bad answers were paid for too
            defect, parsed = self._verdict(CHECKED_AS[prompt_key], text, finish, parse, prose)
            if defect is None:
                if self.cache is not None and rec is None:
                    with writing_under(self.cache.writes_to):  # a full disk stops the run
                        self.cache.put(key, {"text": text, "usage": usage.model_dump(),
                                             "latency_s": latency, "attempts": tries,
                                             "finish_reason": finish, "endpoint": endpoint,
                                             "model": mcfg.model, "prompt": tpl.ref})
                return result, parsed
            failures.append(defect.kind)
            if defect.kind == UNPARSEABLE:
                unparseable += 1
                if unparseable >= self.client_cfg.max_parse_attempts:
                    raise UnparseableOutputError(
                        f"{mcfg.name}: unusable output {unparseable} times ({defect.detail})",
                        raw=text or "", model=mcfg.model)
            elif len(failures) - unparseable >= self.checks.attempts:
                raise AnswerRejected(
                    f"{tpl.ref} answer rejected {len(failures)} times, last: {defect.kind} "
                    f"({defect.detail})", kind=defect.kind, call=prompt_key,
                    answer=None if text is None else text[:self.checks.kept_answer_chars],
                    failures=failures, model=mcfg.model)
            attempt += 1

    def _verdict(self, checked_as: CheckedCall, text: str | None, finish: str | None,
                 parse: Callable[[str], T] | None, prose: Callable[[T], Sequence[str]] | None,
                 ) -> tuple[Defect | None, T | None]:
        """(the answer's first defect or None, the parsed answer): raw text, then ``parse``
        (a ValueError is ``unparseable_output``), then the prose checks."""
        defect = self.checker.check_raw(text, finish)
        if defect is not None:
            return defect, None
        parsed: T | None = None
        if parse is not None:
            try:
                parsed = parse(text or "")
            except ValueError as e:
                return Defect(kind=UNPARSEABLE, detail=str(e)), None
        texts = prose(parsed) if prose is not None and parsed is not None else [text or ""]
        for t in texts:
            defect = self.checker.check_prose(checked_as, t)
            if defect is not None:
                return defect, parsed
        return None, parsed

    def _count(self, role: str, r: CallResult) -> None:
        with self._lock:
            t = self._totals.setdefault(role, {"calls": 0, "cached": 0, "prompt_tokens": 0,
                                               "completion_tokens": 0})
            t["calls"] += 1
            self._figures.observe(r)
            if r.cached:
                t["cached"] += 1
            else:
                t["prompt_tokens"] += r.usage.prompt_tokens
                t["completion_tokens"] += r.usage.completion_tokens

    def in_flight(self) -> dict[str, int]:
        """Requests at the servers now, per role (all loops)."""
        with self._lock:
            out = {"captioner": 0, "judge": 0}
            for _loop, st in self._states.values():
                for role, c in st.clients.items():
                    out[role] += sum(ep.in_flight for ep in c.endpoints)
            return out

    def stats(self) -> dict[str, Any]:
        """Calls, paid tokens per role, cache counters, endpoint counters (all loops)."""
        with self._lock:
            eps: dict[str, list[dict[str, Any]]] = {}
            for _loop, st in self._states.values():
                for role, c in st.clients.items():
                    eps.setdefault(role, []).extend(ep.snapshot() for ep in c.endpoints)
            return {"calls": {k: dict(v) for k, v in self._totals.items()},
                    "cache": self.cache.stats() if self.cache else None, "endpoints": eps}

    def figures(self) -> SessionFigures:
        """Per endpoint (limit, in flight, outcomes, its vLLM metrics) and per call (latency,
        tokens, cache hits), for the run's metrics (all loops)."""
        with self._lock:
            eps = [EndpointFigures(
                model=c.cfg.model, endpoint=ep.url, up=ep.healthy,
                in_flight=ep.concurrency.semaphore.active, limit=ep.concurrency.limit,
                adaptive=ep.concurrency.adaptive, step=ep.concurrency.last_step,
                outcomes=dict(ep.outcomes), has_metrics=ep.concurrency.has_metrics,
                vllm=ep.concurrency.sample)
                for _loop, st in self._states.values() for c in st.clients.values()
                for ep in c.endpoints]
            return self._figures.figures(eps)

    def outages(self) -> list[Outage]:
        """Models that no endpoint answers right now, with how long (all loops)."""
        with self._lock:
            return [o for _loop, st in self._states.values() for c in st.clients.values()
                    if (o := c.outage()) is not None]

    # -- lifecycle ------------------------------------------------------------------------

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the session's private loop (for synchronous callers)."""
        with self._lock:
            if self._runner is None:
                loop = asyncio.new_event_loop()
                th = threading.Thread(target=loop.run_forever, name="model-session",
                                      daemon=True)
                th.start()
                self._runner = (loop, th)
            loop = self._runner[0]
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    async def aclose(self) -> None:
        """Close the HTTP client of the running loop (call from async code before exit)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            entry = self._states.pop(id(loop), None)
        if entry is not None:
            for client in entry[1].clients.values():
                for ep in client.endpoints:
                    await ep.concurrency.aclose()
            for pool in entry[1].pools:
                await pool.aclose()

    def close(self) -> None:
        """Close everything: the private loop's client, the loop thread, the cache."""
        if self._runner is not None:
            loop, th = self._runner
            asyncio.run_coroutine_threadsafe(self.aclose(), loop).result()
            loop.call_soon_threadsafe(loop.stop)
            th.join(timeout=5)
            loop.close()
            self._runner = None
        with self._lock:
            self._states.clear()  # clients of other (finished) loops are left to the GC
        if self.cache is not None:
            self.cache.close()
            self.cache = None

    async def __aenter__(self) -> ModelSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
        if self.cache is not None:
            self.cache.close()
            self.cache = None

    def __enter__(self) -> ModelSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
