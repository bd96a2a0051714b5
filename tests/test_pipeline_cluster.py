"""`refsav run --address`: join a Ray cluster that is already running instead of starting one."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline_helpers import config_for, write_config

from refsav_pipeline.pipeline.cli import free_port, reference_server
from refsav_pipeline.records import read_rows
from refsav_pipeline.sav.synth import load_truth


def _head_address(head: subprocess.Popen, port: int, timeout: float = 90) -> str:
    """The address the head registered itself under (Ray binds the node's own IP, which the
    kernel keeps on this machine), read from ``ray start``'s own output."""
    deadline = time.time() + timeout
    seen = []
    assert head.stdout is not None
    while time.time() < deadline:
        line = head.stdout.readline()
        if not line:
            raise AssertionError("ray start exited: " + "".join(seen)[-2000:])
        seen.append(line)
        found = re.search(r"Local node IP\S*: \S*?(\d+\.\d+\.\d+\.\d+)", line)
        if found:
            return f"{found.group(1)}:{port}"
    raise AssertionError("ray start did not report its node IP")


def test_run_joins_an_existing_cluster(synth_root: Path, tmp_path: Path) -> None:
    port = free_port()
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # unix socket paths must stay short
    ray_exe = str(Path(sys.executable).with_name("ray"))
    # Ray's token auth is a deployment matter (the token lives in the head's session); this
    # test is about joining by address, so the throwaway cluster runs without it.
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    head = subprocess.Popen(
        [ray_exe, "start", "--head", f"--port={port}", "--num-cpus=2",
         "--include-dashboard=false", "--disable-usage-stats", "--block",
         f"--temp-dir={ray_tmp}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, text=True,
        env=env)
    try:
        address = _head_address(head, port)
        with reference_server(free_port()) as url:
            cfg = write_config(config_for(url), tmp_path / "cfg.yaml")
            out = tmp_path / "run"
            res = subprocess.run(
                [sys.executable, "-m", "refsav_pipeline.cli", "run", "--sav-root",
                 str(synth_root), "--out", str(out), "--config", str(cfg), "--address",
                 address, "--no-progress"],
                capture_output=True, text=True, timeout=300, env=env)
        assert res.returncode == 0, res.stderr[-3000:]
        assert f"Ray cluster at {address}: 1 node(s), 2 CPUs" in res.stderr
        rows = read_rows(out).to_pylist()
        assert len(rows) == len(load_truth(synth_root))
        assert {r["status"] for r in rows} == {"ok"}
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops its own processes
        try:
            head.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(10)
        shutil.rmtree(ray_tmp, ignore_errors=True)
