"""``refsav deploy``: what the cluster launchers (deploy/slurm, deploy/k8s) need from Python."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer
import yaml

deploy_app = typer.Typer(
    help="Helpers for cluster launchers: live endpoints for a job, KubeRay manifests.",
    no_args_is_help=True,
    add_completion=False,
)


@deploy_app.command("endpoints")
def endpoints(
    config: Annotated[Path, typer.Option(help="pipeline YAML naming the models")],
    url: Annotated[str, typer.Option(help="OpenAI base URL (ending in /v1) serving both models")],
    write: Annotated[Path, typer.Option(help="where to write the config with this endpoint")],
    timeout: Annotated[float, typer.Option(help="seconds to wait for the server")] = 300.0,
) -> None:
    """Wait until URL serves both configured models, then write the config pointed at it.

    A job that starts its own server learns its address only at run time; the written copy
    has the same fingerprint, so `refsav resume --config` accepts it in every later job.
    """
    from refsav_pipeline.cli_common import load_config
    from refsav_pipeline.pipeline.cli import with_endpoints
    from refsav_pipeline.serve.readiness import wait_healthy

    cfg = load_config(config)
    url = url.rstrip("/")
    for model in (cfg.models.captioner, cfg.models.judge):
        try:
            wait_healthy(url, model.name, timeout, poll_s=1.0)
        except TimeoutError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc
    live = with_endpoints(cfg, url)
    write.parent.mkdir(parents=True, exist_ok=True)
    tmp = write.with_name(write.name + ".tmp")
    tmp.write_text(yaml.safe_dump(live.model_dump(mode="json"), sort_keys=False))
    tmp.replace(write)
    typer.echo(f"{url} serves {cfg.models.captioner.name} and {cfg.models.judge.name}; "
               f"wrote {write}", err=True)


@deploy_app.command("k8s")
def k8s(
    config: Annotated[Path, typer.Option(help="pipeline YAML; becomes the job's ConfigMap")],
    image: Annotated[str, typer.Option(help="image built from deploy/k8s/Dockerfile")]
    = "refsav-pipeline:latest",
    name: Annotated[str, typer.Option(help="name of the RayJob (and prefix of the rest)")]
    = "refsav",
    namespace: Annotated[str | None, typer.Option(help="namespace of every object")] = None,
    sav_root: Annotated[str, typer.Option(help="SA-V root inside the pods")] = "/data/sa-v",
    out: Annotated[str, typer.Option(help="--out inside the pods")] = "/data/refsav",
    pvc: Annotated[str, typer.Option(help="ReadWriteMany claim mounted at /data")]
    = "refsav-data",
    gpus_per_pod: Annotated[int, typer.Option(min=1, help="GPUs of one GPU worker pod")] = 8,
    cpu_workers: Annotated[int, typer.Option(min=0, help="pods in the CPU worker group")] = 2,
    ray_version: Annotated[str | None, typer.Option(
        help="Ray in the image (default: the Ray installed here)")] = None,
    retry_failed: Annotated[bool, typer.Option(
        help="when --out already holds a run, also redo its failed rows")] = False,
    metrics_port: Annotated[int, typer.Option(
        min=0, max=65535, help="the run's Prometheus metrics on the head pod, annotated for "
        "Prometheus' pod discovery (0: off)")] = 9400,
) -> None:
    """Print a KubeRay RayJob (+ its ConfigMap and volume claim) for CONFIG as YAML."""
    from refsav_pipeline.cli_common import load_config
    from refsav_pipeline.deploy.k8s import K8sOptions, describe_gpu_pods, dump, render

    cfg = load_config(config)
    given = {"image": image, "name": name, "namespace": namespace, "sav_root": sav_root,
             "out": out, "pvc": pvc, "gpus_per_pod": gpus_per_pod, "cpu_workers": cpu_workers,
             "ray_version": ray_version, "retry_failed": retry_failed,
             "metrics_port": metrics_port}
    try:
        opts = K8sOptions.model_validate({k: v for k, v in given.items() if v is not None})
        docs = render(cfg, config.read_text(), opts)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    # the command that renders this file again: the config plus every option not at its default
    defaults = K8sOptions(ray_version=opts.ray_version)
    flags = [f"--config {shlex.quote(str(config))}"]
    for key, value in opts.model_dump().items():
        if value != getattr(defaults, key) or key == "ray_version":
            flag = "--" + key.replace("_", "-")
            flags.append(flag if value is True else f"{flag} {shlex.quote(str(value))}")
    header = (f"# Rendered by `refsav deploy k8s {' '.join(flags)}`; re-render, don't edit.\n"
              f"# {describe_gpu_pods(cfg, opts.gpus_per_pod)}\n")
    typer.echo(dump(docs, header=header), nl=False)
