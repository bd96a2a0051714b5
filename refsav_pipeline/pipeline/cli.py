"""``refsav run / resume / status / demo``: the distributed job and its bookkeeping."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.console import Console

from refsav_pipeline.cli_common import load_config
from refsav_pipeline.config import PipelineConfig
from refsav_pipeline.pipeline.driver import (
    RunRefused,
    execute,
    load_run_config,
    prepare_output,
)
from refsav_pipeline.pipeline.status import print_status, run_status
from refsav_pipeline.records import shard_files
from refsav_pipeline.sav.synth import synth_sav

console = Console(stderr=True)
out_console = Console()

OutOpt = Annotated[Path, typer.Option("--out", help="Output folder of the run.")]
AddressOpt = Annotated[str | None, typer.Option(
    "--address", help="Ray cluster address (e.g. ray://head:10001 or auto); default: local.")]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress",
                                           help="Show progress bars.")]
VerifyOpt = Annotated[bool, typer.Option(
    "--verify", help="Re-hash every finished Parquet file instead of trusting a marker whose "
    "file has the recorded size and mtime.")]


def _refuse(exc: Exception) -> typer.Exit:
    console.print(f"[red]refused:[/red] {exc}")
    return typer.Exit(2)


def run(
    sav_root: Annotated[Path, typer.Option(help="SA-V root (sav_train/sav_0XX/… or flat).")],
    out: OutOpt = Path("annotations/refsav"),
    config: Annotated[Path | None, typer.Option(help="Pipeline config YAML.")] = None,
    address: AddressOpt = None,
    limit_videos: Annotated[int | None, typer.Option(min=1, help="Only the first N videos.")]
    = None,
    shard_size: Annotated[int | None, typer.Option(min=1, help="Videos per shard.")] = None,
    force: Annotated[bool, typer.Option(help="Start over if --out holds an incompatible run.")]
    = False,
    progress: ProgressOpt = True,
) -> None:
    """Generate Ref-SAV rows for every selected masklet, shard by shard, on Ray."""
    cfg = load_config(config)
    if shard_size is not None:
        cfg.run.shard_size = shard_size
    try:
        prepare_output(sav_root, out, cfg, limit_videos=limit_videos, force=force)
    except RunRefused as exc:
        raise _refuse(exc) from exc
    execute(out, cfg, address=address, show_progress=progress, console=console)
    print_status(run_status(out), out_console)


def resume(
    out: OutOpt,
    retry_failed: Annotated[bool, typer.Option(help="Also redo rows whose status is failed.")]
    = False,
    config: Annotated[Path | None, typer.Option(
        help="Same config with other endpoints/concurrency (fingerprint must match).")] = None,
    address: AddressOpt = None,
    progress: ProgressOpt = True,
    verify: VerifyOpt = False,
) -> None:
    """Finish the shards of a run that have no valid completion marker."""
    try:
        cfg = load_run_config(out, config)
    except (RunRefused, OSError, ValueError) as exc:
        raise _refuse(exc) from exc
    execute(out, cfg, address=address, retry_failed=retry_failed, verify=verify,
            show_progress=progress, console=console)
    print_status(run_status(out), out_console)


def status(
    out: OutOpt,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    verify: VerifyOpt = False,
) -> None:
    """Shards done/partial/pending, rows by status, failures, calls, tokens, throughput."""
    try:
        st = run_status(out, verify=verify)
    except FileNotFoundError as exc:
        raise _refuse(exc) from exc
    if as_json:
        typer.echo(st.model_dump_json(indent=1))
    else:
        print_status(st, out_console)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def reference_server(port: int, *extra: str, timeout_s: float = 60.0) -> Iterator[str]:
    """The offline reference server as a real subprocess on loopback; yields its base URL."""
    cmd = [sys.executable, "-m", "refsav_pipeline.cli", "serve", "reference",
           "--host", "127.0.0.1", "--port", str(port), *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + timeout_s
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(f"reference server exited: {err[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/models", timeout=1.0, trust_env=False).status_code == 200:
                    break
            if time.time() > deadline:
                raise RuntimeError(f"reference server not healthy on port {port}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def with_endpoints(cfg: PipelineConfig, url: str) -> PipelineConfig:
    """``cfg`` with both models served at ``url`` (endpoints are not in the fingerprint)."""
    models = cfg.models.model_copy(update={
        role: getattr(cfg.models, role).model_copy(update={"endpoints": [url]})
        for role in ("captioner", "judge")})
    return cfg.model_copy(update={"models": models})


def demo(
    out: OutOpt = Path("annotations/demo"),
    videos: Annotated[int, typer.Option(min=1, help="Synthetic videos to make.")] = 6,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic sample.")] = 0,
    progress: ProgressOpt = True,
) -> None:
    """The whole job offline: synthetic SA-V sample → reference server → Ray run → status
    and an HTML report."""
    sav = out / "sav"
    if not (sav / "synth_truth.json").exists():
        made = synth_sav(sav, videos, seed)
        console.print(f"synthesized {len(made)} SA-V-format videos under {sav}")
    cfg = PipelineConfig()
    cfg.run.shard_size = 2
    port = free_port()
    with reference_server(port) as url:
        console.print(f"reference model server at {url}")
        cfg = with_endpoints(cfg, url)
        try:
            prepare_output(sav, out / "run", cfg)
        except RunRefused as exc:
            raise _refuse(exc) from exc
        execute(out / "run", cfg, show_progress=progress, console=console)
    print_status(run_status(out / "run"), out_console)
    files = shard_files(out / "run")
    out_console.print(f"{len(files)} Parquet shards in {out / 'run' / 'shards'}")
    from refsav_pipeline.export.report import build_report  # matplotlib: only when needed

    report_path = build_report(out / "run", cfg, gallery_size=12)
    out_console.print(f"report: {report_path.resolve().as_uri()}")
