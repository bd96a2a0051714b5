"""Each endpoint's in-flight limit: pinned, or found from the endpoint's own vLLM metrics.

Throughput on a GPU is a full continuous batch without preemption. How many requests keep
vLLM's batch full depends on the GPUs, ``gpu_memory_utilization``, real prompt lengths and
prefix caching; the KV arithmetic of ``serve/capacity.py`` is only where ``auto`` starts. Every
``interval_s`` the controller reads the endpoint's ``/metrics`` (``llm.vllm_metrics``) and
applies one rule (AIMD-like, one step per reading):

- **cut** when vLLM preempted requests or a request of ours timed out: the limit becomes
  ``decrease`` × itself (multiplicative decrease); when the waiting queue is longer than the
  hold band and not shrinking: the share of the limit the server actually runs,
  ``limit × (running + band) / (running + waiting)``, so a start far too high is corrected in
  one step and a small overshoot costs only the overshoot. No second cut before the first has
  taken effect (our in-flight ≤ the limit).
- **raise** when nothing waits, KV use is below ``kv_target`` and the limit binds (requests of
  ours wait for a slot): add ``increase`` × the limit (at least 1), up to ``max_limit``.
- **hold** otherwise: a small queue (up to ``hold_queue`` × running, at least 2) keeps the
  batch full when requests finish; KV at the target; or our demand is below the limit.

A pinned ``max_concurrency`` never changes, but its endpoint's metrics are still read for the
run's figures. An endpoint without vLLM's metrics keeps the start limit, with a warning. When
the run splits an endpoint over ``split`` caption actors each adapts its own share (start and
ceiling divided by ``split``); they all see the same queue, so they cut and raise together.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from typing import Any, Protocol

import httpx

from refsav_pipeline.llm.config import ConcurrencyConfig, ModelEndpointConfig
from refsav_pipeline.llm.vllm_metrics import VllmSample, metrics_url, parse_vllm_metrics

log = logging.getLogger(__name__)

MISSING_RETRY_S = 60.0
"""How long before an endpoint without vLLM's metrics is asked again (it may be restarted as
vLLM)."""


class _Getter(Protocol):
    async def get(self, url: str, **kwargs: Any) -> Any: ...


class AdjustableSemaphore:
    """A semaphore whose limit can change while requests hold and wait for slots (FIFO)."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> None:
        if self.active < self.limit and not self._waiters:
            self.active += 1
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # granted just before the cancel: hand the slot on
            else:
                self._waiters.remove(fut)
            raise

    def release(self) -> None:
        self.active -= 1
        self._wake()

    def set_limit(self, limit: int) -> None:
        """New limit; requests above it finish, fewer start until in-flight is under it."""
        self.limit = max(1, limit)
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.active < self.limit:
            fut = self._waiters.popleft()
            if not fut.done():
                self.active += 1
                fut.set_result(None)

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self.release()


def limits(mcfg: ModelEndpointConfig, ccfg: ConcurrencyConfig) -> tuple[int, int]:
    """(start, ceiling) of one client's limit per endpoint of ``mcfg``, its share of ``split``."""
    share = ccfg.split
    start = math.ceil(mcfg.start_concurrency / share)
    if not mcfg.adaptive:
        return start, start
    ceiling = math.ceil(max(ccfg.max_limit, mcfg.start_concurrency) / share)
    return start, ceiling


