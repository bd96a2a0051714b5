"""The plan of a run: which videos go in which shard. Written once, never changed by a resume.

``plan.json`` also records the SA-V root and the config fingerprint, so every later command
(resume, status, review, export, report) needs only the output folder.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from refsav_pipeline import __version__
from refsav_pipeline.errors import writing_under
from refsav_pipeline.sav.index import SavVideoRef

PLAN_FILE = "plan.json"
CONFIG_FILE = "config.json"


def shard_name(shard_id: int) -> str:
    return f"shard-{shard_id:05d}"


class Shard(BaseModel):
    model_config = ConfigDict(frozen=True)

    shard_id: int
    videos: list[SavVideoRef]

    @property
    def name(self) -> str:
        return shard_name(self.shard_id)


class Plan(BaseModel):
    sav_root: str  # absolute
    config_fingerprint: str
    pipeline_version: str = __version__
    created: str
    shards: list[Shard]

    @property
    def num_videos(self) -> int:
        return sum(len(s.videos) for s in self.shards)


def make_plan(sav_root: str | Path, videos: list[SavVideoRef], shard_size: int,
              fingerprint: str) -> Plan:
    """Shards of ``shard_size`` whole videos in video-id order (deterministic)."""
    if shard_size < 1:
        raise ValueError("shard size must be at least 1")
    videos = sorted(videos, key=lambda v: v.video_id)
    shards = [Shard(shard_id=i // shard_size, videos=videos[i:i + shard_size])
              for i in range(0, len(videos), shard_size)]
    return Plan(sav_root=str(Path(sav_root).resolve()), config_fingerprint=fingerprint,
                created=datetime.now(UTC).isoformat(timespec="seconds"), shards=shards)


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temp name, fsync, rename: readers see the old file or the new, never half."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with writing_under(path.parent):
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)  # a full disk must not keep half a file as well
            raise


def ensure_writable(folder: Path) -> None:
    """Create ``folder`` and write a file in it now, so an unwritable output folder is said
    before anything starts (``OutputUnwritable``)."""
    with writing_under(folder):
        folder.mkdir(parents=True, exist_ok=True)
    probe = folder / ".write-check"
    write_atomic(probe, b"ok\n")
    probe.unlink()


def save_plan(out_dir: str | Path, plan: Plan) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / PLAN_FILE, plan.model_dump_json(indent=1).encode())


@contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic collection while a large acyclic structure is built: each one would walk all
    of it built so far, so loading grows faster than the plan (refcounting frees the rest)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def load_plan(out_dir: str | Path) -> Plan:
    path = Path(out_dir) / PLAN_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {out_dir} the output of `refsav run`?")
    with _gc_paused():  # pydantic's own parser: one pass in Rust, no dict of dicts first
        return Plan.model_validate_json(path.read_bytes())
