"""Shard files on disk: atomic writes, completion markers, and which shards are left to do.

Write order is Parquet (temp name, fsync, rename) then marker (same). A crash between the two
leaves a Parquet file no marker vouches for: it is treated as partial, discarded and redone.
The marker records the file's size and mtime, so status and run start trust a file that still
has them without reading it; ``verify`` re-hashes every file instead. Finding what is there
lists the shards folder once, whatever the number of shards.
"""

from __future__ import annotations

import io
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from refsav_pipeline import __version__
from refsav_pipeline.pipeline.plan import Plan, Shard, shard_name, write_atomic
from refsav_pipeline.records import (
    RETRIED_STATUSES,
    SHARDS_DIR,
    RefSavRow,
    ShardMarker,
    file_sha256,
    marker_path,
    row_schema,
    rows_to_table,
    table_to_rows,
    valid_marker,
)


class ShardState(StrEnum):
    done = "done"
    partial = "partial"  # a file is there but no valid marker vouches for it
    pending = "pending"


def shard_path(out_dir: str | Path, shard: Shard | int) -> Path:
    shard_id = shard if isinstance(shard, int) else shard.shard_id
    return Path(out_dir) / SHARDS_DIR / f"{shard_name(shard_id)}.parquet"


def parquet_bytes(rows: list[RefSavRow]) -> bytes:
    import pyarrow.parquet as pq  # here, so `refsav status` (markers only) never imports it

    buf = io.BytesIO()
    pq.write_table(rows_to_table(rows), buf, compression="zstd")
    return buf.getvalue()


def write_shard(out_dir: str | Path, shard_id: int, rows: list[RefSavRow], fingerprint: str,
                started_at: float | None = None) -> ShardMarker:
    """Parquet then marker, each atomically; returns the marker."""
    path = shard_path(out_dir, shard_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, parquet_bytes(rows))
    st = path.stat()
    errors = Counter(r.error_kind for r in rows if r.status == "failed" and r.error_kind)
    rejected = Counter(r.error_kind for r in rows if r.status == "rejected" and r.error_kind)
    marker = ShardMarker(
        shard_id=shard_id,
        rows=len(rows),
        by_status=dict(sorted(Counter(r.status for r in rows).items())),
        by_error_kind=dict(sorted(errors.items())),
        by_rejected_kind=dict(sorted(rejected.items())),
        sha256=file_sha256(path),
        size=st.st_size,
        mtime_ns=st.st_mtime_ns,
        config_fingerprint=fingerprint,
        pipeline_version=__version__,
        started_at=started_at if started_at is not None else time.time(),
        finished_at=time.time(),
        model_calls=sum(sum(v is not None for v in r.prompt_versions.model_dump().values())
                        for r in rows),
        cached_calls=sum(r.cached_calls for r in rows),
        prompt_tokens=sum(r.prompt_tokens for r in rows),
        completion_tokens=sum(r.completion_tokens for r in rows),
    )
    write_atomic(marker_path(path), marker.model_dump_json(indent=1).encode())
    return marker


def read_shard(out_dir: str | Path, shard_id: int) -> list[RefSavRow]:
    import pyarrow.parquet as pq

    return table_to_rows(pq.read_table(shard_path(out_dir, shard_id), schema=row_schema()))


@dataclass
class ShardListing:
    """The shards folder as listed once: file names grouped by the shard they belong to."""

    folder: Path
    by_shard: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def scan(cls, out_dir: str | Path) -> ShardListing:
        folder = Path(out_dir) / SHARDS_DIR
        listing = cls(folder)
        try:
            with os.scandir(folder) as entries:
                names = [e.name for e in entries]
        except FileNotFoundError:
            return listing
        for name in names:
            # shard-00001.parquet, shard-00001.done.json and their .…tmp-PID temp files
            stem = name.lstrip(".").split(".", 1)[0]
            listing.by_shard.setdefault(stem, []).append(name)
        return listing

    def files(self, shard: Shard | int) -> list[str]:
        shard_id = shard if isinstance(shard, int) else shard.shard_id
        return self.by_shard.get(shard_name(shard_id), [])


def shard_states(out_dir: str | Path, plan: Plan, *, verify: bool = False
                 ) -> dict[int, tuple[ShardState, ShardMarker | None]]:
    """Each planned shard's state. Lists the folder once; reads markers (not Parquet files)
    unless a file's size or mtime moved, or ``verify`` asks to re-hash every file."""
    return _states(out_dir, ShardListing.scan(out_dir), plan, verify)


def _states(out_dir: str | Path, listing: ShardListing, plan: Plan, verify: bool
            ) -> dict[int, tuple[ShardState, ShardMarker | None]]:
    states: dict[int, tuple[ShardState, ShardMarker | None]] = {}
    pending = (ShardState.pending, None)
    for shard in plan.shards:
        names = listing.files(shard)
        if not names:  # most shards of a fresh or half-done run: no path built, no syscall
            states[shard.shard_id] = pending
            continue
        path = listing.folder / f"{shard_name(shard.shard_id)}.parquet"  # = shard_path()
        mname = marker_path(path).name
        marker = None
        if path.name in names and mname in names:
            marker = valid_marker(path, plan.config_fingerprint, verify=verify)
        if marker is not None:
            states[shard.shard_id] = (ShardState.done, marker)
        elif path.name in names or mname in names:
            states[shard.shard_id] = (ShardState.partial, None)
        else:
            states[shard.shard_id] = pending
    return states


def has_failed_rows(state: ShardState, marker: ShardMarker | None) -> bool:
    """A finished shard whose marker counts failed or rejected rows (``RETRIED_STATUSES``:
    what ``--retry-failed`` redoes)."""
    return state is ShardState.done and marker is not None and any(
        marker.by_status.get(s) for s in RETRIED_STATUSES)


def shards_left(out_dir: str | Path, plan: Plan, *, verify: bool = False) -> list[Shard]:
    """The shards a run must (re)do, each cleared of its unvouched file, stale marker and
    leftover temp files: the folder is listed once for all of it, whatever the number of
    shards."""
    listing = ShardListing.scan(out_dir)
    states = _states(out_dir, listing, plan, verify)
    left = [s for s in plan.shards if states[s.shard_id][0] is not ShardState.done]
    for shard in left:
        discard_partial(out_dir, shard, listing)
    return left


def discard_partial(out_dir: str | Path, shard: Shard, listing: ShardListing) -> None:
    """Remove a shard's unvouched file, stale marker and leftover temp files before redoing it
    (``listing``: the folder as listed once for the whole run)."""
    for name in listing.files(shard):
        (listing.folder / name).unlink(missing_ok=True)
