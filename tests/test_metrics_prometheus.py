"""A real Prometheus scrapes a real run's --metrics-port and the reference server's vLLM
metrics; the series arrive, and every query of the Grafana dashboard reads only metrics the run
exposes (and, evaluated by Prometheus, finds data)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pipeline_helpers import config_for, finish_cli, refsav_argv, start_cli, write_config
from prometheus_helpers import dashboard_queries, names_in, prometheus

from refsav_pipeline.pipeline.cli import free_port, reference_server
from refsav_pipeline.pipeline.metrics import METRIC_NAMES

HISTOGRAM = "refsav_request_seconds"
EXPOSED = {n for n in METRIC_NAMES if n != HISTOGRAM} | {
    f"{HISTOGRAM}_{s}" for s in ("bucket", "sum", "count")}
"""The names of the series the run serves."""

MAY_BE_EMPTY = ('outcome!="ok"',)
"""Queries that find nothing in a run without failures."""


def test_every_dashboard_query_reads_only_metrics_the_run_serves() -> None:
    queries = dashboard_queries()
    assert len(queries) >= 9
    for title, expr in queries:
        names = names_in(expr)
        assert names, (title, expr)
        assert names <= EXPOSED, (title, names - EXPOSED)
    read = set().union(*(names_in(e) for _, e in queries))
    for must in ("refsav_vllm_num_requests_running", "refsav_vllm_num_requests_waiting",
                 "refsav_vllm_kv_cache_usage_perc", "refsav_requests_in_flight",
                 "refsav_concurrency_limit", "refsav_request_seconds_bucket",
                 "refsav_endpoint_up", "refsav_rows_total"):
        assert must in read, must


@pytest.mark.slow
def test_prometheus_scrapes_a_run_and_the_dashboard_finds_its_series(
        synth_root: Path, tmp_path: Path) -> None:
    port, ref_port = free_port(), free_port()
    with reference_server(ref_port, "--latency", "0.3", "--kv-capacity", "4") as url, \
            prometheus(tmp_path / "prom", {"refsav": f"127.0.0.1:{port}",
                                           "vllm": f"127.0.0.1:{ref_port}"}) as prom:
        cfg = write_config(config_for(url), tmp_path / "cfg.yaml")
        proc = start_cli(refsav_argv("run", "--sav-root", str(synth_root), "--out",
                                     str(tmp_path / "out"), "--config", str(cfg),
                                     "--no-progress", "--metrics-port", str(port)))
        first = seen_at = None  # when Prometheus first and last saw the run busy
        deadline = time.time() + 240
        while proc.poll() is None and time.time() < deadline:
            if prom.query("sum(refsav_vllm_num_requests_running) > 0 and "
                          "sum(refsav_rows_total) > 0"):
                seen_at = time.time()
                first = first or seen_at
                if seen_at - first > 4:  # rate() needs a few scrapes
                    break
            time.sleep(0.5)
        assert seen_at is not None, "Prometheus never saw the run busy"
        at = seen_at  # a moment when every series was there, to query at
        names = set(prom.api("label/__name__/values"))
        by_name = {n: prom.query(f'count({{__name__="{n}"}})', at) for n in EXPOSED}
        results = {expr: prom.query(expr, at) for _, expr in dashboard_queries()}
        vllm_own = prom.query('vllm:num_requests_running{job="vllm"}', at)
        finish_cli(proc)
    missing = sorted(n for n in EXPOSED if n not in names or not by_name[n])
    assert not missing, missing
    assert {s["metric"]["model_name"] for s in vllm_own} >= {"Qwen/Qwen2-72B-Instruct"}
    running = prom_value(results["refsav_vllm_num_requests_running"])
    assert 0 < running <= 4 * 2  # two served models, 4 slots each
    empty = [e for e, r in results.items() if not r and not any(m in e for m in MAY_BE_EMPTY)]
    assert not empty, empty


def prom_value(result: list[dict]) -> float:
    return sum(float(s["value"][1]) for s in result)
