"""The run's Prometheus metrics (``refsav run --metrics-port``), served by the driver.

Nothing crosses processes for them but the status poll the driver already makes: each caption
actor answers ``status()`` once a second with its session's figures (``llm.telemetry``), the
driver keeps the latest per actor and adds its own counts (rows, shards, videos). A collector
reads that state at each scrape, so the registry never holds stale copies and the figures are
the same ones the progress line shows. Counters of actors that ended (the retry pass of
``--retry-failed`` starts new ones) or restarted (Ray restarts a dead actor with an empty
session) are kept, so every counter only grows for the life of the driver.

Labels: ``model`` is the HF id, ``endpoint`` the OpenAI base URL; vLLM's own scheduler metrics
(read by each client from ``<endpoint root>/metrics``) are re-exported as ``refsav_vllm_*``
with the same two labels.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from pydantic import BaseModel

from refsav_pipeline.config import PipelineConfig
from refsav_pipeline.llm.telemetry import (
    LATENCY_BUCKETS,
    EndpointFigures,
    LatencyHistogram,
    SessionFigures,
)
from refsav_pipeline.llm.vllm_metrics import VllmSample, metrics_url, parse_vllm_metrics
from refsav_pipeline.records import RefSavRow

log = logging.getLogger(__name__)

METRIC_NAMES = (
    "refsav_rows_total", "refsav_shards_done", "refsav_shards_total", "refsav_videos_done",
    "refsav_requests_in_flight", "refsav_request_seconds", "refsav_requests_total",
    "refsav_tokens_total", "refsav_cache_hits_total", "refsav_endpoint_up",
    "refsav_concurrency_limit", "refsav_vllm_num_requests_running",
    "refsav_vllm_num_requests_waiting", "refsav_vllm_kv_cache_usage_perc",
    "refsav_vllm_num_preemptions_total",
)
"""Every metric the run serves (as named in the exposition; the histogram adds its series)."""


def _add(into: SessionFigures, part: SessionFigures, *, counters_only: bool) -> None:
    """Sum ``part`` into ``into``: counters add up; with ``counters_only`` (an actor that is
    gone) its gauges are left out."""
    eps = {(e.model, e.endpoint): e for e in into.endpoints}
    for e in part.endpoints:
        mine = eps.get((e.model, e.endpoint))
        if mine is None:
            mine = e.model_copy(update={"in_flight": 0, "limit": 0, "outcomes": {},
                                        "up": None, "vllm": None, "has_metrics": None})
            into.endpoints.append(mine)
            eps[(e.model, e.endpoint)] = mine
        mine.outcomes = dict(Counter(mine.outcomes) + Counter(e.outcomes))
        if counters_only:
            continue
        mine.in_flight += e.in_flight
        mine.limit += e.limit
        mine.adaptive, mine.step = e.adaptive, e.step
        if e.up is not None:
            mine.up = bool(mine.up) or e.up
        if e.has_metrics is not None:
            mine.has_metrics = bool(mine.has_metrics) or e.has_metrics
        if e.vllm is not None and (mine.vllm is None or e.vllm.at > mine.vllm.at):
            mine.vllm = e.vllm  # every client reads the same server: the latest wins
    hists = {(h.model, h.call): h for h in into.latency}
    for h in part.latency:
        if (h.model, h.call) in hists:
            hists[(h.model, h.call)].add(h)
        else:
            into.latency.append(h.model_copy(deep=True))
    for model, kinds in part.tokens.items():
        into.tokens[model] = dict(Counter(into.tokens.get(model, {})) + Counter(kinds))
    into.cache_hits += part.cache_hits


class RunFigures:
    """The driver's view of the run for its metrics and progress line (thread-safe: the
    metrics server reads it from its own thread)."""

    def __init__(self, shards_total: int) -> None:
        self.shards_total = shards_total
        self.shards_done = 0
        self.videos_done = 0
        # the ok series exists from the start at 0: rows are counted as shards are written, so
        # without it the first shard's rows would be the series' first sample and rate() over
        # it would find nothing until the second shard
        self.rows: Counter[tuple[str, str]] = Counter({("ok", ""): 0})
        self._actors: list[SessionFigures | None] = []
        self._gone = SessionFigures()
        self._lock = threading.Lock()

    def begin(self, actors: int, shards_done: int, videos_done: int) -> None:
        """A pass of the run starts with new actors; the old ones' counters are kept."""
        with self._lock:
            self._retire_all()
            self._actors = [None] * actors
            self.shards_done, self.videos_done = shards_done, videos_done

    def _retire_all(self) -> None:
        for figs in self._actors:
            if figs is not None:
                _add(self._gone, figs, counters_only=True)
        self._actors = [None] * len(self._actors)

    def actor(self, i: int, figs: SessionFigures | None) -> None:
        """Actor ``i``'s latest figures (its status poll)."""
        if figs is None:
            return
        with self._lock:
            old = self._actors[i]
            if old is not None and figs.requests < old.requests:  # restarted: a new session
                _add(self._gone, old, counters_only=True)
            self._actors[i] = figs

    def rows_written(self, rows: list[RefSavRow]) -> None:
        """The rows of a shard just written (what the run made, in their final state)."""
        with self._lock:
            for row in rows:
                self.rows[(row.status, row.error_kind or "")] += 1

    def video_done(self) -> None:
        with self._lock:
            self.videos_done += 1

    def shard_done(self) -> None:
        with self._lock:
            self.shards_done += 1

    def merged(self) -> SessionFigures:
        """Every actor's figures summed, with those of actors gone."""
        with self._lock:
            out = SessionFigures()
            _add(out, self._gone, counters_only=True)
            for figs in self._actors:
                if figs is not None:
                    _add(out, figs, counters_only=False)
            return out


