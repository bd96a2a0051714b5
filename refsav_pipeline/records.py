"""The Ref-SAV output row (one per selected masklet): the contract of pipeline, review, export.

The Parquet schema is fixed here and nowhere else; ``ROW_SCHEMA`` is written into every shard so
files from different runs concatenate, and ``read_rows`` is how every reader loads a run.
pyarrow is imported when a schema or table is first needed (PEP 562 for ``ROW_SCHEMA`` and
``MASKLET_FIELDS``), so reading markers (``refsav status``) costs no pyarrow import.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator

if TYPE_CHECKING:
    import pyarrow as pa

Status = Literal["ok", "rejected_inconsistent", "rejected", "failed"]
RETRIED_STATUSES = ("failed", "rejected")
"""Rows ``resume --retry-failed`` redoes: a failed call, or answers that failed their checks
(``rejected``: docs/quality.md). ``rejected_inconsistent`` is the judge's verdict, kept."""
CALLS = ("object_crop", "object_masked", "judge", "scene", "video")
"""The five model calls behind one row, in the order they are made."""

SHARDS_DIR = "shards"


class PerCall(BaseModel):
    """One value per model call (prompt version, latency, tokens); ``None`` if not made."""

    model_config = ConfigDict(extra="forbid")

    object_crop: str | float | int | None = None
    object_masked: str | float | int | None = None
    judge: str | float | int | None = None
    scene: str | float | int | None = None
    video: str | float | int | None = None


SampleKey = tuple[str, str, int]
"""(video_id, masklet_type, masklet_id): ids repeat between a video's manual and auto files."""


class MaskletLocation(BaseModel):
    """Where a masklet is, as the columns ``MASKLET_FIELDS`` store it: the leading fields of
    a run's row, a benchmark sample and a validated sample."""

    model_config = ConfigDict(extra="forbid")

    video_id: str
    masklet_type: str
    masklet_id: int
    masklet_index: int  # position in the annotation file's inner masklet list
    video_path: str  # relative to the SA-V root
    anno_path: str  # relative to the SA-V root (the _manual or _auto JSON)
    height: int
    width: int
    video_frame_count: int
    size_bucket: str | None = None

    @property
    def key(self) -> SampleKey:
        return (self.video_id, self.masklet_type, self.masklet_id)


def masklet_location(row: Mapping[str, Any]) -> dict[str, Any]:
    """The ``MaskletLocation`` fields of a row (a dict, e.g. a model's ``model_dump()``)."""
    return {name: row[name] for name in MaskletLocation.model_fields}


class RefSavRow(MaskletLocation):
    max_area_frame: int | None = None
    max_area: int | None = None
    sampled_frames: list[int] = []
    bbox: list[int] | None = None  # [x, y, w, h] at max_area_frame
    object_caption_crop: str | None = None
    object_caption_masked: str | None = None
    consistent: bool | None = None
    judge_reason: str | None = None
    object_caption: str | None = None
    scene_caption: str | None = None
    video_caption: str | None = None
    first_video_caption: str | None = None  # before the contrastive re-caption, if one was made
    max_similarity: float | None = None  # to the closest other ok object of the video
    captioner_model: str | None = None
    judge_model: str | None = None
    prompt_versions: PerCall = PerCall()
    latency_s: PerCall = PerCall()
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_tokens_by_call: PerCall = PerCall()
    completion_tokens_by_call: PerCall = PerCall()
    cached_calls: int = 0
    check_failures: list[str] = []  # "call:kind" of every answer that failed a check
    status: Status
    error_kind: str | None = None
    error: str | None = None
    rejected_answer: str | None = None  # a rejected row's last bad answer, for inspection
    pipeline_version: str
    config_fingerprint: str

    @field_validator("check_failures", mode="before")
    @classmethod
    def _no_list_is_empty(cls, v: Any) -> Any:
        """Shards written before the column existed read it as null."""
        return [] if v is None else v


