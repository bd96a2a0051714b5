"""Running shards on Ray: CPU-stage tasks feed async caption actors through bounded queues.

Ray does the scheduling, retries and placement. Three small objects do the rest, each one job:
- ``Scheduler`` decides *how much* may be in flight: at most ``cpu_workers`` videos being
  rendered, at most ``max_prepared_videos`` rendered videos waiting for captions, at most
  ``max_inflight_masklets`` masklets at the actors, sent a video's masklets at a time (up to
  ``CALL_BATCH`` per call) to the least loaded actor.
- ``ShardBook`` knows when a shard is complete and writes it.
- ``RunProgress`` shows it, with the requests each model has in flight.

The driver stays off the data path: a CPU-stage task puts each masklet's images in Ray's object
store and returns references; the caption actor receives the reference and Ray moves the bytes
(node to node, or not at all on one node). The driver moves only small records and learns of
each finished task from a callback, so its cost per masklet does not grow with what is in
flight.
"""

from __future__ import annotations

import asyncio
import io
import logging
import math
import os
import pickle
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from pydantic import BaseModel, ConfigDict
from ray.exceptions import GetTimeoutError, RayError, RayTaskError
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
from refsav_pipeline.pipeline.prepare import MaskletJob, MaskletKey, prepare_video, row_sort_key
from refsav_pipeline.pipeline.shards import read_shard, write_shard
from refsav_pipeline.records import RefSavRow
from refsav_pipeline.sav.index import SavVideoRef

log = logging.getLogger(__name__)

ACTOR_CLOSE_TIMEOUT_S = 30.0
"""How long the driver waits for the caption actors' last promotion when the run ends."""

STATUS_EVERY_S = 1.0
"""How often the driver asks each caption actor for its status (in flight, outages)."""


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


class PreparedRefs(BaseModel):
    """What a CPU-stage task hands the driver: references to the images, never the images."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    video_id: str
    jobs: list[tuple[MaskletKey, Any]]  # (key, ObjectRef of its MaskletJob)
    failed: list[RefSavRow]
    frames_decoded: int = 0
    frames_needed: int = 0
    cpu_s: float = 0.0


@ray.remote(max_retries=3)
def _prepare_remote(sav_root: str, ref: SavVideoRef, cfg: PipelineConfig, fingerprint: str,
                    only: set[MaskletKey] | None) -> PreparedRefs:
    pv = prepare_video(sav_root, ref, cfg, fingerprint, only)
    return PreparedRefs(video_id=pv.video_id, jobs=[(j.key, ray.put(j)) for j in pv.jobs],
                        failed=pv.failed, frames_decoded=pv.frames_decoded,
                        frames_needed=pv.frames_needed, cpu_s=pv.cpu_s)


class ActorStatus(BaseModel):
    in_flight: dict[str, int]
    outages: list[Outage]


CALL_BATCH = 8
"""Masklets of one video sent in one actor call: Ray's cost per call (submit, schedule, reply)
is shared by them, while the call still ends when its masklets do, a few L later."""


@ray.remote(max_restarts=-1, max_task_retries=-1, concurrency_groups={"health": 1})
class CaptionActor:
    """Holds one ModelSession (HTTP pools, its own request-cache shard); captions masklets
    concurrently. Ray resolves the job references before ``caption`` runs."""

    def __init__(self, cfg: PipelineConfig, out_dir: str) -> None:
        self.session = ModelSession.from_config(cfg, out_dir)
        self._cpu0 = time.process_time()

    async def caption(self, *jobs: MaskletJob) -> list[RefSavRow]:
        return list(await asyncio.gather(*(caption_masklet(self.session, j) for j in jobs)))

    async def stats(self) -> dict[str, Any]:
        """Session stats, and this process's CPU seconds since it was set up."""
        return {**self.session.stats(), "actor_cpu_s": time.process_time() - self._cpu0}

    @ray.method(concurrency_group="health")  # answers while every caption slot waits
    async def status(self) -> ActorStatus:
        """What the progress line shows: requests in flight per model, and outages."""
        return ActorStatus(in_flight=self.session.in_flight(), outages=self.session.outages())

    async def close(self) -> None:
        await self.session.aclose()
        if self.session.cache is not None:
            self.session.cache.close()