class RunCollector(Collector):
    """Turns ``RunFigures`` into metric families at each scrape."""

    def __init__(self, figures: RunFigures) -> None:
        self.figures = figures

    def collect(self) -> Iterable[Metric]:
        f = self.figures
        with f._lock:
            rows = dict(f.rows)
            shards_done, shards_total, videos = f.shards_done, f.shards_total, f.videos_done
        m = f.merged()
        c = CounterMetricFamily("refsav_rows", "Rows written, by status and error kind.",
                                labels=["status", "error_kind"])
        for (status, kind), n in sorted(rows.items()):
            c.add_metric([status, kind], n)
        yield c
        yield GaugeMetricFamily("refsav_shards_done", "Shards finished (marker written), "
                                "this run and before.", value=shards_done)
        yield GaugeMetricFamily("refsav_shards_total", "Shards in the run's plan.",
                                value=shards_total)
        yield GaugeMetricFamily("refsav_videos_done", "Videos through the CPU stage, and in "
                                "shards finished before this pass.", value=videos)
        yield from _endpoint_families(m.endpoints)
        yield _histogram(m.latency)
        t = CounterMetricFamily("refsav_tokens", "Tokens of answered (not cached) calls.",
                                labels=["model", "kind"])
        for model, kinds in sorted(m.tokens.items()):
            for kind, n in sorted(kinds.items()):
                t.add_metric([model, kind], n)
        yield t
        yield CounterMetricFamily("refsav_cache_hits", "Calls answered by the request cache.",
                                  value=m.cache_hits)


