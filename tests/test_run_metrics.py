"""The run's /metrics: what the driver serves from the actors' figures, over real HTTP, and a
whole ``refsav run --metrics-port`` scraped while it goes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from pipeline_helpers import (
    closed_port_url,
    config_for,
    finish_cli,
    refsav_argv,
    start_cli,
    write_config,
)
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from refsav_pipeline.cli import app
from refsav_pipeline.llm import calls
from refsav_pipeline.llm.config import ModelsConfig
from refsav_pipeline.llm.session import ModelSession
from refsav_pipeline.pipeline.cli import free_port, reference_server
from refsav_pipeline.pipeline.driver import prepare_output
from refsav_pipeline.pipeline.metrics import METRIC_NAMES, RunFigures, gpu_line, metrics_server
from refsav_pipeline.records import RefSavRow
from refsav_pipeline.reference.config import ReferenceServerConfig
from refsav_pipeline.reference.server import ReferenceServer
from refsav_pipeline.reference.testing import fast_client, models_at


def scrape(port: int) -> dict[str, list]:
    """``name -> samples`` of ``http://127.0.0.1:port/metrics`` (names as exposed)."""
    r = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5, trust_env=False)
    assert r.status_code == 200
    out: dict[str, list] = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            out.setdefault(s.name, []).append(s)
    return out


def value(samples: dict[str, list], name: str, **labels: str) -> float:
    return sum(s.value for s in samples.get(name, [])
               if all(s.labels.get(k) == v for k, v in labels.items()))


def test_driver_serves_the_actors_figures_summed(tmp_path: Path) -> None:
    """Two sessions' real figures (calls to the reference server) through RunFigures: counters
    add up, a restarted actor's counters are kept, vLLM's gauges are re-exported."""
    models = ModelsConfig()
    cfg = ReferenceServerConfig(port=0, latency_s=0.05, kv_capacity=4)
    with ReferenceServer(models, cfg) as srv:
        figs = []
        for k in range(2):
            with ModelSession(models_at(srv.url, max_concurrency=8), fast_client(),
                              tmp_path / str(k)) as s:
                for i in range(3):
                    s.run(calls.judge_consistency(s, f"red {i}", f"red {i}"))
                s.run(calls.judge_consistency(s, "red 0", "red 0"))  # a cache hit
                figs.append(s.figures())
    run = RunFigures(shards_total=5)
    run.begin(2, shards_done=1, videos_done=2)
    run.actor(0, figs[0])
    run.actor(1, figs[1])
    run.rows_written([RefSavRow.model_construct(status="ok", error_kind=None),
                      RefSavRow.model_construct(status="failed", error_kind="model_error")])
    run.video_done()
    run.shard_done()
    judge, url = models.judge.model, srv.url
    line = gpu_line(next(e for e in run.merged().endpoints if e.model == judge))
    assert line.startswith(f"{url.removeprefix('http://').removesuffix('/v1')} in flight 0/16 "
                           "running ")  # the progress line's view of the endpoint
    with metrics_server(0, "127.0.0.1", run) as port:
        assert port
        m = scrape(port)
        assert value(m, "refsav_requests_total", model=judge, endpoint=url, outcome="ok") == 6
        assert value(m, "refsav_cache_hits_total") == 2
        assert value(m, "refsav_request_seconds_count", model=judge,
                     call="consistency_judge") == 6
        assert value(m, "refsav_request_seconds_bucket", model=judge, call="consistency_judge",
                     le="+Inf") == 6
        assert value(m, "refsav_tokens_total", model=judge, kind="completion") > 0
        assert value(m, "refsav_endpoint_up", model=judge, endpoint=url) == 1
        assert value(m, "refsav_concurrency_limit", model=judge, endpoint=url) == 2 * 8
        running = value(m, "refsav_vllm_num_requests_running", model=judge, endpoint=url)
        assert running in (0, 1)  # read as requests went out, one at a time, of 4 slots
        assert value(m, "refsav_vllm_kv_cache_usage_perc", model=judge, endpoint=url) == \
            running / 4
        assert "refsav_vllm_num_preemptions_total" in m
        assert value(m, "refsav_rows_total", status="failed", error_kind="model_error") == 1
        assert value(m, "refsav_shards_done") == 2 and value(m, "refsav_shards_total") == 5
        assert value(m, "refsav_videos_done") == 3
        # actor 0 restarts (an empty session): its old counters stay in the totals
        run.actor(0, figs[0].model_copy(update={"endpoints": [], "latency": [],
                                                "tokens": {}, "cache_hits": 0}))
        assert value(scrape(port), "refsav_requests_total", model=judge, outcome="ok") == 6
        # a new pass (--retry-failed) with new actors: counters still never go down
        run.begin(1, shards_done=4, videos_done=8)
        assert value(scrape(port), "refsav_requests_total", model=judge, outcome="ok") == 6
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2, trust_env=False)


