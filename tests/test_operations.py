"""Production operations, as an operator of a multi-day run meets them: server blips ridden out,
one run per output, clear ends (signals, failed rows), a messy SA-V file system.

Every run is a real ``refsav`` subprocess with its own local Ray instance. The model server is
the reference server (a subprocess); the misbehaving load balancer in front of it is
``FaultProxy``, a real loopback HTTP server in this process.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pipeline_helpers import (
    content,
    done_markers,
    few_in_flight_config,
    finish_cli,
    refsav_argv,
    run_argv,
    start_cli,
    wait_for,
)

from refsav_pipeline.pipeline.cli import EXIT_FAILED_ROWS, free_port, reference_server
from refsav_pipeline.records import read_rows
from refsav_pipeline.reference.fault_proxy import FaultProxy
from refsav_pipeline.sav.synth import synth_sav

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with reference_server(free_port(), "--latency", "0.1") as url:
        yield url


@pytest.fixture
def proxy(server: str) -> Iterator[FaultProxy]:
    with FaultProxy(server) as p:
        yield p


@pytest.fixture(scope="module")
def straight(sample: Path, server: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("straight") / "run"
    cfg = few_in_flight_config(server, out.parent / "cfg.yaml")
    finish_cli(start_cli(run_argv(sample, out, cfg)))
    return out


def _lines(text: str, prefix: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith(prefix)]


def _under_way(proxy: FaultProxy) -> None:
    wait_for(lambda: proxy.stats["forwarded"] >= 12, what="the run to be under way")


@contextlib.contextmanager
def _reaped(proc: subprocess.Popen) -> Iterator[subprocess.Popen]:
    try:
        yield proc
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)


@pytest.mark.parametrize(("mode", "kw"), [
    ("status", {"status": 503}),
    ("status", {"status": 429, "retry_after": 2}),
    ("reset", {}),
    ("hang", {}),
], ids=["503", "429-retry-after", "reset", "hang"])
def test_a_window_of_transient_errors_fails_no_row(sample: Path, straight: Path,
                                                   proxy: FaultProxy, tmp_path: Path,
                                                   mode: str, kw: dict) -> None:
    """8 s of it mid-run, with 3 attempts per request (the rule, not retries, rides it out).
    Per episode of errors at most ``failing_after - 1`` requests spend an attempt, and with
    few requests in flight one request can meet the first error of two episodes (the trial
    that ends an outage may get through a hang window that then goes on): 3 attempts for
    ``failing_after`` 2 keep that margin, as the shipped 6 for 3 do."""
    out = tmp_path / "run"
    cfg = few_in_flight_config(proxy.url, tmp_path / "cfg.yaml", max_attempts=3,
                               failing_after=2, request_timeout_s=1.0, outage_limit_s=120)
    with _reaped(start_cli(run_argv(sample, out, cfg))) as proc:
        _under_way(proxy)
        proxy.fail(mode, 8, **kw)  # type: ignore[arg-type]
        text = finish_cli(proc)
    assert proxy.stats[mode] >= 3, proxy.stats  # the faults really reached the run
    assert "is down" in text and "answers again" in text, text[-3000:]
    rows = read_rows(out)
    assert set(rows.column("status").to_pylist()) == {"ok"}
    assert content(rows) == content(read_rows(straight))


def test_persistent_503_stops_at_the_outage_limit_and_resume_finishes(
        sample: Path, straight: Path, proxy: FaultProxy, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = few_in_flight_config(proxy.url, tmp_path / "cfg.yaml", outage_limit_s=4)
    with _reaped(start_cli(run_argv(sample, out, cfg))) as proc:
        _under_way(proxy)
        proxy.fail("status", None, status=503)
        text = finish_cli(proc, expect=1)
    [line] = _lines(text, "error:")
    assert "outage_limit_s = 4" in line and "HTTP 503" in line and proxy.url in line
    assert f"refsav resume --out {out}" in line and "Traceback" not in text
    assert done_markers(out) < 4
    proxy.heal()
    finish_cli(start_cli(refsav_argv("resume", "--out", str(out), "--no-progress")))
    assert content(read_rows(out)) == content(read_rows(straight))


def test_a_second_run_is_refused_and_a_killed_runs_lease_is_taken_over(
        sample: Path, straight: Path, proxy: FaultProxy, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = few_in_flight_config(proxy.url, tmp_path / "cfg.yaml", outage_limit_s=600)
    with _reaped(start_cli(run_argv(sample, out, cfg))) as first:
        wait_for(lambda: (out / "run.lease").exists() and done_markers(out) >= 1,
                 what="the first run to hold the lease and finish a shard")
        proxy.fail("status", None, status=503)  # the first run now waits, alive, for minutes
        t0 = time.monotonic()
        for argv in (run_argv(sample, out, cfg),
                     refsav_argv("resume", "--out", str(out), "--no-progress")):
            text = finish_cli(start_cli(argv), expect=2, timeout=60)
            [line] = _lines(text, "error:")
            assert f"host {socket.gethostname()} (pid {first.pid})" in line, line
            assert "refsav run" in line and "since" in line
        assert time.monotonic() - t0 < 60
        status = finish_cli(start_cli(refsav_argv("status", "--out", str(out))))
        assert "running:" in status
        assert first.poll() is None
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(30)
    proxy.heal()
    status = " ".join(finish_cli(start_cli(refsav_argv("status", "--out", str(out)))).split())
    assert "not running" in status and "time left" not in status, status
    finish_cli(start_cli(refsav_argv("resume", "--out", str(out), "--no-progress")))
    assert content(read_rows(out)) == content(read_rows(straight))
    assert not (out / "run.lease").exists()


@pytest.mark.parametrize(("sig", "group"), [(signal.SIGINT, True), (signal.SIGTERM, False)],
                         ids=["ctrl-c-to-the-group", "sigterm"])
def test_a_signal_ends_the_run_with_one_line(sample: Path, server: str, tmp_path: Path,
                                             sig: signal.Signals, group: bool) -> None:
    out = tmp_path / "run"
    cfg = few_in_flight_config(server, tmp_path / "cfg.yaml")
    with _reaped(start_cli(run_argv(sample, out, cfg))) as proc:
        wait_for(lambda: done_markers(out) >= 1, what="a finished shard")
        (os.killpg if group else os.kill)(proc.pid, sig)
        text = finish_cli(proc, expect=128 + sig, timeout=120)
    [line] = _lines(text, "interrupted:")
    assert f"stopped by {sig.name}" in line and "of 4 shards done" in line
    assert f"`refsav resume --out {out}` continues" in line
    assert not _lines(text, "error:") and "Traceback" not in text
    assert "\x1b[" not in text and "*** SIG" not in text, text[-2000:]  # no escapes, no dump
    assert not (out / "run.lease").exists()


JUNK = (b'{"choices": [{"message": {"role": "assistant", "content": "fine"}}], '
        b'"usage": {"prompt_tokens": "many"}}')


def test_failed_rows_exit_3_with_the_retry_command(sample: Path, straight: Path,
                                                   proxy: FaultProxy, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proxy.fail("answer", body=JUNK, match=b"description_a")  # every judge answer is unusable
    cfg = few_in_flight_config(proxy.url, tmp_path / "cfg.yaml", max_attempts=2)
    text = finish_cli(start_cli(run_argv(sample, out, cfg)), expect=EXIT_FAILED_ROWS)
    [line] = _lines(text, "error:")
    assert "failed of" in line and "bad_response" in line
    assert f"`refsav resume --out {out} --retry-failed`" in line
    assert done_markers(out) == 4
    # the same outcome, allowed
    finish_cli(start_cli(refsav_argv("resume", "--out", str(out), "--allow-failed-rows")))
    proxy.heal()
    finish_cli(start_cli(refsav_argv("resume", "--out", str(out), "--retry-failed",
                                     "--no-progress")))
    assert content(read_rows(out)) == content(read_rows(straight))


def test_a_symlinked_chunk_is_run_and_a_fifo_is_skipped_with_a_warning(
        server: str, tmp_path: Path) -> None:
    root = tmp_path / "disk1"
    made = synth_sav(root, videos=4, seed=6)
    chunk = next(p for p in root.rglob("sav_0*") if p.is_dir())
    elsewhere = tmp_path / "disk2" / chunk.name
    elsewhere.parent.mkdir()
    shutil.move(chunk, elsewhere)
    chunk.symlink_to(elsewhere, target_is_directory=True)
    os.mkfifo(elsewhere / "sav_999999_manual.json")  # would block the run forever if opened
    out = tmp_path / "run"
    cfg = few_in_flight_config(server, tmp_path / "cfg.yaml")
    text = finish_cli(start_cli(run_argv(root, out, cfg)), timeout=240)
    [warning] = _lines(text, "warning: skipped 1 path")
    assert "sav_999999_manual.json" in warning and "not a regular file" in warning
    rows = read_rows(out)
    assert set(rows.column("video_id").to_pylist()) == {v.video_id for v in made}
    assert set(rows.column("status").to_pylist()) == {"ok"}
