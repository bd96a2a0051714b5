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

import pytest
import ray
from pipeline_helpers import config_for, killed_cache_writer, write_config
from ray.cluster_utils import Cluster

from refsav_pipeline.llm.cache import local_namespace, scan_cache
from refsav_pipeline.llm.config import ClientConfig
from refsav_pipeline.pipeline.cache_staging import promote_on_every_node
from refsav_pipeline.pipeline.cli import free_port, reference_server
from refsav_pipeline.records import read_rows
from refsav_pipeline.sav.synth import load_truth

pytestmark = pytest.mark.slow


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


def test_leftover_cache_shards_are_promoted_on_every_node(tmp_path: Path) -> None:
    """Two Ray nodes with different temp dirs (so different node-local disks): a writer killed
    on each leaves its shard under its node's temp dir; the run-start task on each node finds
    and promotes its own. The default local folder is resolved on the node, not the driver."""
    disks = {name: tmp_path / name for name in ("node-a", "node-b")}
    for d in disks.values():
        d.mkdir()
    shared = tmp_path / "out" / "cache"
    acked = {name: killed_cache_writer(shared, None, 200 + 100 * i, env={"TMPDIR": str(d)})
             for i, (name, d) in enumerate(disks.items())}
    staged = {name: local_namespace(shared, str(d / "refsav-cache"))
              for name, d in disks.items()}
    assert all(ns is not None and len(list(ns.rglob("*.jsonl"))) == 1 for ns in staged.values())
    os.environ["RAY_AUTH_MODE"] = "disabled"  # a throwaway cluster: no token to hand around
    cluster = Cluster()
    try:
        for d in disks.values():
            cluster.add_node(num_cpus=1, env_vars={"TMPDIR": str(d)})
        ray.init(address=cluster.address, logging_level="WARNING")
        cluster.wait_for_nodes()
        reports = promote_on_every_node(ClientConfig(cache_path=str(shared)), tmp_path / "out")
    finally:
        ray.shutdown()
        cluster.shutdown()
        os.environ.pop("RAY_AUTH_MODE", None)
    assert sorted(r.shards for r in reports) == [1, 1]  # each node promoted its own shard
    seen = scan_cache(shared)
    assert seen.files == 2 and seen.torn_lines == 0
    lines = sorted(len(p.read_bytes().splitlines()) for p in shared.rglob("*.jsonl"))
    assert all(n > a for n, a in zip(lines, sorted(acked.values()), strict=True))
    assert all(f"k{i}" in seen for i in range(max(acked.values()) + 1))
    assert not any(ns.exists() for ns in staged.values() if ns is not None)
