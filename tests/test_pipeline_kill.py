"""kill -9 of the driver or of a Ray worker at any moment, then resume: nothing lost or doubled.

The run is a real ``refsav run`` subprocess with its own local Ray instance, talking to the
reference server (with latency, so there is a middle of the run to kill it in).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
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

from refsav_pipeline.llm.cache import local_namespace, scan_cache
from refsav_pipeline.llm.config import ModelsConfig
from refsav_pipeline.pipeline.cli import free_port, reference_server
from refsav_pipeline.records import read_rows
from refsav_pipeline.reference.config import ReferenceServerConfig
from refsav_pipeline.reference.server import ReferenceServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def slow_server() -> Iterator[str]:
    with reference_server(free_port(), "--latency", "0.15") as url:
        yield url






def _reap_group(proc: subprocess.Popen) -> None:
    """Whatever the killed driver left behind (its local Ray processes) goes too."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)




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


def _start(args: list[str]) -> subprocess.Popen:
    """Ray's repeated log lines kept, so a killed run's log shows every worker's last words."""
    return start_cli(args, RAY_DEDUP_LOGS="0")


def _finish(proc: subprocess.Popen) -> str:
    return finish_cli(proc, timeout=240)


@pytest.fixture(scope="module")
def straight_run(sample: Path, slow_server: str, tmp_path_factory: pytest.TempPathFactory
                 ) -> Path:
    out = tmp_path_factory.mktemp("straight")
    cfg = few_in_flight_config(slow_server, out.parent / "straight.yaml")
    _finish(_start(run_argv(sample, out, cfg)))
    return out


@pytest.mark.parametrize("moment", ["after_first_shard", "early"])
def test_kill_driver_then_resume(sample: Path, slow_server: str, straight_run: Path,
                                 tmp_path: Path, moment: str) -> None:
    out = tmp_path / "run"
    cfg = few_in_flight_config(slow_server, tmp_path / "cfg.yaml")
    proc = _start(run_argv(sample, out, cfg))
    try:
        if moment == "early":
            wait_for(lambda: (out / "plan.json").exists(), what="the plan")
            time.sleep(1.0)
        else:
            wait_for(lambda: done_markers(out) >= 1, what="a finished shard")
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        _reap_group(proc)
    done_before = done_markers(out)
    assert done_before < 4
    _finish(_start(refsav_argv("resume", "--out", str(out), "--config", str(cfg),
                           "--no-progress")))
    resumed, straight = read_rows(out), read_rows(straight_run)
    assert resumed.num_rows == straight.num_rows > 0
    keys = [(r["video_id"], r["masklet_type"], r["masklet_id"]) for r in resumed.to_pylist()]
    assert len(keys) == len(set(keys)), "a row was duplicated"
    assert content(resumed) == content(straight)


