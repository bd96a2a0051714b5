"""When a shard is complete: which shard waits for what, and its write (Parquet, then marker).

It also knows when each video of a shard has all its rows, the point where the referring-
uniqueness step (``pipeline.uniqueness``) compares them; the shard waits for that step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from refsav_pipeline.pipeline.plan import Plan, Shard
from refsav_pipeline.pipeline.prepare import MaskletKey, row_sort_key
from refsav_pipeline.pipeline.shards import read_shard, write_shard
from refsav_pipeline.records import RefSavRow
from refsav_pipeline.sav.index import SavVideoRef


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



@dataclass
class _ShardWork:
    shard: Shard
    started_at: float
    videos_left: int
    jobs_left: int = 0
    rows: dict[tuple[int, int, int], RefSavRow] = field(default_factory=dict)
    keep: list[RefSavRow] = field(default_factory=list)  # retry mode: rows that stay
    redone: dict[MaskletKey, RefSavRow] = field(default_factory=dict)  # retry: rows replaced
    video_jobs: dict[int, int] = field(default_factory=dict)  # per position: masklets pending
    video_waiting: dict[int, int] = field(default_factory=dict)  # per position: CPU tasks
    recaptioned: dict[int, set[MaskletKey]] = field(default_factory=dict)  # contrastive pass
    settled: set[int] = field(default_factory=set)  # positions the uniqueness step finished

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
        self.on_written: Callable[[list[RefSavRow]], None] | None = None
        """Told the rows this run made for each shard it writes (the run's metrics)."""
        self.work: dict[int, _ShardWork] = {}
        self.videos: list[VideoTask] = []
        for shard in shards:
            only = retry.get(shard.shard_id) if retry is not None else None
            videos = list(enumerate(shard.videos))
            if only is not None:
                videos = [(p, v) for p, v in videos if any(k[0] == v.video_id for k in only)]
            w = _ShardWork(shard, time.time(), videos_left=len(videos))
            w.video_waiting = {p: 1 for p, _ in videos}
            w.video_jobs = {p: 0 for p, _ in videos}
            if only is not None:
                for r in read_shard(out_dir, shard.shard_id):
                    if r.key in only:
                        w.redone[r.key] = r
                    else:
                        w.keep.append(r)
            self.work[shard.shard_id] = w
            self.videos.extend((shard.shard_id, pos, ref, only) for pos, ref in videos)

    def video_prepared(self, shard_id: int, pos: int, jobs: int,
                       failed: list[RefSavRow]) -> bool:
        w = self.work[shard_id]
        w.videos_left -= 1
        w.jobs_left += jobs
        w.video_waiting[pos] -= 1
        w.video_jobs[pos] += jobs
        for row in failed:
            self.add_row(shard_id, pos, row, job=False)
        return self.finish_if_complete(shard_id)

    def video_requeued(self, shard_id: int, pos: int) -> None:
        """One of the shard's masklets goes back to the CPU stage (its images were lost)."""
        w = self.work[shard_id]
        w.videos_left += 1
        w.jobs_left -= 1
        w.video_waiting[pos] += 1
        w.video_jobs[pos] -= 1

    def add_row(self, shard_id: int, pos: int, row: RefSavRow, *, job: bool = True) -> None:
        w = self.work[shard_id]
        w.rows[row_sort_key(pos, row.masklet_type, row.masklet_index)] = row
        if job:
            w.jobs_left -= 1
            w.video_jobs[pos] -= 1

    # -- the referring-uniqueness step, per video ------------------------------------------

    def video_finished(self, shard_id: int, pos: int) -> bool:
        """Every row of the video is in (first pass, or its contrastive re-captions) and the
        uniqueness step has not settled it yet."""
        w = self.work[shard_id]
        return (w.video_waiting[pos] == 0 and w.video_jobs[pos] == 0
                and pos not in w.settled)

    def video_rows(self, shard_id: int, pos: int) -> list[RefSavRow]:
        """The video's rows: made in this run, and (retry mode) kept from the shard."""
        w = self.work[shard_id]
        video_id = w.shard.videos[pos].video_id
        return [*(r for k, r in sorted(w.rows.items()) if k[0] == pos),
                *(r for r in w.keep if r.video_id == video_id)]

    def previous_row(self, shard_id: int, key: MaskletKey) -> RefSavRow | None:
        """Retry mode: the row this run redoes (None: made for the first time)."""
        return self.work[shard_id].redone.get(key)

    def recaptions_sent(self, shard_id: int, pos: int, keys: set[MaskletKey]) -> None:
        """Rows of the video went to be captioned again: the shard waits for them."""
        w = self.work[shard_id]
        w.recaptioned[pos] = keys
        w.jobs_left += len(keys)
        w.video_jobs[pos] += len(keys)

    def recaptioned(self, shard_id: int, pos: int) -> set[MaskletKey] | None:
        """Keys re-captioned in the video's contrastive pass (None: no pass started)."""
        return self.work[shard_id].recaptioned.get(pos)

    def video_settled(self, shard_id: int, pos: int, rows: list[RefSavRow]) -> None:
        """The uniqueness step's final rows of the video replace the ones it was given."""
        w = self.work[shard_id]
        w.settled.add(pos)
        by_key = {r.key: r for r in rows}
        for k, r in list(w.rows.items()):
            if k[0] == pos and r.key in by_key:
                w.rows[k] = by_key[r.key]
        w.keep = [by_key.get(r.key, r) for r in w.keep]

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
        if self.on_written is not None:
            self.on_written(list(w.rows.values()))
        del self.work[shard_id]
        return True


