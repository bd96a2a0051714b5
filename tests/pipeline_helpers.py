"""Helpers for the pipeline's end-to-end tests: configs pointed at a live reference server."""

from __future__ import annotations

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
