"""The reference server's engine state and its ``/metrics``, with vLLM's names and labels.

vLLM batches continuously: at most so many requests run at once (what its KV cache holds),
the rest wait in a queue. ``Engine`` plays that for one served model when the server is given
a KV capacity (``--kv-capacity N``): N requests run, the others wait their turn in arrival
order, and KV use is running / N. So its best throughput is N / latency, reached only while
clients keep N requests in flight, and a waiting queue shows when they send more: what the
adaptive concurrency of the client (``llm.concurrency``) is tested against. Without a capacity
nothing waits and KV use stays 0.

``VllmExporter`` registers the families vLLM's ``PrometheusStatLogger``
(``vllm/v1/metrics/loggers.py``) defines for these figures, with its labels ``model_name`` and
``engine``; the contract tier checks them against vLLM's own definitions.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge

from refsav_pipeline.llm.vllm_metrics import (
    GENERATION_TOKENS,
    KV_USAGE,
    LABELS,
    PREEMPTIONS,
    PROMPT_TOKENS,
    RUNNING,
    WAITING,
)

ENGINE = "0"
"""The engine label: one engine per server (no data parallelism)."""


class VllmExporter:
    """vLLM's scheduler and token metric families on ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, LABELS, registry=registry, multiprocess_mode="mostrecent")

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, LABELS, registry=registry)

        # documentation strings as vLLM words them
        self.running = gauge(RUNNING, "Number of requests in model execution batches.")
        self.waiting = gauge(WAITING, "Number of requests waiting to be processed.")
        self.kv_usage = gauge(KV_USAGE, "KV-cache usage. 1 means 100 percent usage.")
        self.preemptions = counter(PREEMPTIONS,
                                   "Cumulative number of preemption from the engine.")
        self.prompt_tokens = counter(PROMPT_TOKENS, "Number of prefill tokens processed.")
        self.generation_tokens = counter(GENERATION_TOKENS,
                                         "Number of generation tokens processed.")


class Engine:
    """One served model's batch: at most ``capacity`` requests run at once (None: no limit),
    the rest wait in arrival order; its figures are kept in ``exporter``'s families."""

    def __init__(self, model_name: str, capacity: int | None, exporter: VllmExporter) -> None:
        self.capacity = capacity
        self.running = 0
        self.waiting = 0
        self.peak_waiting = 0
        self._slots = asyncio.Semaphore(capacity) if capacity else None
        labels = {"model_name": model_name, "engine": ENGINE}
        self._running = exporter.running.labels(**labels)
        self._waiting = exporter.waiting.labels(**labels)
        self._kv = exporter.kv_usage.labels(**labels)
        exporter.preemptions.labels(**labels)  # present at 0, as in vLLM: never preempts here
        self._prompt = exporter.prompt_tokens.labels(**labels)
        self._generation = exporter.generation_tokens.labels(**labels)
        self._show()

    def _show(self) -> None:
        self._running.set(self.running)
        self._waiting.set(self.waiting)
        self._kv.set(self.running / self.capacity if self.capacity else 0.0)

    @asynccontextmanager
    async def batch_slot(self) -> AsyncIterator[None]:
        """Hold a place in the running batch for the request's time on the "GPU" (waiting in
        the queue first when the batch is full; no queue without a capacity)."""
        if self._slots is not None:
            self.waiting += 1
            self.peak_waiting = max(self.peak_waiting, self.waiting)
            self._show()
            try:
                await self._slots.acquire()
            finally:
                self.waiting -= 1
                self._show()
        self.running += 1
        self._show()
        try:
            yield
        finally:
            self.running -= 1
            if self._slots is not None:
                self._slots.release()
            self._show()

    def tokens(self, prompt: int, completion: int) -> None:
        self._prompt.inc(prompt)
        self._generation.inc(completion)
