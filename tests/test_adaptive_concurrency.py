"""``max_concurrency: auto``: the limit follows the endpoint's vLLM metrics (real HTTP against
the reference server's continuous-batching queue), a pinned number never moves, and an endpoint
without metrics keeps the start limit."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import httpx
import pytest

from refsav_pipeline.config import PipelineConfig
from refsav_pipeline.llm import calls
from refsav_pipeline.llm.concurrency import AdjustableSemaphore, ConcurrencyController
from refsav_pipeline.llm.config import ClientConfig, ConcurrencyConfig, ModelsConfig
from refsav_pipeline.llm.session import ModelSession
from refsav_pipeline.llm.vllm_metrics import VllmSample, metrics_url, parse_vllm_metrics
from refsav_pipeline.pipeline.actors import actor_config
from refsav_pipeline.reference.config import ReferenceServerConfig
from refsav_pipeline.reference.server import ReferenceServer
from refsav_pipeline.reference.stub_server import StubServer
from refsav_pipeline.reference.testing import fast_client

JUDGE_START = ModelsConfig().judge.start_concurrency  # the KV arithmetic's number: auto's start


def _judge_at(url: str, **update: object) -> ModelsConfig:
    m = ModelsConfig()
    return m.model_copy(update={"judge": m.judge.model_copy(update={"endpoints": [url],
                                                                     **update})})


def _client(**concurrency: object) -> ClientConfig:
    c = fast_client(request_timeout_s=30.0)
    return c.model_copy(update={"concurrency": c.concurrency.model_copy(update={
        "interval_s": 0.25, **concurrency})})


async def _load(s: ModelSession, callers: int, seconds: float, url: str
                ) -> list[tuple[int, float, float]]:
    """``callers`` judge calls at a time for ``seconds``; (limit, running, waiting) sampled."""
    end = time.monotonic() + seconds
    seen: list[tuple[int, float, float]] = []

    async def caller(k: int) -> None:
        i = 0
        while time.monotonic() < end:
            i += 1
            await calls.judge_consistency(s, f"A red car {k}.{i}.", f"A red car {k}.{i}.")

    async def sampler() -> None:
        async with httpx.AsyncClient(timeout=5, trust_env=False) as http:
            while time.monotonic() < end:
                v = parse_vllm_metrics((await http.get(metrics_url(url))).text,
                                       s.models.judge.name)
                assert v is not None
                seen.append((s.client("judge").endpoints[0].concurrency.limit, v.running,
                             v.waiting))
                await asyncio.sleep(0.2)

    await asyncio.gather(sampler(), *(caller(k) for k in range(callers)))
    return seen


def test_semaphore_limit_changes_while_held() -> None:
    async def go() -> None:
        sem = AdjustableSemaphore(2)
        await sem.acquire()
        await sem.acquire()
        third = asyncio.create_task(sem.acquire())
        await asyncio.sleep(0)
        assert not third.done() and sem.waiting == 1
        sem.set_limit(3)  # a raise lets the waiter in at once
        await asyncio.sleep(0)
        assert third.done() and sem.active == 3
        sem.set_limit(1)  # a cut lets nobody new in until in-flight is under it
        fourth = asyncio.create_task(sem.acquire())
        sem.release()
        sem.release()
        await asyncio.sleep(0)
        assert not fourth.done() and sem.active == 1
        cancelled = asyncio.create_task(sem.acquire())
        await asyncio.sleep(0)
        cancelled.cancel()
        sem.release()
        await asyncio.sleep(0)
        assert fourth.done() and sem.active == 1 and sem.waiting == 0  # no slot leaked

    asyncio.run(go())


def test_auto_cuts_a_start_far_above_the_engine_to_its_batch(tmp_path: Path) -> None:
    """Start 51 (the judge's KV arithmetic) against an engine of 8: the client cuts to about
    8 + a small queue, and the server's queue ends within the hold band."""
    assert JUDGE_START > 40
    cfg = ReferenceServerConfig(port=0, latency_s=0.3, kv_capacity=8)
    with ReferenceServer(ModelsConfig(), cfg) as srv, \
            ModelSession(_judge_at(srv.url), _client(), tmp_path) as s:
        seen = s.run(_load(s, 3 * JUDGE_START, 8.0, srv.url))
    limits = [lim for lim, _, _ in seen]
    assert limits[0] == JUDGE_START
    tail = seen[-5:]
    assert all(8 <= lim <= 12 for lim, _, _ in tail), seen
    assert sum(r for _, r, _ in tail) / len(tail) >= 0.9 * 8, seen  # the batch stays full
    assert all(w <= 4 for _, _, w in tail), seen  # with a small queue


def test_auto_raises_until_the_batch_is_full(tmp_path: Path) -> None:
    """An engine of 120, above the start of 51: the limit grows until KV use reaches the
    target, and the batch runs (nearly) full."""
    cfg = ReferenceServerConfig(port=0, latency_s=1.0, kv_capacity=120)
    with ReferenceServer(ModelsConfig(), cfg) as srv, \
            ModelSession(_judge_at(srv.url), _client(), tmp_path) as s:
        seen = s.run(_load(s, 200, 10.0, srv.url))  # ~3 s of raises, more on a busy machine
    tail = seen[-6:]
    assert all(lim >= 0.95 * 120 for lim, _, _ in tail), seen
    assert sum(r for _, r, _ in tail) / len(tail) >= 0.9 * 120, seen
    assert all(w <= 120 for _, _, w in tail), seen


def test_auto_cuts_on_timeouts(tmp_path: Path) -> None:
    """Requests that time out (an engine slower than the client's timeout) cut the limit."""
    cfg = ReferenceServerConfig(port=0, latency_s=1.0)
    with ReferenceServer(ModelsConfig(), cfg) as srv:
        client = _client().model_copy(update={"request_timeout_s": 0.5, "max_attempts": 50})
        with ModelSession(_judge_at(srv.url), client, tmp_path) as s:
            async def go() -> int:
                tasks = [asyncio.create_task(calls.judge_consistency(s, f"a {i}", f"a {i}"))
                         for i in range(JUDGE_START)]
                await asyncio.sleep(3.0)
                limit = s.client("judge").endpoints[0].concurrency.limit
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                return limit

            limit = s.run(go())
    assert limit < 0.7 * JUDGE_START


def test_pinned_limit_never_moves_but_metrics_are_read(tmp_path: Path) -> None:
    cfg = ReferenceServerConfig(port=0, latency_s=0.2, kv_capacity=4)
    with ReferenceServer(ModelsConfig(), cfg) as srv, \
            ModelSession(_judge_at(srv.url, max_concurrency=20), _client(), tmp_path) as s:
        seen = s.run(_load(s, 40, 2.0, srv.url))
        ep = next(e for e in s.figures().endpoints if e.model == s.models.judge.model)
    assert {lim for lim, _, _ in seen} == {20}
    assert ep.limit == 20 and not ep.adaptive and ep.has_metrics
    assert ep.vllm is not None and ep.vllm.kv_usage == ep.vllm.running / 4
    assert max(r for _, r, _ in seen) == 4  # the engine ran full meanwhile


def test_endpoint_without_metrics_keeps_the_start_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    models = ModelsConfig()
    with StubServer([models.captioner.name, models.judge.name], latency_s=0.05) as stub, \
            ModelSession(_judge_at(stub.url), _client(), tmp_path) as s, \
            caplog.at_level(logging.WARNING, logger="refsav_pipeline.llm.concurrency"):
        async def go() -> None:
            await asyncio.gather(*(calls.judge_consistency(s, f"a {i}", f"a {i}")
                                   for i in range(200)))

        s.run(go())
        ep = next(e for e in s.figures().endpoints if e.model == models.judge.model)
    assert ep.limit == JUDGE_START and ep.has_metrics is False
    assert ep.step == "fixed: no metrics"
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "/metrics (it answers HTTP 404)" in warned[0]
    assert f"stays at {JUDGE_START}" in warned[0]


def test_the_run_splits_each_endpoint_over_its_actors(tmp_path: Path) -> None:
    """Four caption actors: each starts from a quarter of the KV arithmetic (and a pinned
    number is divided too), so the endpoint sees the same total."""
    cfg = PipelineConfig()
    cfg.run.model_actors = 4
    acfg = actor_config(cfg)
    with ModelSession(acfg.models, acfg.client, None) as s:
        async def limits() -> list[int]:
            return [s.client(r).endpoints[0].concurrency.limit for r in ("captioner", "judge")]

        assert s.run(limits()) == [-(-154 // 4), -(-JUDGE_START // 4)]
    assert cfg.models.captioner.start_concurrency == 154


def test_preemptions_cut_by_decrease_and_the_cut_drains_before_another() -> None:
    """The reference server never preempts; vLLM does when KV runs out mid-decode. The rule on
    readings as vLLM reports them: preemptions cut ×0.7, and no second cut while our requests
    above the new limit are still out."""
    ctl = ConcurrencyController("http://gpu:8100/v1", ModelsConfig().judge,
                                ConcurrencyConfig(), 1.0)
    sem = ctl.semaphore
    assert ctl.limit == JUDGE_START
    ctl.sample = VllmSample(running=51, waiting=0, kv_usage=0.9, preemptions=3, at=0)
    sem.active = JUDGE_START  # every slot taken
    ctl._adjust(VllmSample(running=51, waiting=0, kv_usage=1.0, preemptions=5, at=1))
    assert ctl.limit == int(JUDGE_START * 0.7) and ctl.last_step == "cut: preemptions"
    ctl.sample = VllmSample(running=51, waiting=0, kv_usage=1.0, preemptions=5, at=1)
    ctl._adjust(VllmSample(running=51, waiting=0, kv_usage=1.0, preemptions=6, at=2))
    assert ctl.limit == int(JUDGE_START * 0.7) and ctl.last_step.startswith("hold: draining")
    sem.active = ctl.limit
    ctl.sample = VllmSample(running=35, waiting=0, kv_usage=0.6, preemptions=6, at=2)
    ctl._adjust(VllmSample(running=35, waiting=0, kv_usage=0.6, preemptions=6, at=3))
    assert ctl.limit == int(JUDGE_START * 0.7) + 4 and ctl.last_step == "raise"


def test_timeouts_at_an_idle_server_cut_without_dividing_by_its_empty_batch() -> None:
    """A request that hangs in front of the engine (a proxy, a load balancer) times out while
    the engine runs nothing and queues nothing: the cut is ×0.7, not a division by zero that
    would stop the readings."""
    ctl = ConcurrencyController("http://gpu:8100/v1", ModelsConfig().judge,
                                ConcurrencyConfig(), 1.0)
    ctl.semaphore.active = JUDGE_START
    ctl.timed_out()
    ctl._adjust(VllmSample(running=0, waiting=0, kv_usage=0.0, preemptions=0, at=1))
    assert ctl.limit == int(JUDGE_START * 0.7) and ctl.last_step == "cut: timeouts"
