"""``refsav run / resume / status / demo``: the distributed job and its bookkeeping."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from refsav_pipeline.cli_common import load_config, run_folder
from refsav_pipeline.config import PipelineConfig
from refsav_pipeline.errors import InputError, RunStopped
from refsav_pipeline.pipeline.interrupts import Interrupted, stop_on_signals
from refsav_pipeline.pipeline.lease import run_lease
from refsav_pipeline.pipeline.plan import PLAN_FILE, load_plan
from refsav_pipeline.pipeline.status import print_status, run_status
from refsav_pipeline.records import RETRIED_STATUSES

# Ray, the model client, the decoders and Parquet are imported by the commands that use them,
# so `refsav status` and `--help` start in a fraction of a second (docs/scale.md).

console = Console(stderr=True)
out_console = Console()

OutOpt = Annotated[Path, typer.Option("--out", help="Output folder of the run.")]
AddressOpt = Annotated[str | None, typer.Option(
    "--address", help="Ray cluster address (e.g. ray://head:10001 or auto); default: local.")]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress",
                                           help="Show progress bars.")]
MetricsPortOpt = Annotated[int | None, typer.Option(
    "--metrics-port", min=0, max=65535, help="Serve Prometheus metrics at "
    "http://<this host>:PORT/metrics while the run goes (config: run.metrics_port).")]
VerifyOpt = Annotated[bool, typer.Option(
    "--verify", help="Re-hash every finished Parquet file instead of trusting a marker whose "
    "file has the recorded size and mtime.")]


def _nothing_to_do(out: Path, retry_failed: bool = False) -> bool:
    """True (and says so) if every shard of the run at ``out`` is done: no Ray, no servers."""
    from refsav_pipeline.pipeline.driver import shards_to_do

    todo, total = shards_to_do(out, retry_failed)
    if todo:
        return False
    console.print(f"0 of {total} shards to do")
    return True


def _ignored_on_existing_run(out: Path, shard_size: int | None, limit_videos: int | None
                             ) -> None:
    """Say which flags an existing plan overrides (the plan never changes without --force)."""
    from refsav_pipeline.pipeline.driver import load_run_config

    saved = load_run_config(out)
    if shard_size is not None and shard_size != saved.run.shard_size:
        console.print(f"note: --shard-size {shard_size} ignored: {out} was planned with "
                      f"{saved.run.shard_size} videos per shard (--force plans again)")
    if limit_videos is not None:
        console.print(f"note: --limit-videos {limit_videos} ignored: {out} was planned with "
                      f"{load_plan(out).num_videos} videos (--force plans again)")


EXIT_FAILED_ROWS = 3
"""``run``/``resume`` finished, but some rows failed (``--allow-failed-rows``: 0). Distinct from
usage mistakes (2), failures of the command itself (1) and signals (128 + the signal)."""

def _shards_done(out: Path) -> str:
    from refsav_pipeline.pipeline.driver import shards_to_do

    if not (out / PLAN_FILE).is_file():
        return "nothing was planned yet"
    todo, total = shards_to_do(out)
    return f"{total - todo} of {total} shards done, the rest unmarked"


@contextlib.contextmanager
def _ends_cleanly(out: Path) -> Iterator[None]:
    """How a run ends early, in one line each:
    - it cannot go on (no model answers, the output cannot be written): ``error:``, exit 1;
    - SIGINT or SIGTERM (Ctrl-C, ``kill``, Slurm): ``interrupted:``, exit 128 + signal.
    Nothing in flight was marked, so ``resume`` redoes exactly that."""
    with stop_on_signals():
        try:
            yield
        except RunStopped as exc:
            console.print(f"[red]error:[/red] {exc}. Nothing was marked failed; "
                          f"`refsav resume --out {out}` finishes the run once this is fixed.",
                          soft_wrap=True, highlight=False)
            raise typer.Exit(1) from exc
        except Interrupted as exc:
            console.print(f"[yellow]interrupted:[/yellow] stopped by {exc.name}; "
                          f"{_shards_done(out)}. `refsav resume --out {out}` continues.",
                          soft_wrap=True, highlight=False)
            raise typer.Exit(exc.exit_code) from None


def _finish(out: Path, allow_failed_rows: bool) -> None:
    """Print the status table; if rows failed, say how many and how to redo them, and exit
    ``EXIT_FAILED_ROWS`` unless they are allowed."""
    st = run_status(out)
    print_status(st, out_console)
    bad = {k: v for k, v in st.rows_by_status.items() if k in RETRIED_STATUSES and v}
    if not bad:
        return
    what = " and ".join(f"{n} {status}" for status, n in bad.items())
    kinds = ", ".join(f"{k} {v}" for k, v in st.failures_by_kind.items())
    line = (f"{what} of {st.rows} rows ({kinds}). `refsav resume --out {out} --retry-failed` "
            "redoes them")
    if allow_failed_rows:
        console.print(f"warning: {line}", soft_wrap=True, highlight=False, markup=False)
        return
    console.print(f"error: {line}; exit {EXIT_FAILED_ROWS} (--allow-failed-rows: 0)",
                  soft_wrap=True, highlight=False, markup=False)
    raise typer.Exit(EXIT_FAILED_ROWS)


AllowFailedOpt = Annotated[bool, typer.Option(
    "--allow-failed-rows", help=f"Exit 0 when the run finishes with failed rows (default: "
    f"exit {EXIT_FAILED_ROWS}, so scripts and Slurm see them).")]


def _serving_metrics(cfg: PipelineConfig, port: int | None) -> PipelineConfig:
    """``cfg`` with ``--metrics-port`` (for this command only: not saved with the run)."""
    if port is None:
        return cfg
    return cfg.model_copy(update={"run": cfg.run.model_copy(update={"metrics_port": port})})


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
    allow_failed_rows: AllowFailedOpt = False,
    metrics_port: MetricsPortOpt = None,
) -> None:
    """Generate Ref-SAV rows for every selected masklet, shard by shard, on Ray."""
    from refsav_pipeline.pipeline.driver import execute, prepare_output
    from refsav_pipeline.pipeline.preflight import check_models, check_sav_root

    cfg = load_config(config)
    if shard_size is not None:
        cfg.run.shard_size = shard_size
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file: pass a folder for the run")
    refs = check_sav_root(sav_root)  # the root listed once: planning reuses it
    if (out / PLAN_FILE).is_file() and not force:
        prepare_output(sav_root, out, cfg)  # an existing plan: refused or reused, nothing written
        _ignored_on_existing_run(out, shard_size, limit_videos)
        if _nothing_to_do(out):
            _finish(out, allow_failed_rows)
            return
    with _ends_cleanly(out):
        check_models(cfg, config_path=config)
        with run_lease(out, "refsav run"):
            prepare_output(sav_root, out, cfg, limit_videos=limit_videos, force=force,
                           videos=refs)
            execute(out, _serving_metrics(cfg, metrics_port), address=address,
                    show_progress=progress, console=console)
    _finish(out, allow_failed_rows)


def resume(
    out: OutOpt,
    retry_failed: Annotated[bool, typer.Option(help="Also redo rows whose status is failed.")]
    = False,
    config: Annotated[Path | None, typer.Option(
        help="Same config with other endpoints/concurrency (fingerprint must match).")] = None,
    address: AddressOpt = None,
    progress: ProgressOpt = True,
    verify: VerifyOpt = False,
    allow_failed_rows: AllowFailedOpt = False,
    metrics_port: MetricsPortOpt = None,
) -> None:
    """Finish the shards of a run that have no valid completion marker."""
    from refsav_pipeline.pipeline.driver import execute, load_run_config
    from refsav_pipeline.pipeline.preflight import check_models, check_sav_root

    out = run_folder(out)
    if config is not None:
        load_config(config)  # a broken file is named as such, before the fingerprint check
    cfg = _serving_metrics(load_run_config(out, config), metrics_port)
    if not _nothing_to_do(out, retry_failed):
        check_sav_root(Path(load_plan(out).sav_root),
                       fix=f"{out} was planned from it: make it readable there again")
        with _ends_cleanly(out):
            check_models(cfg, config_path=config, run_out=out if config is None else None)
            with run_lease(out, "refsav resume"):
                execute(out, cfg, address=address, retry_failed=retry_failed, verify=verify,
                        show_progress=progress, console=console)
    _finish(out, allow_failed_rows)


def requalify(
    out: OutOpt,
    config: Annotated[Path | None, typer.Option(
        help="The run's config with changed `checks` (fingerprint must match); default: the "
             "run's own checks.")] = None,
) -> None:
    """Re-judge a finished run's answers under the answer checks, without calling a model:
    rows whose answers fail now become `rejected` (then `resume --retry-failed` redoes them)."""
    from refsav_pipeline.pipeline.requalify import requalify as requalify_run

    out = run_folder(out)
    if config is not None:
        load_config(config)  # a broken file is named as such, before the fingerprint check
    rep = requalify_run(out, config)
    newly = ", ".join(f"{k} {v}" for k, v in rep.newly_rejected.items()) or "none"
    console.print(f"requalified {rep.rows} rows in {rep.shards} shards; newly rejected: "
                  f"{newly}; {rep.shards_rewritten} shards rewritten", highlight=False)
    print_status(run_status(out), out_console)


def status(
    out: OutOpt,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    verify: VerifyOpt = False,
    endpoints: Annotated[bool, typer.Option(
        "--endpoints/--no-endpoints", help="Also read each model endpoint's vLLM metrics now "
        "(requests running, waiting, KV-cache use).")] = True,
) -> None:
    """Shards done/partial/pending, rows by status, failures, calls, tokens, throughput, and
    what each model endpoint's GPUs are doing now."""
    st = run_status(run_folder(out), verify=verify, endpoints=endpoints)
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
    from refsav_pipeline.serve.readiness import ServerExited, wait_healthy

    cmd = [sys.executable, "-m", "refsav_pipeline.cli", "serve", "reference",
           "--host", "127.0.0.1", "--port", str(port), *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        try:
            wait_healthy(url, None, timeout_s, alive=lambda: proc.poll() is None, poll_s=0.2)
        except ServerExited as exc:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise ServerExited(f"reference {exc}: {err[-2000:]}") from exc
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
    from refsav_pipeline.pipeline.driver import execute, prepare_output
    from refsav_pipeline.pipeline.preflight import check_models, check_sav_root
    from refsav_pipeline.records import shard_files
    from refsav_pipeline.sav.synth import synth_sav

    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file: pass a folder for the demo")
    sav, run_dir = out / "sav", out / "run"
    if not (sav / "synth_truth.json").exists():
        made = synth_sav(sav, videos, seed)
        console.print(f"synthesized {len(made)} SA-V-format videos under {sav}")
    refs = check_sav_root(sav)
    cfg = PipelineConfig()
    cfg.run.shard_size = 2
    if not ((run_dir / PLAN_FILE).is_file() and _nothing_to_do(run_dir)):
        with reference_server(free_port()) as url:
            console.print(f"reference model server at {url}")
            cfg = with_endpoints(cfg, url)
            check_models(cfg)
            with _ends_cleanly(run_dir), run_lease(run_dir, "refsav demo"):
                prepare_output(sav, run_dir, cfg, videos=refs)
                execute(run_dir, cfg, show_progress=progress, console=console)
    print_status(run_status(run_dir), out_console)
    files = shard_files(run_dir)
    out_console.print(f"{len(files)} Parquet shards in {run_dir / 'shards'}")
    from refsav_pipeline.export.report import build_report  # matplotlib: only when needed

    report_path = build_report(run_dir, cfg, gallery_size=12)
    out_console.print(f"report: {report_path.resolve().as_uri()}")
    _next_steps(run_dir)


def _next_steps(run_dir: Path) -> None:
    """The commands a new user tries next, typed as they work from the shell they are in."""
    lines = ["next steps:"]
    if shutil.which("refsav") is None:
        activate = Path(sys.prefix) / "bin" / "activate"
        with contextlib.suppress(ValueError):
            activate = activate.relative_to(Path.cwd())
        lines.append(f"  source {activate}    # puts `refsav` on your PATH")
    lines += [f"  refsav status --out {run_dir}",
              f"  refsav benchmark select --out {run_dir} --count 20",
              f"  refsav review --out {run_dir}            # then: refsav review export "
              f"--out {run_dir}",
              f"  refsav export sa2va --out {run_dir} --to {run_dir.parent / 'export'}"]
    out_console.print("\n".join(lines), highlight=False, soft_wrap=True)
