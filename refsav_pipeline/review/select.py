"""Choosing the benchmark: whole videos of ``ok`` rows, stratified by masklet type and size.

Whole videos keep the benchmark disjoint from training at the video level (Ref-SAV's benchmark
videos are disjoint from train): ``benchmark_video_ids`` is what the training export excludes.
A selection restricted to SA-V chunks (``chunks``) records them: the training export then
leaves those chunks out whole, as the published split does.
The selection never exceeds ``count``: a video is taken only if all its ``ok`` objects fit, so
the total is at most ``count`` and, with many small videos, reaches it or falls just short.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import ConfigDict

from refsav_pipeline.pipeline.plan import write_atomic
from refsav_pipeline.records import (
    MASKLET_FIELDS,
    MaskletLocation,
    masklet_location,
    read_rows,
)
from refsav_pipeline.review.paths import benchmark_path
from refsav_pipeline.sav.chunks import chunk_of

_CAPTION_FIELDS = ("object_caption", "scene_caption", "video_caption")


class BenchmarkSample(MaskletLocation):
    """One benchmark object: where it is, what the pipeline said, and its review settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    position: int  # review order (objects of one video are adjacent: one decode per video)
    stratum: str  # "<masklet_type>/<size_bucket>"
    max_area_frame: int
    max_area: int
    sampled_frames: list[int]
    bbox: list[int] | None
    object_caption: str
    scene_caption: str
    video_caption: str
    config_fingerprint: str
    pipeline_version: str
    sample_version: str  # hash of key + captions + fingerprint: decisions are tied to it
    double_review: bool  # needs two independent reviewers (for agreement)


BENCHMARK_SCHEMA = pa.schema([
    pa.field("position", pa.int32(), nullable=False),
    *MASKLET_FIELDS,
    pa.field("stratum", pa.string(), nullable=False),
    pa.field("max_area_frame", pa.int32(), nullable=False),
    pa.field("max_area", pa.int64(), nullable=False),
    pa.field("sampled_frames", pa.list_(pa.int32()), nullable=False),
    pa.field("bbox", pa.list_(pa.int32())),
    pa.field("object_caption", pa.string(), nullable=False),
    pa.field("scene_caption", pa.string(), nullable=False),
    pa.field("video_caption", pa.string(), nullable=False),
    pa.field("config_fingerprint", pa.string(), nullable=False),
    pa.field("pipeline_version", pa.string(), nullable=False),
    pa.field("sample_version", pa.string(), nullable=False),
    pa.field("double_review", pa.bool_(), nullable=False),
])


CHUNKS_META = "chunks"
"""Selection metadata: the SA-V chunks the benchmark was restricted to (comma-separated)."""


class SelectionExists(RuntimeError):
    """A selection with review decisions exists; replacing it needs ``force``."""


def stratum_of(masklet_type: str, size_bucket: str | None) -> str:
    return f"{masklet_type}/{size_bucket or 'unknown'}"


def sample_version(row: dict) -> str:
    """What a reviewer saw: a decision on another version is stale (re-run, new captions)."""
    payload = [row["video_id"], row["masklet_type"], int(row["masklet_id"]),
               *(row.get(f) or "" for f in _CAPTION_FIELDS), row.get("config_fingerprint", "")]
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:16]


def _eligible(row: dict) -> bool:
    return (row["status"] == "ok" and row.get("max_area_frame") is not None
            and all(row.get(f) for f in _CAPTION_FIELDS))


def select_benchmark(rows: pa.Table | list[dict], count: int, seed: int = 0,
                     double_review: float = 0.1,
                     chunks: list[str] | None = None) -> list[BenchmarkSample]:
    """Whole videos, greedily filling the stratum furthest below its population share.

    Each step takes the stratum whose share in the selection lags its share among eligible
    objects the most, and adds the next video (in seeded random order) holding an object of it;
    a video whose objects would exceed ``count`` is passed over. Same rows + seed ⇒ same list.
    With ``chunks``, only videos of those SA-V chunks are candidates (``sav.chunks``).
    """
    if count < 1:
        raise ValueError("count must be at least 1")
    if not 0 <= double_review <= 1:
        raise ValueError("double_review is a fraction between 0 and 1")
    dicts = rows.to_pylist() if isinstance(rows, pa.Table) else list(rows)
    by_video: dict[str, list[dict]] = defaultdict(list)
    for row in dicts:
        if _eligible(row) and (chunks is None or chunk_of(row["video_path"]) in chunks):
            by_video[row["video_id"]].append(row)
    if not by_video and chunks is not None:
        raise ValueError(f"no eligible ok rows in chunks {', '.join(chunks)}")
    if not by_video:
        return []
    for objs in by_video.values():
        objs.sort(key=lambda r: (r["masklet_type"] != "manual", r["masklet_type"],
                                 r["masklet_id"]))
    population: dict[str, int] = defaultdict(int)
    videos_of: dict[str, list[str]] = defaultdict(list)
    rng = np.random.default_rng(seed)
    order = [str(v) for v in rng.permutation(sorted(by_video))]
    for video_id in order:
        strata = {stratum_of(r["masklet_type"], r["size_bucket"]) for r in by_video[video_id]}
        for r in by_video[video_id]:
            population[stratum_of(r["masklet_type"], r["size_bucket"])] += 1
        for s in sorted(strata):
            videos_of[s].append(video_id)
    total = sum(population.values())
    share = {s: n / total for s, n in population.items()}
    cursor = dict.fromkeys(videos_of, 0)
    taken: dict[str, int] = defaultdict(int)
    used: set[str] = set()
    chosen: list[dict] = []
    while len(chosen) < count:
        open_strata = [s for s in sorted(videos_of) if cursor[s] < len(videos_of[s])]
        if not open_strata:
            break
        # largest lag of the stratum's count behind its target at the next step
        s = max(open_strata, key=lambda s: share[s] * (len(chosen) + 1) - taken[s])
        video_id = videos_of[s][cursor[s]]
        cursor[s] += 1
        if video_id in used:
            continue
        objs = by_video[video_id]
        used.add(video_id)  # decided once: taken now, or too big for what is left
        if len(chosen) + len(objs) > count:
            continue
        chosen.extend(objs)
        for r in objs:
            taken[stratum_of(r["masklet_type"], r["size_bucket"])] += 1
    doubles = set(rng.permutation(len(chosen))[: round(double_review * len(chosen))].tolist())
    return [_sample(i, r, i in doubles) for i, r in enumerate(chosen)]


