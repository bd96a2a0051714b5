"""The deployments expose the run's metrics: the RayJob's head pod (where the driver runs) and
the Slurm job, each saying where Prometheus finds them."""

from __future__ import annotations

from pathlib import Path

from refsav_pipeline.config import PipelineConfig
from refsav_pipeline.deploy.k8s import K8sOptions, render

ROOT = Path(__file__).resolve().parents[1]


def _head_and_entrypoint(opts: K8sOptions) -> tuple[dict, str]:
    rayjob = render(PipelineConfig(), "", opts)[-1]
    spec = rayjob["spec"]
    return spec["rayClusterSpec"]["headGroupSpec"]["template"], spec["entrypoint"]


def test_rayjob_serves_metrics_on_the_head_pod_for_prometheus() -> None:
    head, entry = _head_and_entrypoint(K8sOptions(ray_version="2.60.0"))
    ports = {p["name"]: p["containerPort"] for p in head["spec"]["containers"][0]["ports"]}
    assert ports["refsav-metrics"] == 9400
    assert head["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true", "prometheus.io/port": "9400",
        "prometheus.io/path": "/metrics"}
    assert entry.count("--metrics-port 9400") == 2  # run and resume
    head, entry = _head_and_entrypoint(K8sOptions(ray_version="2.60.0", metrics_port=0))
    assert "metadata" not in head and "--metrics-port" not in entry
    assert "refsav-metrics" not in {p["name"] for p in head["spec"]["containers"][0]["ports"]}


def test_shipped_rayjob_and_slurm_job_expose_the_metrics() -> None:
    rayjob = (ROOT / "deploy" / "k8s" / "rayjob.yaml").read_text()
    assert "--metrics-port 9400" in rayjob and "prometheus.io/port: '9400'" in rayjob
    sbatch = (ROOT / "deploy" / "slurm" / "refsav.sbatch").read_text()
    assert 'METRICS=(--metrics-port "$METRICS_PORT")' in sbatch
    assert sbatch.count('"${METRICS[@]}"') == 2  # run and resume
    assert "prometheus-targets.json" in sbatch
