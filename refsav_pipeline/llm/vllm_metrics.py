"""What the client reads of a vLLM server's own Prometheus metrics (``GET /metrics``).

vLLM (``vllm/v1/metrics/loggers.py``) exports its scheduler's state per engine, labelled
``model_name`` (the served name) and ``engine``: requests in the running batch, requests
waiting, the KV cache's use (0..1) and a counter of preemptions. Those four say whether an
endpoint is saturated, queueing or short of KV cache: what the adaptive concurrency
(``llm.concurrency``) steers by and what the run re-exports per endpoint. The names live here
once; the reference server (``reference.vllm_metrics``) exports the same ones.
"""

from __future__ import annotations

import time

from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_USAGE = "vllm:kv_cache_usage_perc"
PREEMPTIONS = "vllm:num_preemptions"  # a counter: exposed as vllm:num_preemptions_total
PROMPT_TOKENS = "vllm:prompt_tokens"
GENERATION_TOKENS = "vllm:generation_tokens"
LABELS = ("model_name", "engine")
"""The labels vLLM puts on each of them."""

_READ = (RUNNING, WAITING, KV_USAGE, PREEMPTIONS)
_PREFIXES = tuple(n.encode() for n in _READ)


class VllmSample(BaseModel):
    """One endpoint's scheduler state, summed over its engines (data-parallel ranks)."""

    running: float
    waiting: float
    kv_usage: float  # 0..1; the largest over engines
    preemptions: float  # since the server started
    at: float  # wall-clock time of the reading


def metrics_url(endpoint: str) -> str:
    """``http://host:port/metrics`` for an OpenAI base URL ``http://host:port/v1``: vLLM serves
    its metrics at the server's root, not under ``/v1``."""
    base = endpoint.rstrip("/")
    if base.endswith("/v1"):
        base = base[:-3]
    return f"{base}/metrics"


def parse_vllm_metrics(text: str | bytes, model_name: str) -> VllmSample | None:
    """The sample for ``model_name`` in a ``/metrics`` answer; None if it has none of vLLM's
    scheduler gauges (not a vLLM server, or one that serves another model).

    Only the lines of the four families are parsed (vLLM's page is tens of KB of histograms,
    read every second by every caption actor).
    """
    raw = text.encode() if isinstance(text, str) else text
    lines = [line for line in raw.splitlines() if line.startswith(_PREFIXES)]
    if not lines:
        return None
    found: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(b"\n".join(lines).decode() + "\n"):
        for s in family.samples:
            if s.labels.get("model_name", model_name) != model_name:
                continue
            name = s.name.removesuffix("_total")
            if name in _READ:
                found.setdefault(name, []).append(s.value)
    if not any(name in found for name in (RUNNING, WAITING, KV_USAGE)):
        return None
    return VllmSample(running=sum(found.get(RUNNING, [0.0])),
                      waiting=sum(found.get(WAITING, [0.0])),
                      kv_usage=max(found.get(KV_USAGE, [0.0])),
                      preemptions=sum(found.get(PREEMPTIONS, [0.0])), at=time.time())
