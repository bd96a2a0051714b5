"""KubeRay manifests rendered from the pipeline config, so GPU counts cannot drift from it.

One ``RayJob`` (head + CPU worker group + GPU worker group for the vLLM replicas) plus the
ConfigMap holding the config itself and the shared volume for SA-V and ``--out``. The GPU
group is sized by packing every replica (``tensor_parallel_size`` GPUs each, ``replicas`` per
model) into pods of ``gpus_per_pod`` GPUs in the order ``refsav serve vllm`` starts them.
"""

from __future__ import annotations

import shlex
from importlib.metadata import version
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from refsav_pipeline.config import PipelineConfig

ROLES = ("captioner", "judge")
CONFIG_DIR = "/etc/refsav"
CONFIG_KEY = "config.yaml"


class K8sOptions(BaseModel):
    """Where the job runs and how big its pods are; nothing here is about the models."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("refsav", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    namespace: str | None = None
    image: str = "refsav-pipeline:latest"
    ray_version: str = Field(default_factory=lambda: version("ray"))
    pvc: str = "refsav-data"
    pvc_size: str = "2Ti"
    storage_class: str | None = None
    mount: str = "/data"
    sav_root: str = "/data/sa-v"
    out: str = "/data/refsav"
    gpus_per_pod: int = Field(8, ge=1)
    cpu_workers: int = Field(2, ge=0, description="pods of the CPU worker group")
    cpu_worker_cpus: int = Field(16, ge=1)
    cpu_worker_memory: str = "64Gi"
    head_cpus: int = Field(8, ge=1)
    head_memory: str = "32Gi"
    gpu_pod_cpus: int = Field(32, ge=1)
    gpu_pod_memory: str = "512Gi"
    backoff_limit: int = Field(2, ge=0, description="new clusters after a failure; each resumes")
    retry_failed: bool = Field(False, description="a resumed run also redoes its failed rows")
    metrics_port: int = Field(
        9400, ge=0, le=65535, description="the run's Prometheus metrics on the head pod "
        "(the driver runs there); annotated for Prometheus' pod discovery. 0: off")


def gpu_pods(cfg: PipelineConfig, gpus_per_pod: int) -> list[list[tuple[str, int]]]:
    """Replicas per GPU pod, first fit in start order: ``[[(role, tp), ...], ...]``."""
    pods: list[list[tuple[str, int]]] = []
    for role in ROLES:
        v = getattr(cfg.models, role).vllm
        if v.tensor_parallel_size > gpus_per_pod:
            raise ValueError(f"{role}: tensor_parallel_size {v.tensor_parallel_size} does not "
                             f"fit a pod of {gpus_per_pod} GPUs")
        for _ in range(v.replicas):
            pod = next((p for p in pods
                        if sum(tp for _, tp in p) + v.tensor_parallel_size <= gpus_per_pod),
                       None)
            if pod is None:
                pods.append(pod := [])
            pod.append((role, v.tensor_parallel_size))
    return pods


def _resources(cpus: int, memory: str, gpus: int = 0) -> dict[str, Any]:
    amount: dict[str, Any] = {"cpu": str(cpus), "memory": memory}
    if gpus:
        amount["nvidia.com/gpu"] = str(gpus)
    return {"requests": dict(amount), "limits": dict(amount)}


def _pod(o: K8sOptions, container: str, resources: dict[str, Any], *, config: bool = False,
         shm: bool = False, ports: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    # /tmp on node-local scratch: caption actors (on any pod) stage request-cache shards there
    # before copying them to --out, and an emptyDir outlives a container restart in its pod
    mounts = [{"name": "data", "mountPath": o.mount}, {"name": "tmp", "mountPath": "/tmp"}]
    volumes: list[dict[str, Any]] = [
        {"name": "data", "persistentVolumeClaim": {"claimName": o.pvc}},
        {"name": "tmp", "emptyDir": {}}]
    if config:
        mounts.append({"name": "config", "mountPath": CONFIG_DIR, "readOnly": True})
        volumes.append({"name": "config", "configMap": {"name": f"{o.name}-config"}})
    if shm:  # vLLM's tensor-parallel workers share memory through /dev/shm
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
    c: dict[str, Any] = {
        "name": container, "image": o.image, "resources": resources, "volumeMounts": mounts,
        # model weights are downloaded once, to the shared volume
        "env": [{"name": "HF_HOME", "value": f"{o.mount}/hf-cache"}],
    }
    if ports:
        c["ports"] = ports
    return {"spec": {"containers": [c], "volumes": volumes}}


def entrypoint(o: K8sOptions) -> str:
    """Serve the models as detached Ray GPU actors, then run, or resume a run the volume holds."""
    cfg = f"{CONFIG_DIR}/{CONFIG_KEY}"
    out = shlex.quote(o.out)
    live = shlex.quote(f"{o.out}/k8s/live.yaml")
    metrics = f" --metrics-port {o.metrics_port}" if o.metrics_port else ""
    run = (f"refsav run --sav-root {shlex.quote(o.sav_root)} --out {out} --config {live} "
           f"--address auto{metrics} --no-progress")
    resume = f"refsav resume --out {out} --config {live} --address auto{metrics} --no-progress"
    if o.retry_failed:
        resume += " --retry-failed"
    script = "\n".join([
        "set -e",
        f"mkdir -p {shlex.quote(o.out + '/k8s')}",
        f"refsav serve vllm --config {cfg} --address auto --endpoints-out {live} --detach",
        f"if [ -f {shlex.quote(o.out + '/plan.json')} ]; then",
        f"  {resume}",
        "else",
        f"  {run}",
        "fi",
    ])
    return f"bash -c {shlex.quote(script)}"


def render(cfg: PipelineConfig, config_text: str, o: K8sOptions) -> list[dict[str, Any]]:
    """ConfigMap, PersistentVolumeClaim and RayJob for ``cfg`` (whose YAML is ``config_text``)."""
    meta: dict[str, Any] = {"name": o.name, "labels": {"app.kubernetes.io/name": "refsav"}}
    if o.namespace:
        meta["namespace"] = o.namespace

    def named(suffix: str) -> dict[str, Any]:
        return {**meta, "name": f"{o.name}{suffix}"}

    pods = gpu_pods(cfg, o.gpus_per_pod)
    pvc_spec: dict[str, Any] = {"accessModes": ["ReadWriteMany"],
                                "resources": {"requests": {"storage": o.pvc_size}}}
    if o.storage_class:
        pvc_spec["storageClassName"] = o.storage_class
    ports = [{"containerPort": 6379, "name": "gcs-server"},
             {"containerPort": 8265, "name": "dashboard"},
             {"containerPort": 10001, "name": "client"}]
    if o.metrics_port:
        ports.append({"containerPort": o.metrics_port, "name": "refsav-metrics"})
    head = {
        # no CPU-stage tasks on the head; the caption actors (0 CPUs) run next to the driver
        "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
        "template": _pod(o, "ray-head", _resources(o.head_cpus, o.head_memory), config=True,
                         ports=ports),
    }
    if o.metrics_port:  # the driver's /metrics, vLLM's figures re-exported: docs/metrics.md
        head["template"]["metadata"] = {"annotations": {
            "prometheus.io/scrape": "true", "prometheus.io/port": str(o.metrics_port),
            "prometheus.io/path": "/metrics"}}
    workers = []
    if o.cpu_workers:
        workers.append({
            "groupName": "cpu", "replicas": o.cpu_workers, "minReplicas": o.cpu_workers,
            "maxReplicas": o.cpu_workers, "rayStartParams": {},
            "template": _pod(o, "ray-worker",
                             _resources(o.cpu_worker_cpus, o.cpu_worker_memory)),
        })
    workers.append({
        "groupName": "gpu", "replicas": len(pods), "minReplicas": len(pods),
        "maxReplicas": len(pods),
        # one Ray CPU per vLLM actor (what `refsav serve vllm` asks for), so the CPU stage
        # never lands on GPU pods and leaves their cores to vLLM
        "rayStartParams": {"num-cpus": str(max(len(p) for p in pods))},
        "template": _pod(o, "ray-worker", _resources(o.gpu_pod_cpus, o.gpu_pod_memory,
                                                     o.gpus_per_pod), shm=True),
    })
    rayjob = {
        "apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": dict(meta),
        "spec": {
            "entrypoint": entrypoint(o),
            "submissionMode": "K8sJobMode",
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": 3600,
            "backoffLimit": o.backoff_limit,
            "rayClusterSpec": {"rayVersion": o.ray_version, "headGroupSpec": head,
                               "workerGroupSpecs": workers},
        },
    }
    return [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": named("-config"),
         "data": {CONFIG_KEY: config_text}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {**meta,
                                                                           "name": o.pvc},
         "spec": pvc_spec},
        rayjob,
    ]


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the entrypoint script, the config file) as literal blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def describe_gpu_pods(cfg: PipelineConfig, gpus_per_pod: int) -> str:
    pods = gpu_pods(cfg, gpus_per_pod)
    each = "; ".join("[" + ", ".join(f"{role} tp={tp}" for role, tp in pod) + "]"
                     for pod in pods)
    return f"{len(pods)} GPU pod(s) of {gpus_per_pod} GPUs: {each}"


def dump(docs: list[dict[str, Any]], header: str = "") -> str:
    return header + yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, width=100)
