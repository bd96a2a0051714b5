"""The reference server's vLLM metrics and its continuous-batching queue, over real HTTP."""

from __future__ import annotations

import asyncio
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from refsav_pipeline.llm import calls
from refsav_pipeline.llm.config import ModelsConfig
from refsav_pipeline.llm.session import ModelSession
from refsav_pipeline.llm.vllm_metrics import metrics_url, parse_vllm_metrics
from refsav_pipeline.reference.config import ReferenceServerConfig
from refsav_pipeline.reference.server import ReferenceServer
from refsav_pipeline.reference.testing import fast_client, models_at

VLLM_FAMILIES = {"vllm:num_requests_running": "gauge", "vllm:num_requests_waiting": "gauge",
                 "vllm:kv_cache_usage_perc": "gauge", "vllm:num_preemptions": "counter",
                 "vllm:prompt_tokens": "counter", "vllm:generation_tokens": "counter"}


def _families(url: str) -> dict[str, object]:
    r = httpx.get(metrics_url(url), timeout=5, trust_env=False)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(r.text)}


def test_metrics_url_is_the_server_root() -> None:
    assert metrics_url("http://h:8000/v1") == "http://h:8000/metrics"
    assert metrics_url("http://h:8000/v1/") == "http://h:8000/metrics"


def test_reference_server_serves_vllm_names_labels_and_token_counts(tmp_path) -> None:
    models = ModelsConfig()
    with ReferenceServer(models) as srv:
        fams = _families(srv.url)
        for name, typ in VLLM_FAMILIES.items():
            assert fams[name].type == typ, name
            labels = {frozenset(s.labels) for s in fams[name].samples}
            assert frozenset({"model_name", "engine"}) in labels, name
            served = {s.labels["model_name"] for s in fams[name].samples}
            assert served == {models.captioner.name, models.judge.name}, name
        with ModelSession(models_at(srv.url), fast_client(), tmp_path) as s:
            v = s.run(calls.judge_consistency(s, "A red car.", "A red car."))
        fams = _families(srv.url)
        gen = {x.labels["model_name"]: x.value for x in fams["vllm:generation_tokens"].samples
               if x.name.endswith("_total")}
        prompt = {x.labels["model_name"]: x.value for x in fams["vllm:prompt_tokens"].samples
                  if x.name.endswith("_total")}
        assert gen[models.judge.name] == v.usage.completion_tokens > 0
        assert prompt[models.judge.name] == v.usage.prompt_tokens > 0
        assert gen[models.captioner.name] == 0
        text = httpx.get(metrics_url(srv.url), trust_env=False).text
        sample = parse_vllm_metrics(text, models.judge.name)
        assert sample is not None
        assert (sample.running, sample.waiting, sample.kv_usage) == (0, 0, 0)
        assert parse_vllm_metrics(text, "some-other-model") is None


def test_kv_capacity_runs_n_at_once_and_queues_the_rest() -> None:
    """With --kv-capacity 4, 10 concurrent requests: 4 run, 6 wait (in /metrics), KV full;
    they finish in three batches of the latency."""
    models = ModelsConfig()
    cfg = ReferenceServerConfig(port=0, latency_s=0.6, kv_capacity=4)
    body = {"model": models.judge.name, "messages": [{"role": "user", "content": "hello"}]}
    with ReferenceServer(models, cfg) as srv:
        async def go() -> tuple[list[int], float, list]:
            async with httpx.AsyncClient(timeout=30, trust_env=False) as http:
                t0 = time.monotonic()
                reqs = [asyncio.create_task(http.post(f"{srv.url}/chat/completions", json=body))
                        for _ in range(10)]
                await asyncio.sleep(0.3)
                r = await http.get(metrics_url(srv.url))
                seen = parse_vllm_metrics(r.text, models.judge.name)
                answers = await asyncio.gather(*reqs)
                return [a.status_code for a in answers], time.monotonic() - t0, [seen]

        codes, took, (seen,) = asyncio.run(go())
        assert codes == [200] * 10
        assert seen is not None and (seen.running, seen.waiting, seen.kv_usage) == (4, 6, 1.0)
        assert 3 * 0.6 <= took < 3 * 0.6 + 1.5  # ceil(10 / 4) batches
        assert srv.app.state.engines[models.judge.name].peak_waiting == 6