@cache
def masklet_fields() -> list[pa.Field]:
    """Where a masklet is (key, SA-V files, frame size, size bucket): the leading columns of the
    run's rows, the benchmark selection and the validated benchmark, defined once here."""
    import pyarrow as pa

    return [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("masklet_type", pa.string(), nullable=False),
        pa.field("masklet_id", pa.int32(), nullable=False),
        pa.field("masklet_index", pa.int32(), nullable=False),
        pa.field("video_path", pa.string(), nullable=False),
        pa.field("anno_path", pa.string(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("video_frame_count", pa.int32(), nullable=False),
        pa.field("size_bucket", pa.string()),
    ]


@cache
def row_schema() -> pa.Schema:
    """The Parquet schema of a run's rows (``ROW_SCHEMA``)."""
    import pyarrow as pa

    def per_call(value_type: pa.DataType) -> pa.DataType:
        return pa.struct([pa.field(c, value_type) for c in CALLS])

    return pa.schema([
        *masklet_fields(),
        pa.field("max_area_frame", pa.int32()),
        pa.field("max_area", pa.int64()),
        pa.field("sampled_frames", pa.list_(pa.int32())),
        pa.field("bbox", pa.list_(pa.int32())),
        pa.field("object_caption_crop", pa.string()),
        pa.field("object_caption_masked", pa.string()),
        pa.field("consistent", pa.bool_()),
        pa.field("judge_reason", pa.string()),
        pa.field("object_caption", pa.string()),
        pa.field("scene_caption", pa.string()),
        pa.field("video_caption", pa.string()),
        pa.field("first_video_caption", pa.string()),
        pa.field("max_similarity", pa.float64()),
        pa.field("captioner_model", pa.string()),
        pa.field("judge_model", pa.string()),
        pa.field("prompt_versions", per_call(pa.string())),
        pa.field("latency_s", per_call(pa.float64())),
        pa.field("prompt_tokens", pa.int64(), nullable=False),
        pa.field("completion_tokens", pa.int64(), nullable=False),
        pa.field("prompt_tokens_by_call", per_call(pa.int64())),
        pa.field("completion_tokens_by_call", per_call(pa.int64())),
        pa.field("cached_calls", pa.int32(), nullable=False),
        pa.field("check_failures", pa.list_(pa.string())),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error_kind", pa.string()),
        pa.field("error", pa.string()),
        pa.field("rejected_answer", pa.string()),
        pa.field("pipeline_version", pa.string(), nullable=False),
        pa.field("config_fingerprint", pa.string(), nullable=False),
    ])


def __getattr__(name: str) -> Any:
    """``ROW_SCHEMA`` and ``MASKLET_FIELDS``, built (and pyarrow imported) on first use."""
    if name == "ROW_SCHEMA":
        return row_schema()
    if name == "MASKLET_FIELDS":
        return masklet_fields()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def rows_to_table(rows: list[RefSavRow]) -> pa.Table:
    import pyarrow as pa

    return pa.Table.from_pylist([r.model_dump(mode="json") for r in rows], schema=row_schema())


def table_to_rows(table: pa.Table) -> list[RefSavRow]:
    return [RefSavRow.model_validate(d) for d in table.to_pylist()]


class ShardMarker(BaseModel):
    """Written after a shard's Parquet file is in place; without a valid one the shard is redone."""

    model_config = ConfigDict(extra="forbid")

    shard_id: int
    rows: int
    by_status: dict[str, int]
    by_error_kind: dict[str, int] = {}  # failed rows
    by_rejected_kind: dict[str, int] = {}  # rejected rows (their check kind or `ambiguous`)
    sha256: str  # of the Parquet file: a marker never vouches for another file
    size: int | None = None  # of the Parquet file, with its mtime: trusted without re-hashing
    mtime_ns: int | None = None
    config_fingerprint: str
    pipeline_version: str
    started_at: float
    finished_at: float
    model_calls: int = 0
    cached_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


def marker_path(parquet: Path) -> Path:
    return parquet.with_name(parquet.name.removesuffix(".parquet") + ".done.json")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def valid_marker(parquet: Path, fingerprint: str | None = None, *,
                 verify: bool = False) -> ShardMarker | None:
    """The shard's marker if it exists, parses, and vouches for the file (and fingerprint).

    A file with the size and mtime the marker recorded is trusted as is; any other file (or
    every file, with ``verify``) is re-hashed and must match the marker's sha256.
    """
    mpath = marker_path(parquet)
    try:
        st = parquet.stat()
        marker = ShardMarker.model_validate_json(mpath.read_bytes())
    except (OSError, ValueError):
        return None
    if fingerprint is not None and marker.config_fingerprint != fingerprint:
        return None
    if not verify and marker.size == st.st_size and marker.mtime_ns == st.st_mtime_ns:
        return marker
    if marker.sha256 != file_sha256(parquet):
        return None
    return marker


def shard_files(out_dir: str | Path) -> list[Path]:
    """Finished shard files of a run: renamed into place and vouched for by a valid marker."""
    found = sorted((Path(out_dir) / SHARDS_DIR).glob("shard-*.parquet"))
    return [p for p in found if valid_marker(p) is not None]


def read_rows(out_dir: str | Path) -> pa.Table:
    """All rows of a run as one table, in shard order (empty table with the schema if none)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = shard_files(out_dir)
    if not files:
        return row_schema().empty_table()
    return pa.concat_tables([pq.read_table(f, schema=row_schema()) for f in files])
