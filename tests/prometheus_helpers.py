"""A real Prometheus (Debian's package, ``scripts/setup-prometheus``) for tests: started on
loopback with its own config and data dir, never the system service; and the dashboard's
queries."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

from refsav_pipeline.pipeline.cli import free_port

PROMETHEUS = Path("/usr/bin/prometheus")
DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "refsav.json"
_NAME = re.compile(r"\b(refsav_[a-z_]+|vllm:[a-z_]+)\b")


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of the Grafana dashboard."""
    dash = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in dash["panels"] for t in p["targets"]]


def names_in(expr: str) -> set[str]:
    """The metric names a PromQL expression reads."""
    return set(_NAME.findall(expr))


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def api(self, path: str, **params: Any) -> Any:
        r = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10, trust_env=False)
        body = r.json()
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = at
        return self.api("query", **params)["result"]

    def wait_targets_up(self, jobs: int, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            up = [t for t in self.api("targets")["activeTargets"] if t["health"] == "up"]
            if len(up) >= jobs:
                return
            time.sleep(0.5)
        raise AssertionError(f"Prometheus targets not up: {self.api('targets')}")


@contextmanager
def prometheus(tmp: Path, targets: dict[str, str]) -> Iterator[Prometheus]:
    """Prometheus scraping ``targets`` (job -> host:port) every second, on a free port."""
    assert PROMETHEUS.is_file(), "run scripts/setup-prometheus (Debian's prometheus package)"
    tmp.mkdir(parents=True, exist_ok=True)
    cfg = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
           "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [addr]}]}
                              for job, addr in targets.items()]}
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    port = free_port()
    with open(tmp / "log", "w") as log:
        proc = subprocess.Popen(
            [str(PROMETHEUS), f"--config.file={tmp / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(f"{url}/-/ready", timeout=2, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, (tmp / "log").read_text()[-2000:]
            assert time.time() < deadline, "Prometheus did not get ready"
            time.sleep(0.2)
        yield Prometheus(url)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