def _sample(position: int, r: dict, double: bool) -> BenchmarkSample:
    return BenchmarkSample(
        **masklet_location(r), position=position,
        stratum=stratum_of(r["masklet_type"], r["size_bucket"]),
        max_area_frame=r["max_area_frame"], max_area=r["max_area"] or 0,
        sampled_frames=list(r["sampled_frames"] or []), bbox=r["bbox"],
        object_caption=r["object_caption"], scene_caption=r["scene_caption"],
        video_caption=r["video_caption"], config_fingerprint=r["config_fingerprint"],
        pipeline_version=r["pipeline_version"], sample_version=sample_version(r),
        double_review=double,
    )


def samples_to_table(samples: list[BenchmarkSample], meta: dict[str, str] | None = None
                     ) -> pa.Table:
    table = pa.Table.from_pylist([s.model_dump() for s in samples], schema=BENCHMARK_SCHEMA)
    return table.replace_schema_metadata({f"refsav.{k}": v for k, v in (meta or {}).items()})


def write_selection(out_dir: str | Path, samples: list[BenchmarkSample], *, seed: int,
                    count: int, force: bool = False, chunks: list[str] | None = None,
                    decisions: int = 0) -> Path:
    """Write ``benchmark.parquet`` atomically; refuse to replace one that has ``decisions``
    (the review decisions logged for this run: the caller asks the store)."""
    path = benchmark_path(out_dir)
    if path.exists() and not force and decisions:
        raise SelectionExists(
            f"{path} already has {decisions} review decisions; pass --force to replace the "
            "selection (decisions are kept, but those on dropped or changed samples no "
            "longer count)")
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"seed": str(seed), "count": str(count),
            "created": datetime.now(UTC).isoformat(timespec="seconds")}
    if chunks is not None:
        meta[CHUNKS_META] = ",".join(chunks)
    buf = io.BytesIO()
    pq.write_table(samples_to_table(samples, meta), buf)
    write_atomic(path, buf.getvalue())
    return path


def select_and_write(out_dir: str | Path, count: int = 2000, seed: int = 0,
                     double_review: float = 0.1, force: bool = False,
                     chunks: list[str] | None = None, decisions: int = 0
                     ) -> list[BenchmarkSample]:
    samples = select_benchmark(read_rows(out_dir), count, seed, double_review, chunks)
    write_selection(out_dir, samples, seed=seed, count=count, force=force, chunks=chunks,
                    decisions=decisions)
    return samples


def load_benchmark(out_dir: str | Path) -> list[BenchmarkSample]:
    """The selection in review order; ``FileNotFoundError`` if none was made."""
    path = benchmark_path(out_dir)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `refsav benchmark select --out "
                                f"{out_dir}` first")
    table = pq.read_table(path, schema=BENCHMARK_SCHEMA)
    return sorted((BenchmarkSample.model_validate(d) for d in table.to_pylist()),
                  key=lambda s: s.position)


def benchmark_video_ids(out_dir: str | Path) -> set[str]:
    """Videos held out for the benchmark (empty if no selection): the training export
    must drop every row of these videos."""
    path = benchmark_path(out_dir)
    if not path.is_file():
        return set()
    return set(pq.read_table(path, columns=["video_id"]).column("video_id").to_pylist())


def benchmark_chunks(out_dir: str | Path) -> list[str]:
    """The SA-V chunks the selection was restricted to (``--chunks``); empty if it was not:
    the training export leaves these whole chunks out, as the published split does."""
    path = benchmark_path(out_dir)
    if not path.is_file():
        return []
    meta = pq.read_schema(path).metadata or {}
    value = meta.get(f"refsav.{CHUNKS_META}".encode(), b"").decode()
    return [c for c in value.split(",") if c]