@contextmanager
def interrupt_requests() -> Iterator[threading.Event]:
    """Ctrl-C (and the Slurm job's SIGINT before its time limit) as a flag the scheduling loop
    checks, so the stop happens at a known point of the loop, never inside a library call
    that might swallow the KeyboardInterrupt. A second Ctrl-C interrupts at once."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop  # signals reach only the main thread's handlers
        return

    def on_sigint(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


@contextmanager
def caption_actors(cfg: PipelineConfig, out_dir: Path) -> Iterator[list[Any]]:
    """The run's caption actors, closed however the run ends (done, stopped, Ctrl-C, Slurm's
    signal before its time limit), so each one's last request-cache answers are promoted from
    its node's local disk to ``<out>/cache/`` before Ray takes the actors down."""
    actors = start_actors(cfg, out_dir)
    try:
        yield actors
    finally:
        close_actors(actors)


def close_actors(actors: list[Any], timeout_s: float = ACTOR_CLOSE_TIMEOUT_S) -> None:
    """Ask every actor to close (bounded: a stuck one must not hold the driver), then kill."""
    try:
        ray.get([a.close.remote() for a in actors], timeout=timeout_s)
    except (RayError, GetTimeoutError) as exc:
        log.warning("caption actors did not all close (%s); their unpromoted request-cache "
                    "answers stay on local disk until the next run promotes them", exc)
    for a in actors:
        ray.kill(a)


def actor_config(cfg: PipelineConfig) -> PipelineConfig:
    """``cfg`` with each endpoint's concurrency split over the actors, so an endpoint never
    sees more than ``max_concurrency`` requests from the whole run."""
    n = cfg.run.model_actors
    models = cfg.models.model_copy(update={
        role: getattr(cfg.models, role).model_copy(update={
            "max_concurrency": max(1, math.ceil(getattr(cfg.models, role).max_concurrency / n))})
        for role in ("captioner", "judge")})
    return cfg.model_copy(update={"models": models})


def start_actors(cfg: PipelineConfig, out_dir: Path) -> list[Any]:
    """Caption actors spread over the cluster's nodes (best effort: one node is fine too)."""
    acfg = actor_config(cfg)
    return [CaptionActor.options(  # type: ignore[attr-defined]
        max_concurrency=cfg.run.max_inflight_masklets + 4, num_cpus=0,
        scheduling_strategy="SPREAD",
    ).remote(acfg, str(out_dir)) for _ in range(cfg.run.model_actors)]


@dataclass
class RunStats:
    shards_written: int = 0
    rows: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    frames_decoded: int = 0
    frames_needed: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0
    driver_bytes: int = 0  # serialized records the driver received and sent
    masklets: int = 0
    model: dict[str, Any] = field(default_factory=dict)


class _SizePickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, ray.ObjectRef):  # Ray sends a reference as its id and owner
            return bytes, (obj.binary() + obj.owner_address(),)
        return NotImplemented


def wire_bytes(obj: Any) -> int:
    """About the bytes Ray moves for ``obj`` (a reference counts as a reference, not its
    object): its pickled size, without touching Ray's own serializer."""
    buf = io.BytesIO()
    _SizePickler(buf, protocol=5).dump(obj)
    return buf.tell()


# -- shard bookkeeping ---------------------------------------------------------------------


@dataclass
class _ShardWork:
    shard: Shard
    started_at: float
    videos_left: int
    jobs_left: int = 0
    rows: dict[tuple[int, int, int], RefSavRow] = field(default_factory=dict)
    keep: list[RefSavRow] = field(default_factory=list)  # retry mode: rows that stay

    @property
    def complete(self) -> bool:
        return self.videos_left == 0 and self.jobs_left == 0


