"""``refsav serve``: the offline reference server, or vLLM servers for the configured models."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
import yaml

serve_app = typer.Typer(
    help="Serve the models over the OpenAI chat-completions API (reference server or vLLM).",
    no_args_is_help=True,
    add_completion=False,
)

ROLES = ("captioner", "judge")


def _load(config: Path | None):  # -> PipelineConfig (lazy: keeps `refsav --help` fast)
    from refsav_pipeline.cli_common import load_config

    return load_config(config)


@serve_app.command("reference")
def reference(
    host: Annotated[str | None, typer.Option(help="bind address (config: 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="port, 0 = free (config: 8765)")] = None,
    latency: Annotated[float | None, typer.Option(help="seconds added per completion")] = None,
    fault_rate: Annotated[float | None, typer.Option(
        help="probability of an injected fault per completion (500, hang, bad judge JSON)")] = None,
    hang: Annotated[float | None, typer.Option(help="seconds a 'hang' fault lasts")] = None,
    seed: Annotated[int | None, typer.Option(help="seed of the fault generator")] = None,
    bad_answer_rate: Annotated[float | None, typer.Option(
        help="share of answers that are bad on purpose (empty, truncated, refusal, runaway, "
             "loop, leak, not English, same video caption): docs/quality.md")] = None,
    bad_answers: Annotated[str | None, typer.Option(
        help="comma-separated bad kinds to draw from (default: all)")] = None,
    kv_capacity: Annotated[int | None, typer.Option(
        min=1, help="at most N requests per model run at once, the rest wait (as in vLLM's "
        "continuous batching; shown at /metrics)")] = None,
    trust_request_mm_kwargs: Annotated[bool | None, typer.Option(
        "--trust-request-mm-kwargs/--no-trust-request-mm-kwargs",
        help="accept per-request mm_processor_kwargs, like vLLM's flag (default: as "
             "`refsav serve vllm` would start each model)")] = None,
    config: Annotated[Path | None, typer.Option(
        help="pipeline YAML: model names served, reference_server defaults")] = None,
) -> None:
    """Offline OpenAI-compatible server whose answers are computed from the images sent."""
    from refsav_pipeline.reference.config import BAD_ANSWER_KINDS
    from refsav_pipeline.reference.server import run_server, served_models

    kinds = bad_answers.split(",") if bad_answers else None
    unknown = sorted(set(kinds or ()) - set(BAD_ANSWER_KINDS))
    if unknown:
        raise typer.BadParameter(f"unknown kind(s) {', '.join(unknown)}; known: "
                                 f"{', '.join(BAD_ANSWER_KINDS)}", param_hint="--bad-answers")
    cfg = _load(config)
    over = {k: v for k, v in {"host": host, "port": port, "latency_s": latency,
                              "fault_rate": fault_rate, "hang_s": hang, "seed": seed,
                              "trust_request_mm_kwargs": trust_request_mm_kwargs,
                              "bad_answer_rate": bad_answer_rate,
                              "bad_answers": kinds,
                              "kv_capacity": kv_capacity,
                              }.items()
            if v is not None}
    rs = cfg.reference_server.model_validate({**cfg.reference_server.model_dump(), **over})
    names = ", ".join(m.name for m in served_models(cfg.models, rs))
    typer.echo(f"reference server on http://{rs.host}:{rs.port}/v1 serving {names} "
               f"(latency {rs.latency_s}s, fault rate {rs.fault_rate}, bad answer rate "
               f"{rs.bad_answer_rate}, KV capacity {rs.kv_capacity or 'unlimited'})", err=True)
    run_server(cfg.models, rs)


@serve_app.command("vllm")
def vllm(
    config: Annotated[Path, typer.Option(help="pipeline YAML with models.captioner/judge")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the commands only")] = False,
    address: Annotated[str | None, typer.Option(
        help="Ray cluster address (e.g. auto, ray://head:10001): one GPU actor per replica; "
             "without it, local subprocesses")] = None,
    only: Annotated[list[str] | None, typer.Option(help="serve only this role (repeatable)")]
    = None,
    endpoints_out: Annotated[Path | None, typer.Option(
        help="write a copy of the config with the live endpoints filled in")] = None,
    detach: Annotated[bool, typer.Option(
        help="Ray only: leave the servers running as detached actors and exit")] = False,
    node_gpus: Annotated[int | None, typer.Option(
        help="local mode: GPUs on this node (default: counted; 8 if none are visible)")] = None,
) -> None:
    """Start `vllm serve` for each configured model, wait for /v1/models, print endpoints."""
    from refsav_pipeline.serve.capacity import replica_capacity
    from refsav_pipeline.serve.checkpoint import max_model_len_problem
    from refsav_pipeline.serve.vllm_serve import (
        DEFAULT_NODE_GPUS,
        LocalServers,
        RayServers,
        node_gpu_count,
        plan,
    )

    cfg = _load(config)
    roles = list(only or ROLES)
    bad = set(roles) - set(ROLES)
    if bad:
        raise typer.BadParameter(f"unknown role(s) {sorted(bad)}; use {ROLES}")
    for role in roles:
        m = getattr(cfg.models, role)
        problem = max_model_len_problem(m.vllm.model_path or m.model, m.vllm.max_model_len)
        if problem:
            typer.echo(f"error: {role}: {problem}", err=True)
            raise typer.Exit(2)
    if address is None and node_gpus is None:
        node_gpus = node_gpu_count() or DEFAULT_NODE_GPUS
    try:
        launches = plan(cfg.models, roles, local=address is None,
                        node_gpus=node_gpus or DEFAULT_NODE_GPUS)
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    for role in roles:
        m = getattr(cfg.models, role)
        cap = replica_capacity(m.model, m.vllm)
        sizing = cap.explain() if cap else f"{m.model}: shape unknown, no KV arithmetic"
        limit = (f"auto, starting at {m.start_concurrency}" if m.adaptive
                 else str(m.max_concurrency))
        typer.echo(f"# {role} per replica: {sizing}; client max_concurrency "
                   f"{limit} per endpoint", err=True)
    if dry_run:
        for la in launches:
            where = ("local" if address is None
                     else f"ray actor num_gpus={la.num_gpus} @ {address}")
            typer.echo(f"# {la.role} replica {la.replica} ({where})")
            typer.echo(la.shell())
        return
    servers: LocalServers | RayServers = (
        LocalServers() if address is None else RayServers(address, detach=detach))
    try:
        servers.start(launches)
        live = servers.wait("127.0.0.1") if isinstance(servers, LocalServers) else servers.wait()
    except BaseException:
        if not detach:
            servers.stop()
        raise
    by_role: dict[str, list[str]] = {}
    for la, url in live:
        by_role.setdefault(la.role, []).append(url)
        typer.echo(f"{la.role}\t{la.model.name}\t{url}")
    if endpoints_out is not None:
        data = yaml.safe_load(config.read_text()) or {}
        for role, urls in by_role.items():
            data.setdefault("models", {}).setdefault(role, {})["endpoints"] = urls
        endpoints_out.write_text(yaml.safe_dump(data, sort_keys=False))
        typer.echo(f"wrote {endpoints_out}", err=True)
    if detach:
        return
    typer.echo("serving; Ctrl-C stops the servers", err=True)
    try:
        while servers.alive():
            time.sleep(10)
        typer.echo("a server exited; stopping the others", err=True)
        raise typer.Exit(1)
    except KeyboardInterrupt:
        pass
    finally:
        servers.stop()


if __name__ == "__main__":
    serve_app()
