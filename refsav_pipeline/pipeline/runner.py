"""Running shards on Ray: CPU-stage tasks feed async caption actors through bounded queues.

Ray does the scheduling, retries and placement. Small objects do the rest, each one job, each in
its own module: ``Scheduler`` (what may be in flight, ``scheduler.py``), ``ShardBook`` (when a
shard is complete, ``shard_book.py``), ``RunProgress`` (the bars, ``run_progress.py``), the
CPU-stage task and the caption actors (``actors.py``). This module is the run loop that ties
them together. The driver learns of each finished task from a callback, so its cost per
masklet does not grow with what is in flight.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayTaskError
from rich.console import Console

from refsav_pipeline.config import PipelineConfig
from refsav_pipeline.errors import RunStopped
from refsav_pipeline.pipeline import uniqueness
from refsav_pipeline.pipeline.actors import PreparedRefs, caption_actors
from refsav_pipeline.pipeline.interrupts import stop_requests, stopped
from refsav_pipeline.pipeline.metrics import RunFigures
from refsav_pipeline.pipeline.model_health import ModelHealthLine
from refsav_pipeline.pipeline.plan import Plan, Shard
from refsav_pipeline.pipeline.prepare import MaskletKey
from refsav_pipeline.pipeline.run_progress import RunProgress
from refsav_pipeline.pipeline.scheduler import Scheduler, wire_bytes
from refsav_pipeline.pipeline.shard_book import RunStats, ShardBook

log = logging.getLogger(__name__)

STATUS_EVERY_S = 1.0
"""How often the driver asks each caption actor for its status (in flight, outages)."""


def run_shards(out_dir: str | Path, plan: Plan, cfg: PipelineConfig, shards: list[Shard], *,
               retry: dict[int, set[MaskletKey]] | None = None, show_progress: bool = True,
               console: Console | None = None, figures: RunFigures | None = None) -> RunStats:
    """Process ``shards`` (all their videos; or, with ``retry``, only the failed masklets named
    per shard, merging new rows into the finished shard). Needs an initialised Ray.
    ``figures`` gets the run's counts and the actors' figures (the run's metrics)."""
    out_dir = Path(out_dir)
    t_start = time.time()
    stats = RunStats()
    book = ShardBook(out_dir, plan, shards, retry, stats)
    figures = figures or RunFigures(len(plan.shards))
    book.on_written = figures.rows_written  # final rows, uniqueness settled, counted once
    with stop_requests() as stop, caption_actors(cfg, out_dir) as actors:
        todo = {s.shard_id for s in shards}
        figures.begin(len(actors), shards_done=len(plan.shards) - len(todo),
                      videos_done=sum(len(s.videos) for s in plan.shards
                                      if s.shard_id not in todo))
        sched = Scheduler(cfg, plan, book.videos, actors)
        in_flight: list[dict[str, int]] = [{} for _ in actors]
        with RunProgress(console, show_progress, len(book.videos), len(shards)) as progress:
            health = ModelHealthLine(len(actors), progress.bar, console)
            for _ in range(book.finish_all_complete()):
                progress.shard_done()
                figures.shard_done()
            last_poll = 0.0
            while sched.busy:
                if stop.is_set():
                    sched.cancel_calls()
                    raise stopped()  # the actors close on the way out
                sched.dispatch()
                if time.monotonic() - last_poll > STATUS_EVERY_S:
                    last_poll = time.monotonic()
                    sched.poll_status()
                event = sched.next_event(timeout=STATUS_EVERY_S)
                while event is not None:
                    kind, tag, fut = event
                    if kind == "status":
                        status = sched.status_returned(tag, fut)
                        if status is not None:
                            in_flight[tag] = status.in_flight
                            figures.actor(tag, status.figures)
                            progress.in_flight(in_flight, figures.merged().endpoints)
                            health.report(tag, status.outages)
                    elif kind == "prepared":
                        pv: PreparedRefs = fut.result()
                        stats.driver_bytes += wire_bytes(pv)
                        sched.video_prepared(tag, pv.jobs)
                        stats.frames_decoded += pv.frames_decoded
                        stats.frames_needed += pv.frames_needed
                        stats.cpu_s += pv.cpu_s
                        progress.video_done(len(pv.jobs), len(pv.failed))
                        figures.video_done()
                        if book.video_prepared(tag[0], tag[1], len(pv.jobs), pv.failed):
                            progress.shard_done()
                            figures.shard_done()
                    elif kind == "recaptioned":
                        shard_id, pos, row, actor = tag
                        sched.masklets_returned(actor, 1)
                        try:
                            row = _caption_rows(fut)
                        except ray.exceptions.ObjectLostError:
                            log.warning("images of %s were lost; it keeps its first video "
                                        "caption", row.key)
                        stats.driver_bytes += wire_bytes(row)
                        book.add_row(shard_id, pos, row)
                        _unique_step(cfg, book, sched, shard_id, pos)
                        if book.finish_if_complete(shard_id):
                            progress.shard_done()
                            figures.shard_done()
                    else:
                        shard_id, pos, task, keys, actor = tag
                        sched.masklets_returned(actor, len(keys))
                        try:
                            rows = _caption_rows(fut)
                        except ray.exceptions.ObjectLostError:
                            log.warning("images of %s were lost; rendering them again", keys)
                            for key in keys:
                                book.video_requeued(shard_id, pos)
                                sched.requeue(task, key)
                        else:
                            stats.driver_bytes += wire_bytes(rows)
                            stats.masklets += len(rows)
                            for row in rows:
                                book.add_row(shard_id, pos, row)
                                progress.masklet_done()
                            _unique_step(cfg, book, sched, shard_id, pos)
                            if book.finish_if_complete(shard_id):
                                progress.shard_done()
                                figures.shard_done()
                    event = sched.next_event(timeout=0)
            stats.model = _merge_model_stats(ray.get([a.stats.remote() for a in actors]))
            stats.model["peak_in_flight"] = dict(progress.peak_in_flight)
        stats.driver_bytes += sched.sent_bytes
    stats.wall_s = time.time() - t_start
    return stats


def _unique_step(cfg: PipelineConfig, book: ShardBook, sched: Scheduler, shard_id: int,
                 pos: int) -> None:
    """Once every row of a video is in: send its near-duplicates for a contrastive caption,
    or, when none is left to send, settle the video (``pipeline.uniqueness``)."""
    if not book.video_finished(shard_id, pos):
        return
    rows = book.video_rows(shard_id, pos)
    recaptioned = book.recaptioned(shard_id, pos)
    if recaptioned is None:
        todo = uniqueness.to_recaption(rows, sched.captioned_here(shard_id, pos), cfg.checks)
        if todo:
            book.recaptions_sent(shard_id, pos, {row.key for row, _ in todo})
            for row, others in todo:
                rounds = uniqueness.ambiguous_rounds(book.previous_row(shard_id, row.key))
                history = [f"video:{uniqueness.AMBIGUOUS}"] * rounds
                row = row.model_copy(update={"check_failures": [*history, *row.check_failures]})
                sched.recaption(shard_id, pos, row, others, rounds)
            return
    book.video_settled(shard_id, pos, uniqueness.settle(rows, recaptioned or set(), cfg.checks))
    sched.video_settled(shard_id, pos)


def _caption_rows(fut: Any) -> Any:
    """A caption call's rows (a re-caption's row). A ``RunStopped`` raised there (outage
    limit, full disk) stops the run here, before any row of an unfinished shard is written."""
    try:
        return fut.result()
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
