"""kill -9 of the driver or of a Ray worker at any moment, then resume: nothing lost or doubled.

The run is a real ``refsav run`` subprocess with its own local Ray instance, talking to the
reference server (with latency, so there is a middle of the run to kill it in).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pipeline_helpers import config_for, content, write_config

from refsav_pipeline.pipeline.cli import free_port, reference_server
from refsav_pipeline.records import SHARDS_DIR, read_rows
from refsav_pipeline.sav.synth import synth_sav


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sav8")
    synth_sav(root, videos=8, seed=5)
    return root


@pytest.fixture(scope="module")
def slow_server() -> Iterator[str]:
    with reference_server(free_port(), "--latency", "0.15") as url:
        yield url


def _slow_config(url: str, path: Path) -> Path:
    """Few masklets in flight, so shards finish one after another and there is a middle."""
    cfg = config_for(url)
    cfg.run.max_inflight_masklets = 4
    cfg.run.max_prepared_videos = 2
    return write_config(cfg, path)


def _refsav(*args: str) -> list[str]:
    return [sys.executable, "-m", "refsav_pipeline.cli", *args]


def _start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "RAY_DEDUP_LOGS": "0"}
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, env=env)


def _finish(proc: subprocess.Popen, timeout: float = 240) -> str:
    out, _ = proc.communicate(timeout=timeout)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-3000:]
    return text


def _reap_group(proc: subprocess.Popen) -> None:
    """Whatever the killed driver left behind (its local Ray processes) goes too."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)


def _wait_for(pred, timeout: float = 120, what: str = "") -> None:  # noqa: ANN001
    deadline = time.time() + timeout
    while not pred():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _markers(out: Path) -> int:
    return len(list((out / SHARDS_DIR).glob("*.done.json"))) if (out / SHARDS_DIR).exists() \
        else 0


def _ray_workers(session_pid: int, name: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().decode(errors="replace")
            if name in cmd and os.getsid(int(entry.name)) == session_pid:
                pids.append(int(entry.name))
        except (OSError, ProcessLookupError):
            continue
    return pids


@pytest.fixture(scope="module")
def straight_run(sample: Path, slow_server: str, tmp_path_factory: pytest.TempPathFactory
                 ) -> Path:
    out = tmp_path_factory.mktemp("straight")
    cfg = _slow_config(slow_server, out.parent / "straight.yaml")
    _finish(_start(_refsav("run", "--sav-root", str(sample), "--out", str(out), "--config",
                           str(cfg), "--no-progress")))
    return out


@pytest.mark.parametrize("moment", ["after_first_shard", "early"])
def test_kill_driver_then_resume(sample: Path, slow_server: str, straight_run: Path,
                                 tmp_path: Path, moment: str) -> None:
    out = tmp_path / "run"
    cfg = _slow_config(slow_server, tmp_path / "cfg.yaml")
    proc = _start(_refsav("run", "--sav-root", str(sample), "--out", str(out), "--config",
                          str(cfg), "--no-progress"))
    try:
        if moment == "early":
            _wait_for(lambda: (out / "plan.json").exists(), what="the plan")
            time.sleep(1.0)
        else:
            _wait_for(lambda: _markers(out) >= 1, what="a finished shard")
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        _reap_group(proc)
    done_before = _markers(out)
    assert done_before < 4
    _finish(_start(_refsav("resume", "--out", str(out), "--config", str(cfg),
                           "--no-progress")))
    resumed, straight = read_rows(out), read_rows(straight_run)
    assert resumed.num_rows == straight.num_rows > 0
    keys = [(r["video_id"], r["masklet_type"], r["masklet_id"]) for r in resumed.to_pylist()]
    assert len(keys) == len(set(keys)), "a row was duplicated"
    assert content(resumed) == content(straight)


def test_kill_a_worker_mid_run(sample: Path, slow_server: str, straight_run: Path,
                               tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = _slow_config(slow_server, tmp_path / "cfg.yaml")
    proc = _start(_refsav("run", "--sav-root", str(sample), "--out", str(out), "--config",
                          str(cfg), "--no-progress"))
    try:
        _wait_for(lambda: bool(_ray_workers(proc.pid, "ray::CaptionActor")),
                  what="the caption actor")
        _wait_for(lambda: any((out / "cache").glob("*.jsonl")), what="first model calls")
        time.sleep(0.5)
        for pid in _ray_workers(proc.pid, "ray::CaptionActor"):
            os.kill(pid, signal.SIGKILL)
        _finish(proc)
    finally:
        _reap_group(proc)
    assert content(read_rows(out)) == content(read_rows(straight_run))
