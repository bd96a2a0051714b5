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
import hashlib
import random
import threading
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import httpx

from refsav_pipeline.errors import writing_under
from refsav_pipeline.llm.budget import check_fits
from refsav_pipeline.llm.cache import RequestCache, cache_key
from refsav_pipeline.llm.client import ModelClient, Outage, jpeg_part
from refsav_pipeline.llm.concurrency import limits
from refsav_pipeline.llm.config import ClientConfig, ModelEndpointConfig, ModelsConfig
from refsav_pipeline.llm.errors import ModelCallError
from refsav_pipeline.llm.pool import EndpointPool
from refsav_pipeline.llm.prompts import PromptTemplate, load_prompt
from refsav_pipeline.llm.results import CallResult, Usage
from refsav_pipeline.llm.telemetry import CallFigures, EndpointFigures, SessionFigures

if TYPE_CHECKING:
    from collections.abc import Callable

    from refsav_pipeline.config import PipelineConfig

Role = Literal["captioner", "judge"]
PromptKey = Literal["object_crop", "object_masked", "judge", "scene", "video"]
PROMPT_KEYS: tuple[PromptKey, ...] = ("object_crop", "object_masked", "judge", "scene", "video")
T = TypeVar("T")


CACHE_DIR = "cache"
"""The request cache's folder inside a run's output directory."""


def cache_folder(client: ClientConfig, out_dir: str | Path | None) -> Path | None:
    """The shared request-cache folder of a run, or None (no cache)."""
    if not client.cache:
        return None
    if client.cache_path:
        return Path(client.cache_path)
    return Path(out_dir) / CACHE_DIR if out_dir is not None else None


@dataclass
class _LoopState:
    pools: list[EndpointPool]
    clients: dict[str, ModelClient]


class ModelSession:
    """Everything needed to make model calls; see ``refsav_pipeline.llm.calls``."""

    def __init__(self, models: ModelsConfig, client: ClientConfig | None = None,
                 out_dir: str | Path | None = None) -> None:
        self.models = models
        self.client_cfg = client or ClientConfig()
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
        return cls(cfg.models, cfg.client, out_dir)

    def __reduce__(self) -> tuple[Any, ...]:
        return (ModelSession, (self.models, self.client_cfg, self.out_dir))

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
                       parse: Callable[[str], T] | None = None) -> tuple[CallResult, T | None]:
        """Render a prompt, answer it from cache or the server, cache the answer.

        ``parse`` validates the text (raise ValueError to retry); only accepted answers are
        cached, so an unparseable answer is never replayed from cache.
        """
        tpl = self.prompts[prompt_key]
        role: Role = tpl.model
        mcfg = self.model_cfg(role)
        try:
            system, user = tpl.render(len(images), **(inputs or {}))
        except ValueError as e:  # wrong image count / inputs: this record's input is wrong
            raise ModelCallError(str(e), kind="bad_input", model=mcfg.model) from e
        try:
            parts = [jpeg_part(j) for j in images]
        except ValueError as e:
            raise ModelCallError(f"{tpl.ref}: {e}", kind="bad_image", model=mcfg.model) from e
        sampling = {**mcfg.sampling.as_body(), **tpl.sampling}
        mm_kwargs = {**mcfg.mm_processor_kwargs, **tpl.mm_processor_kwargs} if images else {}
        messages: list[dict[str, Any]] = []
        if system:
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user",
                         "content": [*parts, {"type": "text", "text": user}] if parts else user})
        body: dict[str, Any] = {"messages": messages, **sampling}
        if mm_kwargs:
            body["mm_processor_kwargs"] = mm_kwargs
        if response_format is not None:
            body["response_format"] = response_format
        check_fits(mcfg, tpl.ref, [system, user], images, sampling, mm_kwargs)

        key = cache_key({
            "model": mcfg.model, "prompt": tpl.ref, "prompt_digest": tpl.digest,
            "system": system, "user": user, "inputs": inputs or {},
            "images": [hashlib.sha256(j).hexdigest() for j in images],
            "sampling": sampling, "mm_processor_kwargs": mm_kwargs,
            "response_format": response_format,
        })
        if self.cache is not None:
            rec = self.cache.get(key)
            if rec is not None:
                parsed = parse(rec["text"]) if parse is not None else None
                result = CallResult(text=rec["text"], model=mcfg.model, prompt_id=tpl.id,
                                    prompt_version=tpl.version, usage=Usage(**rec["usage"]),
                                    latency_s=rec["latency_s"], attempts=rec["attempts"],
                                    cached=True)
                self._count(role, result)
                return result, parsed

        resp, parsed = await self._state().clients[role].chat(body, parse)
        result = CallResult(text=resp.text, model=mcfg.model, prompt_id=tpl.id,
                            prompt_version=tpl.version, usage=resp.usage,
                            latency_s=resp.latency_s, attempts=resp.attempts, cached=False)
        if self.cache is not None:
            with writing_under(self.cache.writes_to):  # a full disk stops the run, unmarked
                self.cache.put(key, {"text": resp.text, "usage": resp.usage.model_dump(),
                                     "latency_s": resp.latency_s, "attempts": resp.attempts,
                                     "endpoint": resp.endpoint, "model": mcfg.model,
                                     "prompt": tpl.ref})
        self._count(role, result)
        return result, parsed

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