VideoTask = tuple[int, int, SavVideoRef, set[MaskletKey] | None]  # shard, position, video, only


class ShardBook:
    """Which shard is waiting for what; writes a shard (Parquet, then marker) once complete.
    Shards to redo come cleared of their leftovers (``shards.shards_left``)."""

    def __init__(self, out_dir: Path, plan: Plan, shards: list[Shard],
                 retry: dict[int, set[MaskletKey]] | None, stats: RunStats) -> None:
        self.out_dir = out_dir
        self.plan = plan
        self.stats = stats
        self.work: dict[int, _ShardWork] = {}
        self.videos: list[VideoTask] = []
        for shard in shards:
            only = retry.get(shard.shard_id) if retry is not None else None
            videos = list(enumerate(shard.videos))
            if only is not None:
                videos = [(p, v) for p, v in videos if any(k[0] == v.video_id for k in only)]
            w = _ShardWork(shard, time.time(), videos_left=len(videos))
            if only is not None:
                w.keep = [r for r in read_shard(out_dir, shard.shard_id) if r.key not in only]
            self.work[shard.shard_id] = w
            self.videos.extend((shard.shard_id, pos, ref, only) for pos, ref in videos)

    def video_prepared(self, shard_id: int, pos: int, jobs: int,
                       failed: list[RefSavRow]) -> bool:
        w = self.work[shard_id]
        w.videos_left -= 1
        w.jobs_left += jobs
        for row in failed:
            self.add_row(shard_id, pos, row, job=False)
        return self.finish_if_complete(shard_id)

    def video_requeued(self, shard_id: int) -> None:
        """One of the shard's masklets goes back to the CPU stage (its images were lost)."""
        w = self.work[shard_id]
        w.videos_left += 1
        w.jobs_left -= 1

    def add_row(self, shard_id: int, pos: int, row: RefSavRow, *, job: bool = True) -> None:
        w = self.work[shard_id]
        w.rows[row_sort_key(pos, row.masklet_type, row.masklet_index)] = row
        if job:
            w.jobs_left -= 1

    def finish_all_complete(self) -> int:
        """Write shards that need nothing (a retry with nothing to redo, an empty shard)."""
        return sum(self.finish_if_complete(s) for s in list(self.work))

    def finish_if_complete(self, shard_id: int) -> bool:
        w = self.work[shard_id]
        if not w.complete:
            return False
        rows = [*w.keep, *w.rows.values()]
        pos = {v.video_id: i for i, v in enumerate(w.shard.videos)}
        rows.sort(key=lambda r: row_sort_key(pos[r.video_id], r.masklet_type, r.masklet_index))
        marker = write_shard(self.out_dir, shard_id, rows, self.plan.config_fingerprint,
                             w.started_at)
        self.stats.shards_written += 1
        self.stats.rows += marker.rows
        for k, v in marker.by_status.items():
            self.stats.by_status[k] = self.stats.by_status.get(k, 0) + v
        del self.work[shard_id]
        return True


# -- progress ------------------------------------------------------------------------------


class RunProgress:
    """Bars for videos, masklets and shards, and the requests each model has in flight."""

    def __init__(self, console: Console | None, enabled: bool, videos: int, shards: int) -> None:
        self.bar = Progress(TextColumn("{task.description:<10}"), BarColumn(),
                            MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                            TextColumn("{task.fields[note]}"), console=console,
                            disable=not enabled, transient=False)
        self.videos = self.bar.add_task("videos", total=videos, note="")
        self.masklets = self.bar.add_task("masklets", total=0, note="")
        self.shards = self.bar.add_task("shards", total=shards, note="")
        self.peak_in_flight: dict[str, int] = {}

    def __enter__(self) -> RunProgress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(None, None, None)

    def video_done(self, jobs: int, failed: int) -> None:
        total = self.bar.tasks[self.masklets].total or 0
        self.bar.update(self.masklets, total=total + jobs + failed, advance=failed)
        self.bar.advance(self.videos)

    def masklet_done(self) -> None:
        self.bar.advance(self.masklets)

    def shard_done(self) -> None:
        self.bar.advance(self.shards)

    def in_flight(self, per_actor: list[dict[str, int]]) -> None:
        total: dict[str, int] = {}
        for part in per_actor:
            for role, n in part.items():
                total[role] = total.get(role, 0) + n
        for role, n in total.items():
            self.peak_in_flight[role] = max(self.peak_in_flight.get(role, 0), n)
        note = "in flight: " + ", ".join(f"{r} {n}" for r, n in total.items())
        self.bar.update(self.masklets, note=note)


