"""The run rides out a model server outage, stops cleanly past the outage limit or on a full
disk, and leaves nothing running after kill -9 of its driver.

Every run is a real ``refsav run`` subprocess with its own local Ray instance, talking over
HTTP to the reference server, itself a subprocess that the tests kill -9 and restart on the
same port.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
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

from refsav_pipeline.pipeline.cli import free_port
from refsav_pipeline.records import read_rows

pytestmark = pytest.mark.slow

LATENCY = "0.1"



class Server:
    """``refsav serve reference`` on a fixed port, to kill -9 and start again."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}/v1"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Server:
        self.proc = subprocess.Popen(
            refsav_argv("serve", "reference", "--host", "127.0.0.1", "--port", str(self.port),
                    "--latency", LATENCY),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self._healthy, 60, "the reference server")
        return self

    def _healthy(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, "server exited"
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{self.url}/models", timeout=1, trust_env=False).is_success
        return False

    def chat_requests(self) -> int:
        stats = httpx.get(f"{self.url.removesuffix('/v1')}/stats", timeout=5,
                          trust_env=False).json()
        return int(stats["requests"].get("chat_completions", 0))

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@contextlib.contextmanager
def serving(port: int) -> Iterator[Server]:
    srv = Server(port).start()
    try:
        yield srv
    finally:
        srv.kill()






def _error_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith("error:")]




@pytest.fixture(scope="module")
def straight(sample: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("straight")
    with serving(free_port()) as srv:
        cfg = few_in_flight_config(srv.url, out.parent / "straight.yaml")
        finish_cli(start_cli(run_argv(sample, out, cfg)))
    return out


def _assert_all_ok_and_equal(out: Path, straight: Path) -> None:
    rows, ref = read_rows(out), read_rows(straight)
    assert rows.num_rows == ref.num_rows > 0
    assert set(rows.column("status").to_pylist()) == {"ok"}
    assert content(rows) == content(ref)


def test_server_down_for_20_s_mid_run_fails_nothing(sample: Path, straight: Path,
                                                    tmp_path: Path) -> None:
    port, out = free_port(), tmp_path / "run"
    srv = Server(port).start()
    try:
        cfg = few_in_flight_config(srv.url, tmp_path / "cfg.yaml")
        proc = start_cli(run_argv(sample, out, cfg))
        wait_for(lambda: srv.chat_requests() >= 12, what="the run to be under way")
        srv.kill()
        done_at_kill = done_markers(out)
        time.sleep(20)
        assert proc.poll() is None, "the run ended during the outage"
        assert done_markers(out) == done_at_kill  # it waited: no shard finished without a server
        srv.start()
        text = finish_cli(proc)
        assert srv.chat_requests() > 0  # the rest of the run was answered after the restart
    finally:
        srv.kill()
    assert done_at_kill < 4
    down = set(re.findall(r"model (\S+) is down", text))  # the models masklets waited on
    assert down <= {"OpenGVLab/InternVL2-Llama3-76B", "Qwen/Qwen2-72B-Instruct"}, text[-3000:]
    assert down and all(f"model {m} answers again" in text for m in down), text[-3000:]
    _assert_all_ok_and_equal(out, straight)


def test_outage_past_the_limit_stops_cleanly_and_resume_finishes(
        sample: Path, straight: Path, tmp_path: Path) -> None:
    port, out = free_port(), tmp_path / "run"
    srv = Server(port).start()
    try:
        cfg = few_in_flight_config(srv.url, tmp_path / "cfg.yaml", outage_limit_s=4)
        proc = start_cli(run_argv(sample, out, cfg))
        wait_for(lambda: srv.chat_requests() >= 12, what="the run to be under way")
        srv.kill()
        text = finish_cli(proc, expect=1)
    finally:
        srv.kill()
    assert "Traceback" not in text
    [line] = _error_lines(text)
    assert "outage_limit_s = 4" in line and srv.url in line and "Connection refused" in line
    assert f"refsav resume --out {out}" in line
    assert done_markers(out) < 4
    if done_markers(out):  # shards finished before the outage are whole and carry no failure
        assert set(read_rows(out).column("status").to_pylist()) == {"ok"}
    with serving(port):
        finish_cli(start_cli(refsav_argv("resume", "--out", str(out), "--no-progress")))
    assert done_markers(out) == 4
    _assert_all_ok_and_equal(out, straight)


def _session_processes(driver_pid: int, ray_tmp: str) -> list[tuple[int, str]]:
    """Live processes of the killed driver's Ray session: its session id, or RAY_TMPDIR."""
    needle = f"RAY_TMPDIR={ray_tmp}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            if state == "Z":
                continue  # already dead, waiting to be reaped
            ours = os.getsid(pid) == driver_pid or needle in (entry / "environ").read_bytes()
            if ours:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                found.append((pid, cmd[:80]))
        except (OSError, ProcessLookupError, IndexError):
            continue
    return found


def test_kill_9_of_the_driver_leaves_nothing_running(sample: Path, tmp_path: Path) -> None:
    ray_tmp = tempfile.mkdtemp(prefix="rt-", dir="/tmp")  # short: Ray's socket paths
    out = tmp_path / "run"
    with serving(free_port()) as srv:
        cfg = few_in_flight_config(srv.url, tmp_path / "cfg.yaml")
        proc = start_cli(run_argv(sample, out, cfg), RAY_TMPDIR=ray_tmp)
        try:
            wait_for(lambda: srv.chat_requests() >= 12, what="the run to be under way")
            assert _session_processes(proc.pid, ray_tmp), "cannot see the run's processes"
            proc.kill()
            killed_at = time.monotonic()
            proc.wait(10)
            time.sleep(max(0.0, killed_at + 5 - time.monotonic()))
            after_5_s = srv.chat_requests()
            time.sleep(max(0.0, killed_at + 15 - time.monotonic()))
            assert srv.chat_requests() == after_5_s, "caption actors still call the server"
            time.sleep(max(0.0, killed_at + 30 - time.monotonic()))
            left = _session_processes(proc.pid, ray_tmp)
        finally:
            for pid, _cmd in _session_processes(proc.pid, ray_tmp):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            shutil.rmtree(ray_tmp, ignore_errors=True)
    assert left == [], f"still running 30 s after kill -9 of the driver: {left}"


@contextlib.contextmanager
def tmpfs(where: Path, size: str, *options: str) -> Iterator[Path]:
    """A small real file system of our own, to fill up or make read-only."""
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *options]),
                        "tmpfs", str(where)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs at {where} ({r.stderr.strip()}): this test needs "
                    "root (or CAP_SYS_ADMIN) to make a disk it can fill")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def _fill(folder: Path) -> Path:
    """Write zeros into ``folder`` until its file system has no space left."""
    filler = folder / "filler"
    with open(filler, "wb") as fh:
        with contextlib.suppress(OSError):
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        with contextlib.suppress(OSError):
            os.fsync(fh.fileno())
    with pytest.raises(OSError):  # really full: not even a small file fits
        (folder / "probe").write_bytes(b"x" * 8192)
    return filler


