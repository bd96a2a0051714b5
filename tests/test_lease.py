"""The run lease: one run per output folder, a stale lease taken over, ``status`` knows from it
whether the run is alive. (Two real ``refsav run`` processes: tests/test_operations.py.)"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from factories import write_fake_run

from refsav_pipeline.pipeline.lease import (
    LEASE_FILE,
    STALE_AFTER_S,
    LeaseHeld,
    RunLease,
    read_lease,
    run_lease,
)
from refsav_pipeline.pipeline.shards import shard_path
from refsav_pipeline.pipeline.status import run_status


def _forge(out: Path, host: str, pid: int, heartbeat_ago: float) -> None:
    now = time.time()
    out.mkdir(parents=True, exist_ok=True)
    (out / LEASE_FILE).write_text(json.dumps({
        "host": host, "pid": pid, "command": "refsav run", "token": "theirs",
        "started_at": now - 3600, "heartbeat_at": now - heartbeat_ago}))


def test_a_held_lease_refuses_a_second_taker_naming_the_holder(tmp_path: Path) -> None:
    with run_lease(tmp_path, "refsav run"):
        with pytest.raises(LeaseHeld) as ei:
            RunLease(tmp_path, "refsav resume").acquire()
        held = read_lease(tmp_path)
        assert held is not None and held.alive()
    msg = str(ei.value)
    assert socket.gethostname() in msg and f"pid {held.pid}" in msg and "refsav run" in msg
    assert read_lease(tmp_path) is None  # released
    assert [p.name for p in tmp_path.iterdir()] == []  # no private files left


def test_a_lease_of_a_dead_local_process_is_taken_over_at_once(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    _forge(tmp_path, socket.gethostname(), gone.pid, heartbeat_ago=0)
    with run_lease(tmp_path, "refsav resume") as lease:
        held = read_lease(tmp_path)
        assert held is not None and held.token == lease.info.token


def test_another_hosts_lease_counts_until_its_heartbeat_is_stale(tmp_path: Path) -> None:
    _forge(tmp_path, "gpu-node-7", 4242, heartbeat_ago=5)
    with pytest.raises(LeaseHeld, match="host gpu-node-7 \\(pid 4242\\)"):
        RunLease(tmp_path, "refsav run").acquire()
    _forge(tmp_path, "gpu-node-7", 4242, heartbeat_ago=STALE_AFTER_S + 1)
    with run_lease(tmp_path, "refsav run") as lease:
        held = read_lease(tmp_path)
        assert held is not None and held.token == lease.info.token


def test_a_torn_lease_is_held_until_its_file_is_stale(tmp_path: Path) -> None:
    (tmp_path / LEASE_FILE).write_text("{not json")
    with pytest.raises(LeaseHeld, match="unreadable lease"):
        RunLease(tmp_path, "refsav run").acquire()


def test_status_shows_time_left_only_while_the_run_is_alive(synth_root: Path,
                                                             tmp_path: Path) -> None:
    out = tmp_path / "run"
    write_fake_run(synth_root, out)
    shard_path(out, 1).unlink()  # a shard left to do
    assert run_status(out).eta_s is None and run_status(out).running is None  # not running
    with run_lease(out, "refsav resume"):
        st = run_status(out)
        assert st.running is not None and "refsav resume" in st.running
        assert st.eta_s is not None and st.eta_s > 0
    _forge(out, "gpu-node-7", 4242, heartbeat_ago=STALE_AFTER_S + 1)  # killed elsewhere
    assert run_status(out).eta_s is None and run_status(out).running is None