def _endpoint_families(eps: list[EndpointFigures]) -> Iterator[Metric]:
    labels = ["model", "endpoint"]

    def gauge(name: str, doc: str) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, doc, labels=labels)

    in_flight = gauge("refsav_requests_in_flight", "Requests at the endpoint now (holding a "
                      "slot of the concurrency limit).")
    limit = gauge("refsav_concurrency_limit", "The endpoint's in-flight limit now, summed over "
                  "the caption actors (adaptive with max_concurrency: auto).")
    up = gauge("refsav_endpoint_up", "1 if the endpoint answers its health probe.")
    running = gauge("refsav_vllm_num_requests_running", "vLLM: requests in the running batch.")
    waiting = gauge("refsav_vllm_num_requests_waiting", "vLLM: requests waiting in its queue.")
    kv = gauge("refsav_vllm_kv_cache_usage_perc", "vLLM: KV-cache usage, 1 = full.")
    preempt = CounterMetricFamily("refsav_vllm_num_preemptions", "vLLM: preemptions since "
                                  "the server started.", labels=labels)
    outcomes = CounterMetricFamily("refsav_requests", "HTTP attempts by outcome (ok, timeout, "
                                   "connection_error, server_error, bad_request, malformed).",
                                   labels=[*labels, "outcome"])
    for e in sorted(eps, key=lambda e: (e.model, e.endpoint)):
        lv = [e.model, e.endpoint]
        in_flight.add_metric(lv, e.in_flight)
        limit.add_metric(lv, e.limit)
        if e.up is not None:
            up.add_metric(lv, float(e.up))
        for outcome, n in sorted(e.outcomes.items()):
            outcomes.add_metric([*lv, outcome], n)
        v: VllmSample | None = e.vllm
        if v is not None:
            running.add_metric(lv, v.running)
            waiting.add_metric(lv, v.waiting)
            kv.add_metric(lv, v.kv_usage)
            preempt.add_metric(lv, v.preemptions)
    yield from (in_flight, limit, up, running, waiting, kv, preempt, outcomes)


def _histogram(hists: list[LatencyHistogram]) -> HistogramMetricFamily:
    h = HistogramMetricFamily("refsav_request_seconds", "Latency of the HTTP attempt that "
                              "answered a call, by call (prompt id).", labels=["model", "call"])
    for x in sorted(hists, key=lambda x: (x.model, x.call)):
        cum, buckets = 0, []
        for le, n in zip([*map(str, LATENCY_BUCKETS), "+Inf"], x.counts, strict=True):
            cum += n
            buckets.append((le, cum))
        h.add_metric([x.model, x.call], buckets, x.total_s)
    return h


@contextmanager
def metrics_server(port: int | None, host: str, figures: RunFigures) -> Iterator[int | None]:
    """Serve ``figures`` at ``http://host:port/metrics`` while the block runs (nothing if
    ``port`` is None); yields the port (0 picks a free one)."""
    if port is None:
        yield None
        return
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RunCollector(figures))
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        from refsav_pipeline.errors import InputError

        raise InputError(f"--metrics-port {port}: cannot listen on {host}:{port} ({exc})") \
            from exc
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class EndpointReading(BaseModel):
    """One endpoint's vLLM scheduler state, read now (``refsav status``)."""

    role: str
    endpoint: str
    vllm: VllmSample | None
    error: str = ""


def read_endpoints(cfg: PipelineConfig, timeout_s: float = 2.0) -> list[EndpointReading]:
    """Every configured endpoint's vLLM metrics, read at once (a few seconds at most)."""
    todo = [(role, getattr(cfg.models, role).name, url)
            for role in ("captioner", "judge") for url in getattr(cfg.models, role).endpoints]

    def read(item: tuple[str, str, str]) -> EndpointReading:
        role, name, url = item
        try:
            r = httpx.get(metrics_url(url), timeout=timeout_s, trust_env=False)
        except httpx.HTTPError as exc:
            return EndpointReading(role=role, endpoint=url, vllm=None,
                                   error=f"not answering ({exc.__class__.__name__})")
        if r.status_code != 200:
            return EndpointReading(role=role, endpoint=url, vllm=None,
                                   error=f"/metrics answers HTTP {r.status_code}")
        v = parse_vllm_metrics(r.text, name)
        return EndpointReading(role=role, endpoint=url, vllm=v,
                               error="" if v else "no vLLM metrics for this model")

    if not todo:
        return []
    with ThreadPoolExecutor(min(16, len(todo))) as pool:
        return list(pool.map(read, todo))


def gpu_line(e: EndpointFigures | EndpointReading) -> str:
    """``running R, waiting W, KV K%`` (and the limit, for a client's view)."""
    v = e.vllm
    name = e.endpoint.removeprefix("http://").removeprefix("https://").removesuffix("/v1")
    limit = f" in flight {e.in_flight}/{e.limit}" if isinstance(e, EndpointFigures) else ""
    if v is None:
        return f"{name}{limit} (no vLLM metrics)"
    return (f"{name}{limit} running {v.running:.0f} waiting {v.waiting:.0f} "
            f"KV {100 * v.kv_usage:.0f}%")