# -- scheduling ----------------------------------------------------------------------------


class Scheduler:
    """Bounds what is in flight and places work; finished tasks arrive on one queue.

    Every task's result comes back through a future callback, so the driver never scans the
    set of pending references (``ray.wait`` over N references costs O(N) per call).
    """

    def __init__(self, cfg: PipelineConfig, plan: Plan, videos: list[VideoTask],
                 actors: list[Any]) -> None:
        run = cfg.run
        self.cfg = cfg
        self.plan = plan
        self.cpu_slots = run.cpu_workers or max(
            1, int(ray.available_resources().get("CPU", 1) // run.cpus_per_task))
        self.max_prepared = run.max_prepared_videos
        self.max_masklets = run.max_inflight_masklets
        self.todo: deque[VideoTask] = deque(videos)
        self.preparing = 0
        self.prepared: deque[tuple[VideoTask, list[tuple[MaskletKey, Any]]]] = deque()
        self.captioning = 0
        self.actors = actors
        self.load = [0] * len(actors)
        self.done: queue.SimpleQueue[tuple[str, Any, Any]] = queue.SimpleQueue()
        self.sent_bytes = 0
        self.asking: set[int] = set()  # actors asked for their status, not answered yet
        self._prepare = _prepare_remote.options(num_cpus=run.cpus_per_task)
        self._cfg_ref = ray.put(cfg)  # sent once, not with every video

    @property
    def busy(self) -> bool:
        return bool(self.todo or self.preparing or self.prepared or self.captioning)

    def _watch(self, kind: str, tag: Any, ref: ray.ObjectRef) -> None:
        ref.future().add_done_callback(lambda fut: self.done.put((kind, tag, fut)))

    def dispatch(self) -> None:
        """Start whatever the bounds allow."""
        while self.todo and self.preparing < self.cpu_slots and \
                self.preparing + len(self.prepared) < self.max_prepared:
            task = self.todo.popleft()
            _, _, ref, only = task
            self.preparing += 1
            self.sent_bytes += wire_bytes(ref) + (wire_bytes(only) if only else 0)
            self._watch("prepared", task, self._prepare.remote(
                self.plan.sav_root, ref, self._cfg_ref, self.plan.config_fingerprint, only))
        while self.prepared and self.captioning < self.max_masklets:
            task, jobs = self.prepared[0]
            shard_id, pos = task[0], task[1]
            n = min(CALL_BATCH, len(jobs), self.max_masklets - self.captioning)
            batch = [jobs.pop() for _ in range(n)]
            i = min(range(len(self.load)), key=self.load.__getitem__)
            self.load[i] += n
            self.captioning += n
            self._watch("captioned", (shard_id, pos, task, [k for k, _ in batch], i),
                        self.actors[i].caption.remote(*(ref for _, ref in batch)))
            if not jobs:
                self.prepared.popleft()

    def video_prepared(self, task: VideoTask, jobs: list[tuple[MaskletKey, Any]]) -> None:
        self.preparing -= 1
        if jobs:
            self.prepared.append((task, list(reversed(jobs))))

    def masklets_returned(self, actor: int, n: int) -> None:
        self.captioning -= n
        self.load[actor] -= n

    def requeue(self, task: VideoTask, key: MaskletKey) -> None:
        """Render one masklet again (its images were lost with the worker that held them)."""
        shard_id, pos, ref, _ = task
        self.todo.appendleft((shard_id, pos, ref, {key}))

    def poll_status(self) -> None:
        """Ask each actor for its status, unless it has not answered the last question (one
        call per actor per poll: the progress line and the outage line share it)."""
        for i, a in enumerate(self.actors):
            if i not in self.asking:
                self.asking.add(i)
                self._watch("status", i, a.status.remote())

    def status_returned(self, actor: int, fut: Any) -> ActorStatus | None:
        self.asking.discard(actor)
        try:
            return fut.result()
        except RayError:  # an actor being restarted: ask again next time
            return None

    def next_event(self, timeout: float) -> tuple[str, Any, Any] | None:
        try:
            return self.done.get(timeout=timeout)
        except queue.Empty:
            return None


def run_shards(out_dir: str | Path, plan: Plan, cfg: PipelineConfig, shards: list[Shard], *,
               retry: dict[int, set[MaskletKey]] | None = None, show_progress: bool = True,
               console: Console | None = None) -> RunStats:
    """Process ``shards`` (all their videos; or, with ``retry``, only the failed masklets named
    per shard, merging new rows into the finished shard). Needs an initialised Ray."""
    out_dir = Path(out_dir)
    t_start = time.time()
    stats = RunStats()
    book = ShardBook(out_dir, plan, shards, retry, stats)
    with interrupt_requests() as stop, caption_actors(cfg, out_dir) as actors:
        sched = Scheduler(cfg, plan, book.videos, actors)
        in_flight: list[dict[str, int]] = [{} for _ in actors]
        with RunProgress(console, show_progress, len(book.videos), len(shards)) as progress:
            health = ModelHealthLine(len(actors), progress.bar, console)
            for _ in range(book.finish_all_complete()):
                progress.shard_done()
            last_poll = 0.0
            while sched.busy:
                if stop.is_set():
                    raise KeyboardInterrupt  # the actors close on the way out
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
                            progress.in_flight(in_flight)
                            health.report(tag, status.outages)
                    elif kind == "prepared":
                        pv: PreparedRefs = fut.result()
                        stats.driver_bytes += wire_bytes(pv)
                        sched.video_prepared(tag, pv.jobs)
                        stats.frames_decoded += pv.frames_decoded
                        stats.frames_needed += pv.frames_needed
                        stats.cpu_s += pv.cpu_s
                        progress.video_done(len(pv.jobs), len(pv.failed))
                        if book.video_prepared(tag[0], tag[1], len(pv.jobs), pv.failed):
                            progress.shard_done()
                    else:
                        shard_id, pos, task, keys, actor = tag
                        sched.masklets_returned(actor, len(keys))
                        try:
                            rows = _caption_rows(fut)
                        except ray.exceptions.ObjectLostError:
                            log.warning("images of %s were lost; rendering them again", keys)
                            for key in keys:
                                book.video_requeued(shard_id)
                                sched.requeue(task, key)
                        else:
                            stats.driver_bytes += wire_bytes(rows)
                            stats.masklets += len(rows)
                            for row in rows:
                                book.add_row(shard_id, pos, row)
                                progress.masklet_done()
                            if book.finish_if_complete(shard_id):
                                progress.shard_done()
                    event = sched.next_event(timeout=0)
            stats.model = _merge_model_stats(ray.get([a.stats.remote() for a in actors]))
            stats.model["peak_in_flight"] = dict(progress.peak_in_flight)
        stats.driver_bytes += sched.sent_bytes
    stats.wall_s = time.time() - t_start
    return stats


def _caption_rows(fut: Any) -> list[RefSavRow]:
    """A caption call's rows. A ``RunStopped`` raised there (outage limit, full disk) stops the
    run here, before any row of an unfinished shard is written."""
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
