"""Client reliability against the real reference server: cache, faults, dead endpoints."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import socket
import sqlite3
import time
from pathlib import Path

import pytest
from pipeline_helpers import closed_port_url, killed_cache_writer

from refsav_pipeline.errors import RecordError
from refsav_pipeline.llm import calls
from refsav_pipeline.llm.cache import RequestCache, cache_key
from refsav_pipeline.llm.config import ModelsConfig
from refsav_pipeline.llm.errors import (
    ModelCallError,
    OutageLimitReached,
    UnparseableOutputError,
)
from refsav_pipeline.llm.pool import EndpointPool
from refsav_pipeline.llm.session import ModelSession
from refsav_pipeline.pipeline.cli import free_port
from refsav_pipeline.reference.config import ReferenceServerConfig
from refsav_pipeline.reference.server import ReferenceServer
from refsav_pipeline.reference.stub_server import StubServer
from refsav_pipeline.reference.testing import (
    box_frames,
    crop,
    fast_client,
    masked_frame,
    models_at,
    object_frame,
    to_jpeg,
)

COLORS = ["red", "green", "blue", "cyan", "magenta", "orange", "purple", "white"]


def object_jpegs(color: str, cx: int = 80, cy: int = 60) -> tuple[bytes, bytes]:
    frame, mask = object_frame(color, cx, cy)
    return to_jpeg(crop(frame, mask)), to_jpeg(masked_frame(frame, mask))


def test_cache_answers_second_identical_call_without_http(tmp_path: Path) -> None:
    with ReferenceServer(ModelsConfig()) as srv:
        c, m = object_jpegs("red")
        with ModelSession(models_at(srv.url), fast_client(), tmp_path) as s:
            first = s.run(calls.describe_object(s, c, m))
            v1 = s.run(calls.judge_consistency(s, first.crop.text, first.masked.text))
            n = srv.stats.requests["chat_completions"]
            assert n == 3
            again = s.run(calls.describe_object(s, c, m))
            v2 = s.run(calls.judge_consistency(s, first.crop.text, first.masked.text))
            assert srv.stats.requests["chat_completions"] == n  # no new request
            assert again.crop.cached and again.masked.cached and v2.cached
            assert again.crop.text == first.crop.text and v2.consistent == v1.consistent
            assert again.crop.usage == first.crop.usage
            assert s.cache is not None and s.cache.hits == 3 and s.cache.misses == 3
            # A different input is a miss and goes to the server.
            s.run(calls.describe_scene(s, m, "x"))
            assert srv.stats.requests["chat_completions"] == n + 1
        # A new session on the same out dir (a resumed run) is served from disk.
        with ModelSession(models_at(srv.url), fast_client(), tmp_path) as s2:
            res = s2.run(calls.describe_object(s2, c, m))
            assert res.masked.cached and srv.stats.requests["chat_completions"] == n + 1
            assert list((tmp_path / "cache" / "parts").rglob("*.jsonl"))


def test_cache_key_covers_sampling_and_prompt_version(tmp_path: Path) -> None:
    with ReferenceServer(ModelsConfig()) as srv:
        c, m = object_jpegs("blue")
        base = models_at(srv.url)
        with ModelSession(base, fast_client(), tmp_path) as s:
            s.run(calls.describe_object(s, c, m))
        sampling = base.captioner.sampling.model_copy(update={"max_completion_tokens": 99})
        hot = base.model_copy(update={"captioner": base.captioner.model_copy(
            update={"sampling": sampling})})
        with ModelSession(hot, fast_client(), tmp_path) as s:
            res = s.run(calls.describe_object(s, c, m))
            assert not res.crop.cached and not res.masked.cached
    k = {"model": "m", "prompt": "p@v1", "images": ["a"]}
    assert cache_key(k) != cache_key({**k, "prompt": "p@v2"})
    assert cache_key(k) == cache_key(dict(reversed(list(k.items()))))


def test_faults_at_30_percent_still_end_in_correct_results(tmp_path: Path) -> None:
    cfg = ReferenceServerConfig(port=0, fault_rate=0.3, hang_s=30, seed=1)
    with ReferenceServer(ModelsConfig(), cfg) as srv:
        client = fast_client(request_timeout_s=1.0, max_attempts=10, max_parse_attempts=10)
        with ModelSession(models_at(srv.url), client, tmp_path) as s:
            async def all_calls() -> list:
                objs = [object_jpegs(col, 60 + 25 * i, 50 + 15 * i)
                        for i, col in enumerate(COLORS)]
                descs = await asyncio.gather(*(calls.describe_object(s, c, m) for c, m in objs))
                judges = await asyncio.gather(*(
                    calls.judge_consistency(s, d.crop.text, f"A {col} object.")
                    for d, col in zip(descs, ["red"] * 8, strict=True)))
                video = await calls.describe_video(
                    s, box_frames("blue", [(40 + 30 * i, 120) for i in range(8)]), "x")
                return [descs, judges, video]

            t0 = time.monotonic()
            descs, judges, video = s.run(all_calls())
            elapsed = time.monotonic() - t0
        faults = srv.stats.faults
        assert sum(faults.values()) >= 4, faults  # faults really happened…
        assert faults["http_500"] and faults["malformed_json"]
        for d, col in zip(descs, COLORS, strict=True):  # …and every answer is still right
            art = "An" if col[0] in "aeiou" else "A"
            assert d.crop.text == f"{art} {col} object in the center of the image."
            assert col in d.masked.text
        assert [j.consistent for j in judges] == [c == "red" for c in COLORS]
        assert video.text.endswith("moves right across the video.")
        assert any(r.attempts > 1 for d in descs for r in (d.crop, d.masked))
        assert elapsed < 20


def test_dead_endpoint_is_skipped(tmp_path: Path) -> None:
    dead = closed_port_url()
    with (ReferenceServer(ModelsConfig()) as srv,
          ModelSession(models_at([dead, srv.url]), fast_client(reprobe_interval_s=60),
                       tmp_path) as s):
            async def go() -> list:
                jobs = [calls.describe_object(s, *object_jpegs(col)) for col in COLORS]
                return await asyncio.gather(*jobs)

            t0 = time.monotonic()
            res = s.run(go())
            assert time.monotonic() - t0 < 10
            assert [r.crop.text.split()[1] for r in res] == COLORS
            eps = {e["url"]: e for e in s.stats()["endpoints"]["captioner"]}
            assert eps[dead]["healthy"] is False and eps[dead]["requests"] == 0
            assert eps[srv.url]["healthy"] is True and eps[srv.url]["requests"] == 16
            assert all(r.crop.attempts == 1 for r in res)  # the probe kept it out of the way


def test_endpoint_dying_mid_run_is_routed_around(tmp_path: Path) -> None:
    with (ReferenceServer(ModelsConfig()) as a, ReferenceServer(ModelsConfig()) as b,
          ModelSession(models_at([a.url, b.url]), fast_client(reprobe_interval_s=60),
                       tmp_path) as s):
            s.run(calls.describe_object(s, *object_jpegs("red")))
            a.stop()
            res = s.run(calls.describe_object(s, *object_jpegs("green")))
            assert "green" in res.masked.text
            eps = {e["url"]: e for e in s.stats()["endpoints"]["captioner"]}
            assert eps[a.url]["healthy"] is False and eps[b.url]["healthy"] is True


def test_load_is_balanced_over_live_endpoints(tmp_path: Path) -> None:
    cfg = ReferenceServerConfig(port=0, latency_s=0.05)
    with ReferenceServer(ModelsConfig(), cfg) as a, ReferenceServer(ModelsConfig(), cfg) as b:
        with ModelSession(models_at([a.url, b.url], max_concurrency=2), fast_client(),
                          tmp_path) as s:
            async def go() -> None:
                await asyncio.gather(*(calls.describe_scene(s, object_jpegs(c, 60 + i)[1], "x")
                                       for i, c in enumerate(COLORS)))

            s.run(go())
        na, nb = a.stats.requests["chat_completions"], b.stats.requests["chat_completions"]
        assert na + nb == 8 and abs(na - nb) <= 2


def test_outage_past_the_limit_stops_instead_of_failing_the_row(tmp_path: Path) -> None:
    dead = [closed_port_url(), closed_port_url()]
    with ModelSession(models_at(dead), fast_client(max_attempts=1, outage_limit_s=0.6),
                      tmp_path) as s:
        t0 = time.monotonic()
        with pytest.raises(OutageLimitReached) as ei:
            s.run(calls.describe_scene(s, object_jpegs("red")[1], "x", video_id="v7",
                                       masklet_id=2))
        assert time.monotonic() - t0 >= 0.6  # it waited out the limit, not max_attempts
        eps = s.stats()["endpoints"]["captioner"]
        assert all(e["requests"] == 0 for e in eps)  # probes only: no request was sent
    err = ei.value
    assert not isinstance(err, RecordError)  # never a row
    msg = str(err)
    assert "outage_limit_s = 0.6" in msg and all(u in msg for u in dead)
    assert "refused" in msg.lower()


def test_outage_waits_without_spending_attempts_and_resumes(tmp_path: Path) -> None:
    port = free_port()
    cfg = ReferenceServerConfig(port=port)
    first = ReferenceServer(ModelsConfig(), cfg).start()
    client = fast_client(max_attempts=1, outage_limit_s=60, reprobe_interval_s=0.2)
    with ModelSession(models_at(first.url), client, tmp_path) as s:
        s.run(calls.describe_scene(s, object_jpegs("red")[1], "x"))
        first.stop()
        restarted: list[ReferenceServer] = []

        async def during_outage() -> tuple[object, list]:
            task = asyncio.create_task(calls.describe_scene(s, object_jpegs("green")[1], "y"))
            await asyncio.sleep(1.0)
            seen = s.outages()
            assert not task.done()  # waiting, not failed
            restarted.append(ReferenceServer(ModelsConfig(), cfg).start())
            return await task, seen

        try:
            res, seen = s.run(during_outage())
        finally:
            for srv in restarted:
                srv.stop()
        assert "green" in res.text and res.attempts == 1  # the outage cost no attempt
        assert [o.model for o in seen] == [ModelsConfig().captioner.name]
        assert seen[0].down_s >= 0.5 and first.url in seen[0].last_error
        assert s.outages() == []  # over by itself once the server answered
    assert restarted[0].stats.requests["chat_completions"] == 1


def test_unparseable_judge_output_keeps_raw_text(tmp_path: Path) -> None:
    cfg = ReferenceServerConfig(port=0, fault_rate=1.0, faults=["malformed_json"])
    with ReferenceServer(ModelsConfig(), cfg) as srv:
        with ModelSession(models_at(srv.url), fast_client(max_parse_attempts=3), tmp_path) as s:
            with pytest.raises(UnparseableOutputError) as ei:
                s.run(calls.judge_consistency(s, "A red object.", "A red object."))
            # captions are not JSON calls, so the same fault rate leaves them alone
            ok = s.run(calls.describe_scene(s, object_jpegs("red")[1], "x"))
            assert "red" in ok.text
        assert srv.stats.faults["malformed_json"] == 3
    err = ei.value
    assert err.kind == "unparseable_output" and err.raw.startswith('{"consistent": true')
    assert err.raw in str(err)
    # nothing unparseable was cached
    assert len(RequestCache(tmp_path / "cache")) == 1


def test_server_errors_exhaust_budget(tmp_path: Path) -> None:
    """Below ``failing_after`` errors in a row the endpoint is not down: attempts are spent.
    (At ``failing_after`` it is, and requests wait: tests/test_transient_errors.py.)"""
    cfg = ReferenceServerConfig(port=0, fault_rate=1.0, faults=["http_500"])
    with ReferenceServer(ModelsConfig(), cfg) as srv:
        with (ModelSession(models_at(srv.url), fast_client(max_attempts=4, failing_after=5),
                           tmp_path) as s,
              pytest.raises(ModelCallError) as ei):
            s.run(calls.describe_scene(s, object_jpegs("red")[1], "x"))
        assert ei.value.kind == "http_5xx" and "HTTP 500" in str(ei.value)
        assert srv.stats.requests["chat_completions"] == 4


def test_hang_times_out_and_retries(tmp_path: Path) -> None:
    cfg = ReferenceServerConfig(port=0, fault_rate=1.0, faults=["hang"], hang_s=30)
    with ReferenceServer(ModelsConfig(), cfg) as srv:
        with ModelSession(models_at(srv.url), fast_client(request_timeout_s=0.3,
                                                          max_attempts=2), tmp_path) as s:
            t0 = time.monotonic()
            with pytest.raises(ModelCallError) as ei:
                s.run(calls.describe_scene(s, object_jpegs("red")[1], "x"))
            assert 0.5 < time.monotonic() - t0 < 5
        assert "timeout" in str(ei.value) and srv.stats.faults["hang"] == 2


def _writer(path: str, start: int, n: int) -> None:
    cache = RequestCache(path)
    for i in range(start, start + n):
        cache.put(f"k{i}", {"text": f"t{i}"})
        cache.put("shared", {"text": f"from {start}"})
    cache.close()


def test_cache_is_safe_with_several_processes(tmp_path: Path) -> None:
    """Each writer appends to its own shard; a later reader sees every writer's answers."""
    path = str(tmp_path / "cache")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, k * 1000, 150)) for k in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    cache = RequestCache(path)
    assert len(cache) == 451 and cache.files_read == 3
    assert cache.get("k1149") == {"text": "t1149"} and cache.get("k500") is None
    assert cache.get("shared")["text"].startswith("from ")
    assert cache.stats() == {"hits": 2, "misses": 1, "writes": 0}
    assert cache.shard is None  # a reader writes no shard