class ConcurrencyController:
    """One endpoint's limit for one client, and that endpoint's latest vLLM metrics."""

    def __init__(self, endpoint: str, mcfg: ModelEndpointConfig, ccfg: ConcurrencyConfig,
                 timeout_s: float) -> None:
        self.endpoint = endpoint
        self.model_name = mcfg.name
        self.cfg = ccfg
        self.adaptive = mcfg.adaptive
        self.start, self.ceiling = limits(mcfg, ccfg)
        self.semaphore = AdjustableSemaphore(self.start)
        self.url = metrics_url(endpoint)
        self.timeout_s = timeout_s
        self.sample: VllmSample | None = None
        self.has_metrics: bool | None = None  # None: not read yet
        self.last_step = "start"
        self._due = 0.0
        self._reading: asyncio.Task[None] | None = None  # the reading loop, while busy
        self._timeouts = 0

    @property
    def limit(self) -> int:
        return self.semaphore.limit

    def poke(self, http: _Getter) -> None:
        """Keep reading the endpoint's metrics every ``interval_s`` while requests of ours are
        at it or wait for it (called as requests go out: no requests, nothing to steer)."""
        if self._reading is None:
            self._reading = asyncio.get_running_loop().create_task(self._keep_reading(http))

    async def _keep_reading(self, http: _Getter) -> None:
        try:
            while self.semaphore.active or self.semaphore.waiting:
                if time.monotonic() >= self._due:
                    await self._read(http)
                await asyncio.sleep(max(0.0, self._due - time.monotonic()))
        finally:
            self._reading = None

    async def aclose(self) -> None:
        """Stop reading (before the event loop ends)."""
        task, self._reading = self._reading, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def timed_out(self) -> None:
        """A request of ours to this endpoint timed out: cut at the next reading."""
        self._timeouts += 1

    async def _read(self, http: _Getter) -> None:
        try:
            sample, why = None, ""
            try:
                r = await http.get(self.url, timeout=self.timeout_s)
                if r.status_code == 200:
                    sample = parse_vllm_metrics(r.text, self.model_name)
                    why = "it has no vLLM scheduler metrics for this model"
                else:
                    why = f"it answers HTTP {r.status_code}"
            except (httpx.HTTPError, OSError):
                return  # the endpoint is unreachable: its health probe deals with that
            if sample is None:
                self._missing(why)
                return
            self.has_metrics = True
            if self.adaptive:
                self._adjust(sample)
            self.sample = sample
        finally:
            if self._due <= time.monotonic():
                self._due = time.monotonic() + self.cfg.interval_s

    def _missing(self, why: str) -> None:
        if self.has_metrics is not False:
            fixed = f"stays at {self.start}" if self.adaptive else "is pinned anyway"
            log.warning("%s: cannot read %s (%s): the concurrency of %s there %s",
                        self.endpoint, self.url, why, self.model_name, fixed)
        self.has_metrics = False
        self.sample = None
        if self.adaptive:
            self.semaphore.set_limit(self.start)
            self.last_step = "fixed: no metrics"
        self._due = time.monotonic() + MISSING_RETRY_S

    def _adjust(self, s: VllmSample) -> None:
        """One step of the rule in the module docstring."""
        c, sem, prev = self.cfg, self.semaphore, self.sample
        lim, ours = sem.limit, sem.active
        band = max(2.0, c.hold_queue * s.running)
        preempted = prev is not None and s.preemptions > prev.preemptions
        timeouts, self._timeouts = self._timeouts, 0
        queue = s.waiting > band and (prev is None or s.waiting >= prev.waiting)
        if preempted or timeouts or queue:
            if ours > lim:
                self.last_step = "hold: draining the last cut"
                return
            new = math.floor(lim * c.decrease) if preempted or timeouts else lim
            if queue:  # to the share the server runs (waiting > band >= 2: no zero here)
                new = min(new, math.ceil(lim * (s.running + band) / (s.running + s.waiting)))
            why = "preemptions" if preempted else "timeouts" if timeouts else "queue"
            self._set(new, f"cut: {why}")
        elif s.waiting == 0 and s.kv_usage < c.kv_target and (sem.waiting or ours >= lim):
            self._set(lim + max(1, math.ceil(lim * c.increase)), "raise")
        else:
            self.last_step = "hold"

    def _set(self, limit: int, step: str) -> None:
        limit = max(1, min(self.ceiling, limit))
        if limit != self.semaphore.limit:
            log.debug("%s %s: limit %d -> %d (%s)", self.endpoint, self.model_name,
                      self.semaphore.limit, limit, step)
        self.semaphore.set_limit(limit)
        self.last_step = step
