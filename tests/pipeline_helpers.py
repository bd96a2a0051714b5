"""Helpers for the pipeline's end-to-end tests: configs pointed at a live reference server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import yaml

from refsav_pipeline.config import PipelineConfig
from refsav_pipeline.llm.config import ClientConfig
from refsav_pipeline.pipeline.cli import free_port, with_endpoints
from refsav_pipeline.records import SHARDS_DIR

MEASUREMENTS = ("latency_s", "cached_calls")
"""Columns that measure a run rather than describe its content: excluded from identity checks."""


def closed_port_url() -> str:
    """A loopback URL nothing listens on (a port just freed: connection refused)."""
    return f"http://127.0.0.1:{free_port()}/v1"


def config_for(url: str, **client: object) -> PipelineConfig:
    cfg = with_endpoints(PipelineConfig(), url)
    settings: dict[str, object] = {"connect_timeout_s": 1.0, "request_timeout_s": 5.0,
                                   "max_attempts": 6, "backoff_base_s": 0.01,
                                   "backoff_max_s": 0.05, "health_timeout_s": 1.0,
                                   "reprobe_interval_s": 0.2}
    settings.update(client)
    cfg.client = ClientConfig.model_validate(settings)
    cfg.run.shard_size = 2
    return cfg


def write_config(cfg: PipelineConfig, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return path


def content(table: pa.Table) -> list[dict]:
    return table.drop_columns(list(MEASUREMENTS)).to_pylist()


_KILLED_WRITER = """
import sys
from refsav_pipeline.llm.cache import RequestCache
local = None if sys.argv[2] == "default" else sys.argv[2]
cache = RequestCache(sys.argv[1], local_dir=local, promote_interval_s=float(sys.argv[3]),
                     sync_interval_s=float(sys.argv[4]))
i = 0
while True:
    cache.put(f"k{i}", {"text": "t" * 200, "i": i})
    print(i, flush=True)  # acknowledged: put() has returned
    i += 1
"""


def killed_cache_writer(shared: Path, local: Path | str | None, answers: int,
                        interval: float = 3600, env: dict[str, str] | None = None,
                        sync_interval: float = 1.0) -> int:
    """A real process puts answers into a request cache (staged under ``local``, the default
    local folder if None, straight into ``shared`` if "") and is killed with SIGKILL; returns
    the last acked."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(shared),
         "default" if local is None else str(local), str(interval), str(sync_interval)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
    try:
        acked = -1
        assert proc.stdout is not None
        while acked < answers:
            line = proc.stdout.readline()
            assert line, "the writer exited early"
            acked = int(line)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(10)
    return acked


# -- ``refsav`` as a subprocess, as users run it ------------------------------------------------


def refsav_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "refsav_pipeline.cli", *args]


def run_argv(sample: Path, out: Path, cfg: Path) -> list[str]:
    return refsav_argv("run", "--sav-root", str(sample), "--out", str(out), "--config",
                       str(cfg), "--no-progress")


def start_cli(args: list[str], **env: str) -> subprocess.Popen:
    """A command in its own session (so its whole process group can be reaped), output kept."""
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, env={**os.environ, **env})


def finish_cli(proc: subprocess.Popen, expect: int = 0, timeout: float = 300) -> str:
    out, _ = proc.communicate(timeout=timeout)
    text = out.decode(errors="replace")
    assert proc.returncode == expect, text[-3000:]
    return text


def wait_for(pred: Callable[[], bool], timeout: float = 120, what: str = "") -> None:
    deadline = time.time() + timeout
    while not pred():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def done_markers(out: Path) -> int:
    d = out / SHARDS_DIR
    return len(list(d.glob("*.done.json"))) if d.exists() else 0


def few_in_flight_config(url: str, path: Path, **client: object) -> Path:
    """Few masklets in flight, so shards finish one after another and a run has a middle to
    kill, stop or break."""
    cfg = config_for(url, **client)
    cfg.run.max_inflight_masklets = 4
    cfg.run.max_prepared_videos = 2
    return write_config(cfg, path)
