"""A model session's figures for the run's metrics: per endpoint and per call, as plain data.

Each caption actor answers the driver's once-a-second status poll with these
(``CaptionActor.status``); the driver sums them over actors and serves them to Prometheus
(``pipeline/metrics.py``). Counters only grow within one session, so the driver can sum them
across actors and notice an actor that restarted.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable

from pydantic import BaseModel, Field

from refsav_pipeline.llm.results import CallResult
from refsav_pipeline.llm.vllm_metrics import VllmSample

LATENCY_BUCKETS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0,
                                      60.0, 120.0, 300.0, 600.0)
"""Upper bounds (s) of ``refsav_request_seconds``: a model call takes from tenths of a second
to minutes (long captions on a full batch)."""


class EndpointFigures(BaseModel):
    """One endpoint of one model, as one client sees it."""

    model: str
    endpoint: str
    up: bool | None  # None: not probed yet
    in_flight: int  # requests holding a slot (at the server)
    limit: int
    adaptive: bool
    step: str  # the limit's last step (raise, hold, cut: why)
    outcomes: dict[str, int] = Field(default_factory=dict)
    has_metrics: bool | None = None
    vllm: VllmSample | None = None


class LatencyHistogram(BaseModel):
    """Answered calls of one kind by the latency of the attempt that answered."""

    model: str
    call: str
    counts: list[int] = Field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total_s: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total_s += seconds

    def add(self, other: LatencyHistogram) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.total_s += other.total_s


class SessionFigures(BaseModel):
    endpoints: list[EndpointFigures] = Field(default_factory=list)
    latency: list[LatencyHistogram] = Field(default_factory=list)
    tokens: dict[str, dict[str, int]] = Field(default_factory=dict)  # model -> kind -> tokens
    cache_hits: int = 0

    @property
    def requests(self) -> int:
        """Attempts so far (grows within a session: a drop means a new session)."""
        return sum(sum(e.outcomes.values()) for e in self.endpoints) + self.cache_hits


class CallFigures:
    """What a session counts of its calls (not thread-safe: the session holds its lock)."""

    def __init__(self) -> None:
        self.latency: dict[tuple[str, str], LatencyHistogram] = {}
        self.tokens: dict[str, Counter[str]] = {}
        self.cache_hits = 0

    def observe(self, r: CallResult) -> None:
        if r.cached:
            self.cache_hits += 1
            return
        key = (r.model, r.prompt_id)
        h = self.latency.get(key)
        if h is None:
            h = self.latency[key] = LatencyHistogram(model=r.model, call=r.prompt_id)
        h.observe(r.latency_s)
        t = self.tokens.setdefault(r.model, Counter())
        t["prompt"] += r.usage.prompt_tokens
        t["completion"] += r.usage.completion_tokens

    def figures(self, endpoints: Iterable[EndpointFigures]) -> SessionFigures:
        return SessionFigures(
            endpoints=list(endpoints),
            latency=[h.model_copy(deep=True) for h in self.latency.values()],
            tokens={m: dict(c) for m, c in self.tokens.items()}, cache_hits=self.cache_hits)
