"""When a shard is complete: which shard waits for what, and its write (Parquet, then marker)."""

from __future__ import annotations

import time
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


