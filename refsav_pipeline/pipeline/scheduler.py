"""How much may be in flight, and where it goes: at most ``cpu_workers`` videos being rendered,
at most ``max_prepared_videos`` rendered videos waiting for captions, at most
``max_inflight_masklets`` masklets at the actors, sent a video's masklets at a time (up to
``CALL_BATCH`` per call) to the least loaded actor. Ray does the placement and retries.
"""

from __future__ import annotations

import io
import pickle
import queue
from collections import deque
from typing import Any

import ray
from ray.exceptions import RayError

from refsav_pipeline.config import PipelineConfig
from refsav_pipeline.pipeline.actors import ActorStatus, prepare_remote
from refsav_pipeline.pipeline.plan import Plan
from refsav_pipeline.pipeline.prepare import MaskletKey
from refsav_pipeline.pipeline.shard_book import VideoTask
from refsav_pipeline.records import RefSavRow

CALL_BATCH = 8
"""Masklets of one video sent in one actor call: Ray's cost per call (submit, schedule, reply)
is shared by them, while the call still ends when its masklets do, a few L later."""


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
        self.calls: set[ray.ObjectRef] = set()  # caption calls not returned yet
        self.job_refs: dict[tuple[int, int], dict[MaskletKey, Any]] = {}  # until settled
        self._prepare = prepare_remote.options(num_cpus=run.cpus_per_task)
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
            call = self.actors[i].caption.remote(*(ref for _, ref in batch))
            self.calls.add(call)
            call.future().add_done_callback(lambda _, call=call: self.calls.discard(call))
            self._watch("captioned", (shard_id, pos, task, [k for k, _ in batch], i), call)
            if not jobs:
                self.prepared.popleft()

    def cancel_calls(self) -> None:
        """Cancel the caption calls in flight (the run stops): cancelled, they are not retried
        when their actor is killed, so Ray has nothing to say about them."""
        for call in list(self.calls):
            try:
                ray.cancel(call)
            except (RayError, ValueError, TypeError):
                continue

    def video_prepared(self, task: VideoTask, jobs: list[tuple[MaskletKey, Any]]) -> None:
        self.preparing -= 1
        if jobs:
            self.prepared.append((task, list(reversed(jobs))))
            self.job_refs.setdefault((task[0], task[1]), {}).update(jobs)

    def captioned_here(self, shard_id: int, pos: int) -> set[MaskletKey]:
        """Masklets of the video captioned in this run (their images are still at hand)."""
        return set(self.job_refs.get((shard_id, pos), {}))

    def recaption(self, shard_id: int, pos: int, row: RefSavRow, others: list[str],
                  round_: int) -> None:
        """Send one row for its contrastive video caption (``pipeline.uniqueness``), to the
        least loaded actor, with the images its first caption was made from."""
        ref = self.job_refs[(shard_id, pos)][row.key]
        i = min(range(len(self.load)), key=self.load.__getitem__)
        self.load[i] += 1
        self.captioning += 1
        self._watch("recaptioned", (shard_id, pos, row, i),
                    self.actors[i].recaption.remote(ref, row, others, round_))

    def video_settled(self, shard_id: int, pos: int) -> None:
        """The video's rows are final: its images may go."""
        self.job_refs.pop((shard_id, pos), None)

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