def test_cache_keeps_every_answer_put_before_kill_9(tmp_path: Path) -> None:
    """Durability contract: what ``put`` returned for survives SIGKILL with no fsync yet."""
    path = tmp_path / "cache"
    acked = killed_cache_writer(path, "", 2000, sync_interval=3600)  # straight into ``path``
    cache = RequestCache(path)
    assert all(f"k{i}" in cache for i in range(acked + 1))
    assert cache.get(f"k{acked}") == {"text": "t" * 200, "i": acked}
    assert cache.torn_lines == 0


def test_cache_skips_a_torn_last_line_and_reads_a_legacy_sqlite(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    legacy = sqlite3.connect(out / "cache.sqlite")
    legacy.execute("CREATE TABLE calls (key TEXT PRIMARY KEY, model TEXT, prompt TEXT, "
                   "record TEXT NOT NULL, created REAL NOT NULL)")
    legacy.execute("INSERT INTO calls VALUES ('old', '', '', '{\"text\": \"from sqlite\"}', 0)")
    legacy.commit()
    legacy.close()
    cache = RequestCache(out / "cache")
    cache.put("a", {"text": "A"})
    cache.put("a", {"text": "second answer ignored"})
    shard = cache.shard
    cache.close()
    assert shard is not None
    with open(shard, "ab") as fh:  # a power cut in the middle of a line
        fh.write(b'b\t{"text": "B')
    again = RequestCache(out / "cache")
    assert again.get("a") == {"text": "A"} and again.get("old") == {"text": "from sqlite"}
    assert "b" not in again and again.torn_lines == 1
    again.put("c", {"text": "C"})  # a new writer, a new shard: the torn one is never appended
    again.close()
    assert again.shard != shard and RequestCache(out / "cache").get("c") == {"text": "C"}


def test_one_pool_per_endpoint_sized_to_its_concurrency(tmp_path: Path) -> None:
    """Each endpoint gets its own connections, and all of an endpoint's concurrency reaches
    the server at once, over no more connections than that."""
    models = ModelsConfig()
    with StubServer([models.captioner.name, models.judge.name], latency_s=5) as a, \
            StubServer([models.captioner.name, models.judge.name], latency_s=5) as b:
        cfg = models_at([a.url, b.url], max_concurrency=70)
        with ModelSession(cfg, fast_client(request_timeout_s=60), None) as s:
            async def burst() -> list:
                client = s.client("captioner")
                pools = [ep.http for ep in client.endpoints]
                assert len({id(p) for p in pools}) == 2
                assert all(isinstance(p, EndpointPool) for p in pools)
                _, m = object_jpegs("red")
                out = await asyncio.gather(*(calls.describe_scene(s, m, f"x{i}")
                                             for i in range(140)))
                assert [p.connections for p in pools] == [70, 70]  # kept alive, not more
                return out

            results = s.run(burst())
        assert all(r.text for r in results)
        assert a.stats.requests + b.stats.requests == 140
        assert a.stats.peak_in_flight == 70 and b.stats.peak_in_flight == 70


def _raw_server(answers: list[bytes]) -> tuple[int, list[bytes], socket.socket]:
    """A loopback server that reads one request per connection-turn and replies the next
    canned answer verbatim (each split in small pieces), recording the requests."""
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    seen: list[bytes] = []

    def serve() -> None:
        pending = list(answers)
        while pending:
            conn, _ = srv.accept()
            with conn:
                while pending:
                    data = b""
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                    if not data:
                        break
                    head, _, body = data.partition(b"\r\n\r\n")
                    length = next((int(h.split(b":")[1]) for h in head.split(b"\r\n")
                                   if h.lower().startswith(b"content-length:")), 0)
                    while len(body) < length:
                        body += conn.recv(65536)
                    seen.append(head + b"\r\n\r\n" + body)
                    answer = pending.pop(0)
                    for i in range(0, len(answer), 7):
                        conn.sendall(answer[i:i + 7])
                        time.sleep(0.001)
                    if b"connection: close" in answer.lower():
                        break

    threading.Thread(target=serve, daemon=True).start()
    return srv.getsockname()[1], seen, srv


def test_pool_reads_chunked_and_close_delimited_answers() -> None:
    import httpx

    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Trailer: 1\r\n\r\n")
    sized = b"HTTP/1.1 503 Busy\r\nContent-Length: 4\r\nRetry-After: 2\r\n\r\nbusy"
    closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{\"a\": [1, 2]}"
    port, seen, srv = _raw_server([chunked, sized, closing])

    async def go() -> list[httpx.Response]:
        pool = EndpointPool(4, httpx.Timeout(5.0))
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        out = [await pool.post(url, json={"x": 1}, headers={"Authorization": "Bearer k"}),
               await pool.get(url.replace("chat/completions", "models")),
               await pool.post(url, json={"y": 2})]
        assert pool.connections == 0  # the server closed the one connection used
        await pool.aclose()
        return out

    try:
        a, b, c = asyncio.run(go())
    finally:
        srv.close()
    assert a.status_code == 200 and a.text == "hello, world"
    assert b.status_code == 503 and b.text == "busy" and b.headers["retry-after"] == "2"
    assert c.json() == {"a": [1, 2]}
    assert len(seen) == 3  # all three over one keep-alive connection
    assert seen[0].startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert b"Authorization: Bearer k\r\n" in seen[0] and seen[0].endswith(b"\r\n\r\n{\"x\":1}")
    assert b"Content-Length: 7\r\n" in seen[0]
    assert seen[1].startswith(b"GET /v1/models HTTP/1.1\r\n")
