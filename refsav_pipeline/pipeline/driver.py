"""What ``refsav run`` and ``refsav resume`` do: plan once, then finish what is left.

The plan and the resolved config are written on the first run and never change; every later
command reads them from the output folder. A different config fingerprint is refused, since it
would mix rows made under different settings in one dataset.
"""

from __future__ import annotations

import gc
import json
import shutil
import time
from pathlib import Path

from rich.console import Console

from refsav_pipeline.config import PipelineConfig
from refsav_pipeline.errors import InputError, writing_under
from refsav_pipeline.pipeline.cache_staging import promote_on_every_node
from refsav_pipeline.pipeline.metrics import RunFigures, metrics_server
from refsav_pipeline.pipeline.plan import (
    CONFIG_FILE,
    PLAN_FILE,
    Plan,
    ensure_writable,
    load_plan,
    make_plan,
    save_plan,
    write_atomic,
)
from refsav_pipeline.pipeline.prepare import MaskletKey
from refsav_pipeline.pipeline.ray_session import ray_session
from refsav_pipeline.pipeline.runner import run_shards
from refsav_pipeline.pipeline.shard_book import RunStats
from refsav_pipeline.pipeline.shards import (
    ShardState,
    has_failed_rows,
    parquet_bytes,
    read_shard,
    shard_states,
    shards_left,
)
from refsav_pipeline.records import RETRIED_STATUSES, SHARDS_DIR
from refsav_pipeline.sav.index import SavVideoRef, index_sav_root

RUNS_LOG = "runs.jsonl"


class RunRefused(InputError):
    """The output folder holds a run that this command must not touch as asked."""


def save_config(out_dir: Path, cfg: PipelineConfig) -> None:
    write_atomic(out_dir / CONFIG_FILE, cfg.model_dump_json(indent=1).encode())


def load_run_config(out_dir: str | Path, override: str | Path | None = None) -> PipelineConfig:
    """The run's own config, or ``override`` if its fingerprint is the same (new endpoints)."""
    out_dir = Path(out_dir)
    saved = PipelineConfig.model_validate_json((out_dir / CONFIG_FILE).read_text())
    if override is None:
        return saved
    cfg = PipelineConfig.load(override)
    if cfg.fingerprint() != saved.fingerprint():
        raise RunRefused(
            f"{override} changes what rows contain (fingerprint {cfg.fingerprint()} != "
            f"{saved.fingerprint()}); only endpoints, concurrency and timeouts may change "
            "on resume")
    return cfg


def _log_run(out_dir: Path, entry: dict) -> None:
    with writing_under(out_dir), open(out_dir / RUNS_LOG, "a") as fh:
        fh.write(json.dumps(entry) + "\n")


def prepare_output(sav_root: str | Path, out_dir: str | Path, cfg: PipelineConfig, *,
                   limit_videos: int | None = None, force: bool = False,
                   videos: list[SavVideoRef] | None = None) -> Plan:
    """The run's plan: made and saved now, or the existing one if it is compatible.

    ``videos``: the root's index if the caller already made it (the preflight's), so that a
    large root on shared storage is listed once per command.
    """
    out_dir = Path(out_dir)
    fingerprint = cfg.fingerprint()
    if (out_dir / PLAN_FILE).exists():
        plan = load_plan(out_dir)
        problem = None
        if plan.config_fingerprint != fingerprint:
            problem = (f"{out_dir} was made with config fingerprint {plan.config_fingerprint}, "
                       f"this config has {fingerprint}")
        elif Path(sav_root).resolve() != Path(plan.sav_root):
            problem = f"{out_dir} was made from {plan.sav_root}, not {Path(sav_root).resolve()}"
        if problem is None:
            return plan
        if not force:
            raise RunRefused(f"{problem}. Use another --out, or --force to start over "
                             "(deletes its shards; the request cache is kept).")
        shutil.rmtree(out_dir / SHARDS_DIR, ignore_errors=True)
        (out_dir / PLAN_FILE).unlink()
    if videos is None:
        videos = index_sav_root(sav_root)
    if limit_videos is not None:
        videos = videos[:limit_videos]
    plan = make_plan(sav_root, videos, cfg.run.shard_size, fingerprint)
    ensure_writable(out_dir)
    save_config(out_dir, cfg)
    save_plan(out_dir, plan)
    return plan


