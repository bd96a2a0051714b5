"""The metrics contract: the reference server exports vLLM's scheduler and token metrics under
vLLM's own definitions, and the client reads vLLM's real exposition.

vLLM's ``PrometheusStatLogger`` (``vllm/v1/metrics/loggers.py``) is built here for the judge
as ``refsav serve vllm`` launches it (the engine config of its stand-in checkpoint), and its
families are compared with the reference server's (``reference/vllm_metrics.py``): name, type,
documentation, label names. Then vLLM's own gauges are set and its page parsed by the client's
reader (``llm/vllm_metrics.py``), which the adaptive concurrency steers by.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from conftest import CONFIGS, commands, dry_run
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from refsav_pipeline.llm.vllm_metrics import (
    GENERATION_TOKENS,
    KV_USAGE,
    PREEMPTIONS,
    PROMPT_TOKENS,
    RUNNING,
    WAITING,
    parse_vllm_metrics,
)
from refsav_pipeline.reference.vllm_metrics import Engine, VllmExporter

NAMES = (RUNNING, WAITING, KV_USAGE, PREEMPTIONS, PROMPT_TOKENS, GENERATION_TOKENS)
NODE = {"CUDA_VISIBLE_DEVICES": ",".join(map(str, range(8)))}


def _families(text: bytes) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text.decode())}


def _vllm_logger(serve_parser: Callable, engine_config: Callable) -> tuple[Any, str]:
    """vLLM's Prometheus stat logger for the shipped judge (on the global registry, as in
    ``vllm serve``), and its served model name."""
    from vllm.v1.metrics.loggers import PrometheusStatLogger

    res = dry_run(CONFIGS[0], "--only", "judge", env=NODE)
    assert res.returncode == 0, res.stderr
    _env, argv = commands(res.stdout)[0]
    vcfg = engine_config(serve_parser(argv))
    logger = PrometheusStatLogger(vcfg, engine_indexes=[0])
    return logger, vcfg.model_config.served_model_name


def test_reference_server_metrics_are_vllms(serve_parser: Callable,
                                            engine_config: Callable) -> None:
    _logger, served = _vllm_logger(serve_parser, engine_config)
    theirs = _families(generate_latest(REGISTRY))
    registry = CollectorRegistry()
    Engine(served, 4, VllmExporter(registry))
    ours = _families(generate_latest(registry))
    for name in NAMES:
        assert name in theirs, f"vLLM no longer defines {name}"
        t, o = theirs[name], ours[name]
        assert (o.type, o.documentation) == (t.type, t.documentation), name
        assert {s.name for s in o.samples} == {s.name for s in t.samples}, name
        assert {frozenset(s.labels) for s in o.samples} == \
            {frozenset(s.labels) for s in t.samples}, name
        assert {s.labels["model_name"] for s in o.samples} == \
            {s.labels["model_name"] for s in t.samples} == {served}, name
        assert {s.labels["engine"] for s in o.samples} == \
            {s.labels["engine"] for s in t.samples}, name


def test_client_reads_vllms_own_page(serve_parser: Callable, engine_config: Callable) -> None:
    logger, served = _vllm_logger(serve_parser, engine_config)
    logger.gauge_scheduler_running[0].set(7)
    logger.gauge_scheduler_waiting[0].set(3)
    logger.gauge_kv_cache_usage[0].set(0.625)
    logger.counter_num_preempted_reqs[0].inc(2)
    sample = parse_vllm_metrics(generate_latest(REGISTRY), served)
    assert sample is not None
    assert (sample.running, sample.waiting, sample.kv_usage, sample.preemptions) == \
        (7, 3, 0.625, 2)
    assert parse_vllm_metrics(generate_latest(REGISTRY), "another-model") is None
