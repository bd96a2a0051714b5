"""Running shards on Ray: CPU-stage tasks feed async caption actors through bounded queues.

Ray does the scheduling, retries and placement; this module only decides *how much* may be in
flight: at most ``cpu_workers`` videos being rendered, at most ``max_prepared_videos`` rendered
videos waiting for captions, at most ``max_inflight_masklets`` masklets at the servers. So fast
decoding never piles frames up in memory and slow servers never starve or flood.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from refsav_pipeline.config import PipelineConfig
from refsav_pipeline.errors import RunStopped
from refsav_pipeline.llm.client import Outage
from refsav_pipeline.llm.session import ModelSession
from refsav_pipeline.pipeline.captions import caption_masklet
from refsav_pipeline.pipeline.lifeline import Lifeline
from refsav_pipeline.pipeline.model_health import ModelHealthLine
from refsav_pipeline.pipeline.plan import Plan, Shard
from refsav_pipeline.pipeline.prepare import (
    MaskletJob,
    MaskletKey,
    PreparedVideo,
    prepare_video,
    row_sort_key,
)
from refsav_pipeline.pipeline.shards import discard_partial, read_shard, write_shard
from refsav_pipeline.records import RefSavRow
from refsav_pipeline.sav.index import SavVideoRef

log = logging.getLogger(__name__)


@contextmanager
def ray_session(address: str | None, cfg: PipelineConfig,
                console: Console | None = None) -> Iterator[None]:
    """A local Ray instance by default, or the cluster at ``address``; shut down on exit."""
    if ray.is_initialized():
        yield
        return
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True,
                              "configure_logging": True}
    lifeline: Lifeline | None = None
    if address:
        ray.init(address=address, **kwargs)
    else:
        lifeline = Lifeline()  # this instance dies with the driver, even on kill -9
        # "local": always a new instance, never a stale `ray start` or $RAY_ADDRESS
        ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False,
                 object_store_memory=cfg.run.object_store_memory_mb * 1024 * 1024, **kwargs)
        ctx = ray.get_runtime_context()
        lifeline.watch(os.path.join(ctx.get_temp_dir(), ctx.get_session_name()))
    if console is not None:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        cpus = int(ray.cluster_resources().get("CPU", 0))
        where = f"Ray cluster at {address}" if address else "local Ray instance"
        console.print(f"{where}: {len(nodes)} node(s), {cpus} CPUs")
    try:
        yield
    finally:
        ray.shutdown()
        if lifeline is not None:
            lifeline.release()


@ray.remote(max_retries=3)
def _prepare_remote(sav_root: str, ref: SavVideoRef, cfg: PipelineConfig, fingerprint: str,
                    only: set[MaskletKey] | None) -> PreparedVideo:
    return prepare_video(sav_root, ref, cfg, fingerprint, only)


@ray.remote(max_restarts=-1, max_task_retries=-1, concurrency_groups={"health": 1})
class CaptionActor:
    """Holds one ModelSession (HTTP clients, request cache); captions masklets concurrently."""

    def __init__(self, cfg: PipelineConfig, out_dir: str) -> None:
        self.session = ModelSession.from_config(cfg, out_dir)

    async def caption(self, job: MaskletJob) -> RefSavRow:
        return await caption_masklet(self.session, job)

    async def stats(self) -> dict[str, Any]:
        return self.session.stats()

    @ray.method(concurrency_group="health")  # answers while every caption slot waits
    async def outages(self) -> list[Outage]:
        return self.session.outages()

    async def close(self) -> None:
        await self.session.aclose()


@dataclass
class _ShardWork:
    shard: Shard
    started_at: float
    videos_left: int
    jobs_left: int = 0
    rows: dict[tuple[int, int, int], RefSavRow] = field(default_factory=dict)
    keep: list[RefSavRow] = field(default_factory=list)  # retry mode: rows that stay

    def add(self, video_pos: int, row: RefSavRow) -> None:
        self.rows[row_sort_key(video_pos, row.masklet_type, row.masklet_index)] = row

    @property
    def complete(self) -> bool:
        return self.videos_left == 0 and self.jobs_left == 0


@dataclass
class RunStats:
    shards_written: int = 0
    rows: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    frames_decoded: int = 0
    frames_needed: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0
    model: dict[str, Any] = field(default_factory=dict)


def _progress(console: Console | None, enabled: bool) -> Progress:
    return Progress(TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console,
                    disable=not enabled, transient=False)


def run_shards(out_dir: str | Path, plan: Plan, cfg: PipelineConfig, shards: list[Shard], *,
               retry: dict[int, set[MaskletKey]] | None = None, show_progress: bool = True,
               console: Console | None = None) -> RunStats:
    """Process ``shards`` (all their videos; or, with ``retry``, only the failed masklets named
    per shard, merging new rows into the finished shard). Needs an initialised Ray."""
    out_dir = Path(out_dir)
    t_start = time.time()
    stats = RunStats()
    run = cfg.run
    cpu_slots = run.cpu_workers or max(1, int(ray.available_resources().get("CPU", 1)
                                              // run.cpus_per_task))
    node = ray.get_runtime_context().get_node_id()
    actors = [CaptionActor.options(  # type: ignore[attr-defined]
        max_concurrency=run.max_inflight_masklets, num_cpus=0,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False),
    ).remote(cfg, str(out_dir)) for _ in range(run.model_actors)]
    prepare = _prepare_remote.options(num_cpus=run.cpus_per_task)

    work: dict[int, _ShardWork] = {}
    todo: deque[tuple[int, int, SavVideoRef, set[MaskletKey] | None]] = deque()
    for shard in shards:
        only = retry.get(shard.shard_id) if retry is not None else None
        videos = list(enumerate(shard.videos))
        if retry is not None:
            assert only is not None
            videos = [(p, v) for p, v in videos if any(k[0] == v.video_id for k in only)]
        else:
            discard_partial(out_dir, shard)
        w = _ShardWork(shard, time.time(), videos_left=len(videos))
        if retry is not None:
            w.keep = [r for r in read_shard(out_dir, shard.shard_id) if r.key not in only]
        work[shard.shard_id] = w
        todo.extend((shard.shard_id, pos, ref, only) for pos, ref in videos)

    preparing: dict[ray.ObjectRef, tuple[int, int]] = {}
    prepared: deque[tuple[int, int, PreparedVideo]] = deque()
    captioning: dict[ray.ObjectRef, tuple[int, int]] = {}
    next_actor = 0

    with _progress(console, show_progress) as bar:
        t_videos = bar.add_task("videos", total=len(todo))
        t_masks = bar.add_task("masklets", total=0)
        t_shards = bar.add_task("shards", total=len(shards))
        health = ModelHealthLine(actors, bar, console)

        def finish_if_complete(shard_id: int) -> None:
            w = work[shard_id]
            if not w.complete:
                return
            rows = [*w.keep, *w.rows.values()]
            pos = {v.video_id: i for i, v in enumerate(w.shard.videos)}
            rows.sort(key=lambda r: row_sort_key(pos[r.video_id], r.masklet_type,
                                                 r.masklet_index))
            marker = write_shard(out_dir, shard_id, rows, plan.config_fingerprint, w.started_at)
            stats.shards_written += 1
            stats.rows += marker.rows
            for k, v in marker.by_status.items():
                stats.by_status[k] = stats.by_status.get(k, 0) + v
            bar.advance(t_shards)
            del work[shard_id]

        for w in list(work.values()):  # a retry with nothing to redo, or an empty shard
            finish_if_complete(w.shard.shard_id)

        while todo or preparing or prepared or captioning:
            while todo and len(preparing) < cpu_slots and \
                    len(preparing) + len(prepared) < run.max_prepared_videos:
                shard_id, pos, ref, only = todo.popleft()
                preparing[prepare.remote(plan.sav_root, ref, cfg, plan.config_fingerprint,
                                         only)] = (shard_id, pos)
            while prepared and len(captioning) < run.max_inflight_masklets:
                shard_id, pos, pv = prepared[0]
                room = run.max_inflight_masklets - len(captioning)
                batch, pv.jobs[:] = pv.jobs[:room], pv.jobs[room:]
                for job in batch:
                    actor = actors[next_actor % len(actors)]
                    next_actor += 1
                    captioning[actor.caption.remote(job)] = (shard_id, pos)
                if not pv.jobs:
                    prepared.popleft()
            ready, _ = ray.wait([*preparing, *captioning], num_returns=1, timeout=1.0)
            health.poll()
            for ref in ready:
                if ref in preparing:
                    shard_id, pos = preparing.pop(ref)
                    pv: PreparedVideo = ray.get(ref)
                    w = work[shard_id]
                    w.videos_left -= 1
                    w.jobs_left += len(pv.jobs)
                    for row in pv.failed:
                        w.add(pos, row)
                    stats.frames_decoded += pv.frames_decoded
                    stats.frames_needed += pv.frames_needed
                    stats.cpu_s += pv.cpu_s
                    bar.update(t_masks, total=(bar.tasks[t_masks].total or 0)
                               + len(pv.jobs) + len(pv.failed), advance=len(pv.failed))
                    bar.advance(t_videos)
                    if pv.jobs:
                        prepared.append((shard_id, pos, pv))
                    finish_if_complete(shard_id)
                else:
                    shard_id, pos = captioning.pop(ref)
                    row = _caption_row(ref)
                    w = work[shard_id]
                    w.jobs_left -= 1
                    w.add(pos, row)
                    bar.advance(t_masks)
                    finish_if_complete(shard_id)
    stats.model = _merge_model_stats(ray.get([a.stats.remote() for a in actors]))
    ray.get([a.close.remote() for a in actors])
    for a in actors:
        ray.kill(a)
    stats.wall_s = time.time() - t_start
    return stats


def _caption_row(ref: ray.ObjectRef) -> RefSavRow:
    """A caption actor's row. A ``RunStopped`` raised there (outage limit, full disk) stops the
    run here, before any row of an unfinished shard is written."""
    try:
        return ray.get(ref)
    except RayTaskError as exc:
        if isinstance(exc.cause, RunStopped):
            raise exc.cause from None
        raise


def _merge_model_stats(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum the numeric leaves of the actors' session stats."""
    out: dict[str, Any] = {}
    for part in parts:
        for k, v in part.items():
            if isinstance(v, dict):
                out[k] = _merge_model_stats([out.get(k, {}), v])
            elif isinstance(v, int | float) and not isinstance(v, bool):
                out[k] = out.get(k, 0) + v
            else:
                out[k] = v
    return out