@pytest.mark.slow
def test_run_serves_metrics_while_it_goes(synth_root: Path, tmp_path: Path) -> None:
    """``refsav run --metrics-port`` as users start it: while it runs, /metrics carries every
    metric (vLLM's gauges of the reference server included); the port closes with the run."""
    port = free_port()
    with reference_server(free_port(), "--latency", "0.3", "--kv-capacity", "4") as url:
        cfg = write_config(config_for(url), tmp_path / "cfg.yaml")
        proc = start_cli(refsav_argv("run", "--sav-root", str(synth_root), "--out",
                                     str(tmp_path / "out"), "--config", str(cfg),
                                     "--no-progress", "--metrics-port", str(port)))
        seen: dict[str, list] = {}
        deadline = time.time() + 240
        while proc.poll() is None and time.time() < deadline:
            try:
                seen = scrape(port)
            except httpx.HTTPError:
                time.sleep(0.2)
                continue
            if value(seen, "refsav_vllm_num_requests_running") > 0 and \
                    value(seen, "refsav_rows_total") > 0:
                break
            time.sleep(0.2)
        out = finish_cli(proc)
    assert f"metrics at http://0.0.0.0:{port}/metrics" in out
    names = {n for n in seen} | {n.removesuffix("_bucket") for n in seen}
    missing = [n for n in METRIC_NAMES if n not in names]
    assert not missing, (missing, sorted(seen))
    assert value(seen, "refsav_vllm_num_requests_running") > 0
    assert value(seen, "refsav_concurrency_limit") > 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2, trust_env=False)


def test_status_reads_each_endpoints_vllm_figures(synth_root: Path, tmp_path: Path) -> None:
    """``refsav status`` shows what the GPUs of the run's endpoints do now (running, waiting,
    KV use), and says which endpoint does not answer."""
    dead = closed_port_url()
    with ReferenceServer(ModelsConfig(), ReferenceServerConfig(port=0, kv_capacity=8)) as srv:
        cfg = config_for(srv.url)
        cfg.models.judge.endpoints = [srv.url, dead]
        prepare_output(synth_root, tmp_path / "out", cfg)
        res = CliRunner().invoke(app, ["status", "--out", str(tmp_path / "out")])
        js = CliRunner().invoke(app, ["status", "--out", str(tmp_path / "out"), "--json"])
    assert res.exit_code == 0, res.output
    host = srv.url.removeprefix("http://").removesuffix("/v1")
    assert f"captioner endpoint │ {host} running 0 waiting 0 KV 0%" in res.output
    assert f"{dead}: not answering" in res.output
    eps = json.loads(js.output)["endpoints"]
    assert [(e["role"], e["vllm"] is not None) for e in eps] == [
        ("captioner", True), ("judge", True), ("judge", False)]
    quiet = CliRunner().invoke(app, ["status", "--out", str(tmp_path / "out"), "--json",
                                     "--no-endpoints"])
    assert json.loads(quiet.output)["endpoints"] == []
