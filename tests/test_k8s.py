"""deploy/k8s: the KubeRay RayJob rendered from the config validates and carries its numbers.

The RayJob is checked against KubeRay's own CRD schema (tests/data/kuberay) with unknown fields
refused, so a misspelt field fails here instead of being pruned by the API server; its pod
templates, the ConfigMap and the volume claim against Kubernetes' schemas (kubernetes-validate).
"""

from __future__ import annotations

import gzip
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from packaging.requirements import Requirement
from typer.testing import CliRunner

from refsav_pipeline.cli import app
from refsav_pipeline.config import PipelineConfig
from refsav_pipeline.deploy.k8s import CONFIG_DIR, CONFIG_KEY, K8sOptions, gpu_pods, render

ROOT = Path(__file__).resolve().parents[1]
PAPER_CONFIG = ROOT / "configs" / "refsav-internvl2-76b-qwen2-72b.yaml"
EXAMPLE = ROOT / "deploy" / "k8s" / "rayjob.yaml"
CRD = Path(__file__).parent / "data" / "kuberay" / "ray.io_rayjobs.yaml.gz"
K8S_VERSION = "1.31"


def _strict(schema: Any) -> Any:
    """The CRD schema with unknown fields refused wherever it lists the known ones."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if ("properties" in out and "additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@pytest.fixture(scope="module")
def rayjob_schema() -> dict[str, Any]:
    crd = yaml.load(gzip.decompress(CRD.read_bytes()), Loader=yaml.CSafeLoader)  # 1.4 MB
    assert crd["spec"]["names"]["kind"] == "RayJob"
    v1 = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return _strict(v1["schema"]["openAPIV3Schema"])


def _docs(cfg: PipelineConfig, text: str, **opts: Any) -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in render(cfg, text, K8sOptions(**opts))}


def _validate_all(docs: dict[str, dict[str, Any]], rayjob_schema: dict[str, Any]) -> None:
    rayjob = docs["RayJob"]
    jsonschema.Draft7Validator(rayjob_schema).validate(rayjob)
    cluster = rayjob["spec"]["rayClusterSpec"]
    templates = [cluster["headGroupSpec"]["template"],
                 *(g["template"] for g in cluster["workerGroupSpecs"])]
    for i, template in enumerate(templates):
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate",
                                      "metadata": {"name": f"t{i}"}, "template": template},
                                     K8S_VERSION, strict=True)
    for kind in ("ConfigMap", "PersistentVolumeClaim"):
        kubernetes_validate.validate(docs[kind], K8S_VERSION, strict=True)


def test_paper_config_renders_valid_manifests(rayjob_schema: dict[str, Any]) -> None:
    text = PAPER_CONFIG.read_text()
    cfg = PipelineConfig.load(PAPER_CONFIG)
    docs = _docs(cfg, text)
    _validate_all(docs, rayjob_schema)
    # the pods read exactly this config
    assert docs["ConfigMap"]["data"][CONFIG_KEY] == text
    assert PipelineConfig.model_validate(
        yaml.safe_load(docs["ConfigMap"]["data"][CONFIG_KEY])) == cfg
    cluster = docs["RayJob"]["spec"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]
    assert {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True} in \
        head["containers"][0]["volumeMounts"]
    assert {"name": "config", "configMap": {"name": docs["ConfigMap"]["metadata"]["name"]}} in \
        head["volumes"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        claims = [v["persistentVolumeClaim"]["claimName"]
                  for v in group["template"]["spec"]["volumes"] if "persistentVolumeClaim" in v]
        assert claims == [docs["PersistentVolumeClaim"]["metadata"]["name"]]
    entry = docs["RayJob"]["spec"]["entrypoint"]
    assert f"refsav serve vllm --config {CONFIG_DIR}/{CONFIG_KEY} --address auto" in entry
    assert "refsav resume --out /data/refsav" in entry and "refsav run --sav-root /data/sa-v" \
        in entry
    assert "--retry-failed" not in entry
    again = _docs(cfg, text, retry_failed=True)["RayJob"]["spec"]["entrypoint"]
    assert "--no-progress --retry-failed\nelse" in again


def _gpu_numbers(docs: dict[str, dict[str, Any]]) -> tuple[int, int, int]:
    groups = docs["RayJob"]["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    gpu = next(g for g in groups if g["groupName"] == "gpu")
    limits = gpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert gpu["replicas"] == gpu["minReplicas"] == gpu["maxReplicas"]
    return gpu["replicas"], int(limits["nvidia.com/gpu"]), int(gpu["rayStartParams"]["num-cpus"])


@pytest.mark.parametrize("judge_replicas,gpus_per_pod", [(None, 8), (4, 8), (3, 4)])
def test_gpu_group_follows_the_config(judge_replicas: int | None, gpus_per_pod: int,
                                      rayjob_schema: dict[str, Any]) -> None:
    data = yaml.safe_load(PAPER_CONFIG.read_text())
    if judge_replicas is not None:
        data["models"]["judge"]["vllm"]["replicas"] = judge_replicas
    if gpus_per_pod < data["models"]["captioner"]["vllm"]["tensor_parallel_size"]:
        data["models"]["captioner"]["vllm"]["tensor_parallel_size"] = gpus_per_pod
    cfg = PipelineConfig.model_validate(data)
    docs = _docs(cfg, yaml.safe_dump(data), gpus_per_pod=gpus_per_pod)
    _validate_all(docs, rayjob_schema)
    pods, per_pod, ray_cpus = _gpu_numbers(docs)
    assert per_pod == gpus_per_pod
    wanted = sorted(m.vllm.tensor_parallel_size for m in (cfg.models.captioner,
                                                          cfg.models.judge)
                    for _ in range(m.vllm.replicas))
    packing = gpu_pods(cfg, gpus_per_pod)
    assert len(packing) == pods
    assert sorted(tp for pod in packing for _, tp in pod) == wanted  # every replica placed once
    assert all(sum(tp for _, tp in pod) <= per_pod for pod in packing)  # and each fits its pod
    assert (pods - 1) * per_pod < sum(wanted)  # no idle pod
    assert ray_cpus == max(len(pod) for pod in packing)  # one Ray CPU per vLLM actor


def test_replica_larger_than_a_pod_is_refused() -> None:
    res = CliRunner().invoke(app, ["deploy", "k8s", "--config", str(PAPER_CONFIG),
                                   "--gpus-per-pod", "4"])
    assert res.exit_code == 2
    assert "captioner: tensor_parallel_size 8 does not fit a pod of 4 GPUs" in res.stderr


def test_committed_example_is_the_rendering_of_the_paper_config(
        monkeypatch: pytest.MonkeyPatch) -> None:
    committed = EXAMPLE.read_text()
    command = re.match(r"# Rendered by `refsav (deploy k8s [^`]*)`", committed)
    assert command, committed.splitlines()[0]
    assert f"--config {PAPER_CONFIG.relative_to(ROOT)} " in command.group(1)
    monkeypatch.chdir(ROOT)  # the command names the config relative to the repository
    res = CliRunner().invoke(app, shlex.split(command.group(1)))
    assert res.exit_code == 0, res.stderr
    assert res.stdout == committed, "re-render deploy/k8s/rayjob.yaml (see its first line)"


def test_image_is_the_tested_vllm() -> None:
    dockerfile = (ROOT / "deploy" / "k8s" / "Dockerfile").read_text()
    pinned = re.search(r"^ARG VLLM_VERSION=(\S+)$", dockerfile, re.M)
    assert pinned and "FROM vllm/vllm-openai:v${VLLM_VERSION}" in dockerfile
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["vllm"]
    vllm = next(Requirement(r) for r in extras if Requirement(r).name == "vllm")
    assert vllm.specifier.contains(pinned.group(1)), (vllm, pinned.group(1))