def shards_to_do(out_dir: str | Path, retry_failed: bool = False) -> tuple[int, int]:
    """(shards a run/resume would work on, shards in the plan), read from the markers alone,
    so a rerun with nothing to do can say so without starting Ray or model servers."""
    plan = load_plan(out_dir)
    states = shard_states(out_dir, plan)
    todo = sum(state is not ShardState.done or (retry_failed and has_failed_rows(state, marker))
               for state, marker in states.values())
    return todo, len(plan.shards)


def failed_keys(out_dir: Path, plan: Plan, *, verify: bool = False
                ) -> dict[int, set[MaskletKey]]:
    """Per finished shard, the keys of its failed and rejected rows."""
    out: dict[int, set[MaskletKey]] = {}
    for shard_id, (state, marker) in shard_states(out_dir, plan, verify=verify).items():
        if has_failed_rows(state, marker):
            out[shard_id] = {r.key for r in read_shard(out_dir, shard_id)
                             if r.status in RETRIED_STATUSES}
    return out


def plan_outside_gc() -> None:
    """Take the loaded plan (tens of thousands of objects at SA-V scale, alive for the whole
    run) out of the cyclic GC's reach, so later collections stop walking it again and again:
    that made resume set-up grow faster than the number of shards."""
    gc.collect()
    gc.freeze()


def _warm_arrow_pandas() -> None:
    """Pay the one-time pandas import of pyarrow's Parquet writer now, before dispatch, not
    inside the first shard write where it would stall the driver for a second."""
    parquet_bytes([])


def execute(out_dir: str | Path, cfg: PipelineConfig, *, address: str | None = None,
            retry_failed: bool = False, verify: bool = False, show_progress: bool = True,
            console: Console | None = None) -> RunStats:
    """Finish every shard without a valid marker; then, if asked, redo failed rows.

    A marker vouches for its shard while the file keeps the size and mtime it recorded;
    ``verify`` re-hashes every finished file instead.
    """
    _warm_arrow_pandas()
    out_dir = Path(out_dir)
    plan = load_plan(out_dir)
    plan_outside_gc()
    console = console or Console(stderr=True)
    pending = shards_left(out_dir, plan, verify=verify)
    started = time.time()
    total = RunStats()
    ensure_writable(out_dir / SHARDS_DIR)  # before Ray starts, not at the first shard
    figures = RunFigures(len(plan.shards))
    with metrics_server(cfg.run.metrics_port, cfg.run.metrics_host, figures) as port, \
            ray_session(address, cfg, console):
        if port is not None:
            console.print(f"metrics at http://{cfg.run.metrics_host}:{port}/metrics")
        left = [r for r in promote_on_every_node(cfg.client, out_dir) if r.shards]
        if left:
            console.print(f"request cache: promoted {sum(r.shards for r in left)} shard(s) "
                          f"left by stopped actors on {len(left)} node(s)")
        if pending:
            console.print(f"{len(pending)} of {len(plan.shards)} shards to do")
            total = run_shards(out_dir, plan, cfg, pending, show_progress=show_progress,
                               console=console, figures=figures)
        if retry_failed:
            retry = failed_keys(out_dir, plan, verify=verify)
            if retry:
                n = sum(len(v) for v in retry.values())
                console.print(f"retrying {n} failed rows in {len(retry)} shards")
                again = run_shards(out_dir, plan, cfg,
                                   [s for s in plan.shards if s.shard_id in retry],
                                   retry=retry, show_progress=show_progress, console=console,
                                   figures=figures)
                total.model = again.model or total.model
                total.shards_written += again.shards_written
    _log_run(out_dir, {"started_at": started, "finished_at": time.time(),
                       "shards_written": total.shards_written, "retry_failed": retry_failed,
                       "frames_decoded": total.frames_decoded, "cpu_s": round(total.cpu_s, 3)})
    return total