def test_disk_full_stops_cleanly_and_resume_finishes(sample: Path, straight: Path,
                                                     tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk", "16m") as disk, serving(free_port()) as srv:
        out = disk / "run"
        cfg = few_in_flight_config(srv.url, tmp_path / "cfg.yaml")
        proc = start_cli(run_argv(sample, out, cfg))
        try:
            wait_for(lambda: done_markers(out) >= 1, what="a finished shard")
            filler = _fill(disk)
            marked_when_full = done_markers(out)
            text = finish_cli(proc, expect=1)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert "Traceback" not in text
        [line] = _error_lines(text)
        assert f"cannot write to {out}" in line and "No space left on device" in line
        assert done_markers(out) == marked_when_full < 4  # nothing marked once the disk was full
        assert set(read_rows(out).column("status").to_pylist()) == {"ok"}
        filler.unlink()  # space is back
        finish_cli(start_cli(refsav_argv("resume", "--out", str(out), "--no-progress")))
        assert done_markers(out) == 4
        _assert_all_ok_and_equal(out, straight)


def test_read_only_out_is_one_line_and_exit_1(sample: Path, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro", "1m", "ro") as ro, serving(free_port()) as srv:
        out = ro / "run"
        cfg = few_in_flight_config(srv.url, tmp_path / "cfg.yaml")
        text = finish_cli(start_cli(run_argv(sample, out, cfg)), expect=1, timeout=120)
    assert "Traceback" not in text
    [line] = _error_lines(text)
    assert f"cannot write to {out}: Read-only file system" in line
    assert not out.exists()