def test_kill_a_worker_mid_run(sample: Path, slow_server: str, straight_run: Path,
                               tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = few_in_flight_config(slow_server, tmp_path / "cfg.yaml")
    proc = _start(run_argv(sample, out, cfg))
    try:
        wait_for(lambda: bool(_ray_workers(proc.pid, "ray::CaptionActor")),
                  what="the caption actor")
        staged = local_namespace(out / "cache", None)  # the default: under the temp dir
        assert staged is not None
        wait_for(lambda: any(staged.rglob("*.jsonl")), what="first model calls")
        time.sleep(0.5)
        for pid in _ray_workers(proc.pid, "ray::CaptionActor"):
            os.kill(pid, signal.SIGKILL)
        _finish(proc)
    finally:
        _reap_group(proc)
    assert content(read_rows(out)) == content(read_rows(straight_run))


def _staged(folder: Path) -> dict[str, str]:
    """Key -> record of the whole lines in the node-local cache files under ``folder``."""
    found: dict[str, str] = {}
    for shard in folder.rglob("*.jsonl"):
        for line in shard.read_bytes().splitlines(keepends=True):
            if line.endswith(b"\n"):
                key, rec = line.decode().split("\t", 1)
                found[key] = rec
    return found


def _staged_keys(folder: Path) -> set[str]:
    return set(_staged(folder))


def _image_calls(answers: dict[str, str]) -> set[str]:
    """The keys of calls that carry a masklet's own images (all but the judge's)."""
    return {k for k, rec in answers.items()
            if not json.loads(rec)["prompt"].startswith("consistency_judge")}


def _writers_dead(folder: Path) -> bool:
    """Every local shard's lock can be taken: no caption actor is writing any more."""
    for shard in folder.rglob("*.jsonl"):
        with open(shard, "rb") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
    return True


def test_kill_before_any_promotion_then_resume_repeats_no_answered_call(
        sample: Path, straight_run: Path, tmp_path: Path) -> None:
    """The answers of the videos in flight at kill -9 are only on node-local disk (promotion
    every hour; a video's answers are promoted when its actor is done with it); the resume's
    promotion task brings them to <out>/cache/ and no answered call is made again."""
    out, local = tmp_path / "run", tmp_path / "local"
    staged = local_namespace(out / "cache", str(local))
    assert staged is not None
    server = ReferenceServer(ModelsConfig(), ReferenceServerConfig(port=0, latency_s=0.15),
                             record_bodies=True)
    with server as srv:
        bodies = srv.stats.bodies
        assert bodies is not None
        cfg = few_in_flight_config(srv.url, tmp_path / "cfg.yaml", cache_local_dir=str(local),
                           cache_promote_interval_s=3600)
        proc = _start(run_argv(sample, out, cfg))
        try:
            # answers of videos still in flight: staged here and not promoted (a video's
            # answers are promoted when its actor is done with it, so count those apart)
            wait_for(lambda: len(_staged_keys(staged) - set(scan_cache(out / "cache").answers))
                     >= 8, what="answers only on local disk")
            assert proc.poll() is None, "the run ended before it could be killed"
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            _reap_group(proc)
        wait_for(lambda: _writers_dead(staged), what="the caption actors to die")
        promoted = scan_cache(out / "cache").answers
        only_local = set(_staged(staged)) - set(promoted)
        answered = {**promoted, **_staged(staged)}
        assert only_local  # not promoted yet (8 were, a moment before the kill)
        assert done_markers(out) < 4
        before = len(bodies)
        log = _finish(_start(refsav_argv("resume", "--out", str(out), "--config", str(cfg),
                                     "--no-progress")))
        asked = {json.dumps(b, sort_keys=True) for b in bodies[before:]
                 if "response_format" not in b}  # the judge's requests are the ones with it
    final = scan_cache(out / "cache")
    assert all(k in final for k in answered)
    # The resume asked exactly the calls with no answer yet (identical requests made at
    # once by two masklets count once: they are one call, one key). The judge's calls are
    # left out of the count: its request holds only two captions, so two videos can make the
    # same one, and the cache is kept per video: it is asked once per video.
    assert len(asked) == len(_image_calls(final.answers)) - len(_image_calls(answered))
    assert "request cache: promoted" in log  # by the task at run start, before the actors
    resumed = read_rows(out)
    assert sum(resumed.column("cached_calls").to_pylist()) > 0  # the resume used them
    assert content(resumed) == content(read_rows(straight_run))
    assert not staged.exists()


def test_interrupted_run_promotes_its_answers_before_it_exits(
        sample: Path, slow_server: str, tmp_path: Path) -> None:
    """SIGINT (Ctrl-C, or the Slurm job's signal before its time limit) stops the run; the
    caption actors are closed on the way out, so every answer staged on local disk is in
    <out>/cache/ when the driver exits, with no resume needed."""
    out, local = tmp_path / "run", tmp_path / "local"
    staged = local_namespace(out / "cache", str(local))
    assert staged is not None
    cfg = few_in_flight_config(slow_server, tmp_path / "cfg.yaml", cache_local_dir=str(local),
                       cache_promote_interval_s=3600)
    proc = _start(run_argv(sample, out, cfg))
    try:
        wait_for(lambda: len(_staged_keys(staged)) >= 12, what="answers on local disk")
        assert proc.poll() is None, "the run ended before it could be stopped"
        answered = _staged_keys(staged)
        os.kill(proc.pid, signal.SIGINT)
        out_text, _ = proc.communicate(timeout=120)
    finally:
        _reap_group(proc)
    assert proc.returncode != 0, out_text.decode(errors="replace")[-2000:]
    assert done_markers(out) < 4
    final = scan_cache(out / "cache")
    assert answered and all(k in final for k in answered)
    assert not staged.exists() or not list(staged.rglob("*.jsonl"))
