"""Transient server errors pause requests, they do not fail them.

Real HTTP on loopback: the client talks to ``FaultProxy`` (a misbehaving load balancer) in
front of the reference server. Windows are a few seconds here with millisecond backoff; the
test of the shipped defaults rides out 30 s of 503s.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from refsav_pipeline.errors import RecordError
from refsav_pipeline.llm import calls
from refsav_pipeline.llm.config import ClientConfig, ModelsConfig
from refsav_pipeline.llm.errors import ModelCallError, OutageLimitReached
from refsav_pipeline.llm.session import ModelSession
from refsav_pipeline.reference.config import ReferenceServerConfig
from refsav_pipeline.reference.fault_proxy import FaultProxy
from refsav_pipeline.reference.server import ReferenceServer
from refsav_pipeline.reference.testing import (
    crop,
    fast_client,
    masked_frame,
    models_at,
    object_frame,
    to_jpeg,
)

COLORS = ["red", "green", "blue", "cyan", "magenta", "orange", "purple", "white"]


def scene_jpeg(color: str, i: int) -> bytes:
    frame, mask = object_frame(color, 60 + 20 * i, 50 + 10 * i)
    return to_jpeg(masked_frame(frame, mask))


def object_jpeg(color: str) -> bytes:
    frame, mask = object_frame(color, 80, 60)
    return to_jpeg(crop(frame, mask))


def _ride_out(tmp_path: Path, client: ClientConfig, start_fault, window_s: float
              ) -> tuple[list, list, float, FaultProxy]:
    """8 captions asked while the proxy fails completions for ``window_s``; returns the
    answers, the outages seen during the window, the time taken and the proxy."""
    with ReferenceServer(ModelsConfig(), ReferenceServerConfig(port=0, latency_s=0.05)) as srv, \
            FaultProxy(srv.url) as proxy, \
            ModelSession(models_at(proxy.url), client, tmp_path) as s:
        async def go() -> tuple[list, list]:
            start_fault(proxy)
            tasks = [asyncio.create_task(calls.describe_object(s, object_jpeg(c),
                                                               scene_jpeg(c, i)))
                     for i, c in enumerate(COLORS)]
            await asyncio.sleep(window_s * 0.7)
            seen = s.outages()
            return list(await asyncio.gather(*tasks)), seen

        t0 = time.monotonic()
        results, seen = s.run(go())
        return results, seen, time.monotonic() - t0, proxy


@pytest.mark.parametrize(("mode", "kw"), [
    ("status", {"status": 503}),
    ("status", {"status": 500}),
    ("status", {"status": 429, "retry_after": 1}),
    ("reset", {}),
    ("hang", {}),
])
def test_a_window_of_transient_errors_fails_no_request(tmp_path: Path, mode: str,
                                                       kw: dict) -> None:
    window = 4.0
    # two attempts: without the outage rule every request would fail within milliseconds
    client = fast_client(max_attempts=2, request_timeout_s=0.5, outage_limit_s=60)
    results, seen, took, proxy = _ride_out(
        tmp_path, client, lambda p: p.fail(mode, window, **kw), window)  # type: ignore[arg-type]
    for r, color in zip(results, COLORS, strict=True):
        assert color in r.crop.text and color in r.masked.text
    assert proxy.stats[mode] >= 3  # the faults really happened
    assert [o.model for o in seen] == [ModelsConfig().captioner.name]  # an outage, not failures
    assert "completions failing" in seen[0].last_error
    assert took >= window * 0.9  # it waited the window out


def test_retry_after_is_honoured_before_the_next_trial(tmp_path: Path) -> None:
    client = fast_client(max_attempts=2, outage_limit_s=60)
    results, _, took, proxy = _ride_out(
        tmp_path, client, lambda p: p.fail("status", 0.3, status=429, retry_after=3), 1.0)
    assert all(c in r.crop.text for r, c in zip(results, COLORS, strict=True))
    assert took >= 3.0  # not asked again before Retry-After, though the window was 0.3 s
    # 16 requests (2 per caption): at most one 429 each, then nothing until Retry-After
    assert 3 <= proxy.stats["status"] <= 16


def test_persistent_503_stops_at_the_outage_limit(tmp_path: Path) -> None:
    with ReferenceServer(ModelsConfig()) as srv, FaultProxy(srv.url) as proxy, \
            ModelSession(models_at(proxy.url), fast_client(outage_limit_s=1.5), tmp_path) as s:
        proxy.fail("status", None, status=503)
        with pytest.raises(OutageLimitReached) as ei:
            s.run(calls.describe_scene(s, scene_jpeg("red", 0), "x"))
    assert not isinstance(ei.value, RecordError)  # never a row
    msg = str(ei.value)
    assert "outage_limit_s = 1.5" in msg and "HTTP 503" in msg and proxy.url in msg


def test_a_request_failing_on_its_own_still_fails_with_its_kind(tmp_path: Path) -> None:
    """Only one request's body gets 500s; the others succeed meanwhile, so the endpoint is not
    down and that request fails after its attempts, as ``http_5xx``."""
    with ReferenceServer(ModelsConfig()) as srv, FaultProxy(srv.url) as proxy, \
            ModelSession(models_at(proxy.url), fast_client(max_attempts=4), tmp_path) as s:
        proxy.fail("status", None, status=500, match=b"poisoned")

        async def go() -> list:
            bad = calls.describe_scene(s, scene_jpeg("red", 0), "poisoned")
            good = [calls.describe_scene(s, scene_jpeg(c, i), f"ok {i}")
                    for i, c in enumerate(COLORS)]
            return await asyncio.gather(bad, *good, return_exceptions=True)

        bad, *good = s.run(go())
    assert isinstance(bad, ModelCallError) and bad.kind == "http_5xx", bad
    assert "HTTP 500" in str(bad)
    assert all(not isinstance(g, BaseException) for g in good), good


@pytest.mark.parametrize(("fault", "kind"), [
    ({"mode": "hang"}, "timeout"),
    ({"mode": "status", "status": 429}, "rate_limited"),
    ({"mode": "reset"}, "connection_error"),
])
def test_error_kinds_say_what_happened(tmp_path: Path, fault: dict, kind: str) -> None:
    """With the rule off (``failing_after`` above the attempts), the last error names it."""
    client = fast_client(max_attempts=2, failing_after=10, request_timeout_s=0.3)
    with ReferenceServer(ModelsConfig()) as srv, FaultProxy(srv.url) as proxy, \
            ModelSession(models_at(proxy.url), client, tmp_path) as s:
        proxy.fail(**fault)
        with pytest.raises(ModelCallError) as ei:
            s.run(calls.describe_scene(s, scene_jpeg("red", 0), "x"))
    assert ei.value.kind == kind, ei.value


def test_a_malformed_usage_is_a_bad_response_not_a_bug(tmp_path: Path) -> None:
    """An answer whose ``usage`` is not counts is retried and ends as ``bad_response``."""
    answer = (b'{"choices": [{"message": {"role": "assistant", "content": "A red object."}}],'
              b' "usage": {"prompt_tokens": "many"}}')
    with ReferenceServer(ModelsConfig()) as srv, FaultProxy(srv.url) as proxy, \
            ModelSession(models_at(proxy.url), fast_client(max_attempts=2), tmp_path) as s:
        proxy.fail("answer", body=answer)
        with pytest.raises(ModelCallError) as ei:
            s.run(calls.describe_scene(s, scene_jpeg("red", 0), "x"))
    assert ei.value.kind == "bad_response" and "usage.prompt_tokens" in str(ei.value)
    assert proxy.stats["answer"] == 2  # retried


@pytest.mark.slow
def test_shipped_defaults_ride_out_30_s_of_503(tmp_path: Path) -> None:
    """The production settings (only the model servers differ) against 30 s of 503s."""
    results, seen, took, proxy = _ride_out(
        tmp_path, ClientConfig(), lambda p: p.fail("status", 30, status=503), 30)
    assert len(results) == 8 and all(r.crop.text for r in results)
    assert seen and took >= 30
