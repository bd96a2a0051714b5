"""Helpers for the pipeline's end-to-end tests: configs pointed at a live reference server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import yaml

from refsav_pipeline.config import PipelineConfig
from refsav_pipeline.llm.config import ClientConfig
from refsav_pipeline.pipeline.cli import free_port, with_endpoints

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
