"""The data of ``refsav export hf``: the splits' columns and ``datasets`` features, the inputs
gathered from a run, and the Parquet shards of each split (``export/hf.py`` assembles the
folder, ``export/hf_card.py`` writes its card)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from refsav_pipeline.config import PipelineConfig
from refsav_pipeline.errors import InputError
from refsav_pipeline.export.inputs import display_config, require_validated, saved_config
from refsav_pipeline.export.row_images import video_images
from refsav_pipeline.export.sa2va import TrainRows, benchmark_rows, train_rows
from refsav_pipeline.pipeline.plan import CONFIG_FILE, Plan, load_plan
from refsav_pipeline.records import masklet_location, read_rows
from refsav_pipeline.review import ValidatedSample
from refsav_pipeline.sav.chunks import chunk_of

if TYPE_CHECKING:
    import datasets

DATA_DIR = "data"
CARD_FILE = "README.md"
PROVENANCE_DIR = "provenance"
OWNED = (DATA_DIR, CARD_FILE, PROVENANCE_DIR)
"""What the export writes in DIR; ``force`` replaces these and leaves anything else alone."""
BUILD_PREFIX = ".refsav-hf-"
"""The hidden folder inside DIR where an export is built before it is moved into place."""
SPLITS = ("train", "benchmark")
DEFAULT_MAX_SHARD_BYTES = 500_000_000
ROW_GROUP_ROWS = {"none": 10_000, "jpeg": 100}
"""Rows per Parquet row group; 100 with images, as ``datasets`` writes image datasets."""

Part = Literal["train", "benchmark", "all"]
Images = Literal["none", "jpeg"]


@dataclass(frozen=True)
class Column:
    """One dataset column: its ``datasets`` type (by name, see ``features``) and meaning."""

    name: str
    kind: Literal["string", "int32", "int32[]", "int32[4]", "string[]", "image"]
    meaning: str


COLUMNS = (
    Column("video_id", "string", "SA-V video id"),
    Column("sav_chunk", "string", "the SA-V chunk (`sav_0XX`) the video was shipped in; null "
           "for a flat SA-V folder"),
    Column("video_path", "string", "the video, relative to the SA-V root"),
    Column("anno_path", "string", "its SA-V annotation file (`_manual.json` or `_auto.json`), "
           "relative to the SA-V root"),
    Column("masklet_type", "string", "`manual` or `auto`: the annotation file"),
    Column("masklet_id", "int32", "SA-V's masklet id in that file"),
    Column("masklet_index", "int32", "position in the file's per-frame masklet lists (the "
           "object key in Sa2VA's Ref-SAV.json)"),
    Column("height", "int32", "video height, pixels"),
    Column("width", "int32", "video width, pixels"),
    Column("video_frame_count", "int32", "frames of the video at 24 fps"),
    Column("size_bucket", "string", "SA-V's size bucket by mean visible area: `small` < 32², "
           "`medium` < 96² pixels, else `large`"),
    Column("max_area_frame", "int32", "24 fps frame where the mask is largest: the frame of "
           "the object- and scene-level images"),
    Column("sampled_frames", "int32[]", "24 fps frames of the video-level images, in time "
           "order"),
    Column("bbox", "int32[4]", "`[x, y, w, h]` of the mask at `max_area_frame`, pixels"),
    Column("object_expression", "string", "stage 1: the object on its own"),
    Column("scene_expression", "string", "stage 2: the object in its scene"),
    Column("video_expression", "string", "stage 3: the object over the video (the long "
           "expression Sa2VA trains on)"),
    Column("short_expressions", "string[]", "short expressions written by reviewers "
           "(benchmark); empty in train"),
    Column("review_status", "string", "`not_reviewed` (train); `accepted`, "
           "`accepted_edited` (a reviewer corrected a text) or `long_rejected` (kept for its "
           "short expressions; the three expressions are null) in the benchmark"),
)
IMAGE_COLUMNS = {  # dataset column -> row_images name
    "object_crop": Column("object_crop", "image", "the object cut out at `max_area_frame` "
                          "(background black), as the report shows it"),
    "contour_image": Column("contour_image", "image", "`max_area_frame` with the object "
                            "outlined in yellow"),
    "frames_strip": Column("frames_strip", "image", "the sampled frames with the object's "
                           "yellow box, side by side"),
}
IMAGE_SOURCES = dict(zip(IMAGE_COLUMNS, ("crop", "contour", "strip"), strict=True))


def columns(images: Images) -> list[Column]:
    return [*COLUMNS, *(IMAGE_COLUMNS.values() if images == "jpeg" else ())]


def features(images: Images) -> datasets.Features:
    """The declared schema, as ``datasets`` reads it from the Parquet files and the card."""
    from datasets import Features, Image, List, Value

    kinds = {"string": Value("string"), "int32": Value("int32"),
             "int32[]": List(Value("int32")), "int32[4]": List(Value("int32"), length=4),
             "string[]": List(Value("string")), "image": Image()}
    return Features({c.name: kinds[c.kind] for c in columns(images)})


class HfOptions(BaseModel):
    part: Part = "all"
    images: Images = "none"
    max_shard_bytes: int = Field(DEFAULT_MAX_SHARD_BYTES, gt=0)
    force: bool = False
    exclude_chunks: list[str] = []


# ------------------------------------------------------------------------------------------------
# Records
# ------------------------------------------------------------------------------------------------

def _record(row: dict[str, Any], texts: tuple[str | None, str | None, str | None],
            shorts: list[str], status: str) -> dict[str, Any]:
    return {**masklet_location(row), "sav_chunk": chunk_of(row["video_path"]),
            "max_area_frame": row["max_area_frame"], "sampled_frames": row["sampled_frames"],
            "bbox": row["bbox"], "object_expression": texts[0], "scene_expression": texts[1],
            "video_expression": texts[2], "short_expressions": shorts, "review_status": status}


def train_record(row: dict[str, Any]) -> dict[str, Any]:
    return _record(row, (row["object_caption"], row["scene_caption"], row["video_caption"]),
                   [], "not_reviewed")


def review_status(sample: ValidatedSample) -> str:
    """What the review made of a benchmark object (the ``review_status`` column)."""
    if not sample.long_accepted:
        return "long_rejected"
    return "accepted_edited" if sample.edited else "accepted"


def benchmark_record(sample: ValidatedSample, row: dict[str, Any]) -> dict[str, Any]:
    """The reviewed sample's final texts on its run row's frames."""
    return _record(row, (sample.object_caption, sample.scene_caption, sample.video_caption),
                   [s.strip() for s in sample.short_expressions if s.strip()],
                   review_status(sample))


# ------------------------------------------------------------------------------------------------
# Inputs: everything is checked before anything is written
# ------------------------------------------------------------------------------------------------

@dataclass
class HfInputs:
    out_dir: Path
    dest: Path
    opts: HfOptions
    plan: Plan
    run_rows: list[dict[str, Any]]  # every row of the run
    run_config: PipelineConfig | None  # the run's own config.json, if it has one
    render_config: PipelineConfig  # how the images are drawn
    splits: dict[str, list[dict[str, Any]]]  # split -> records, sorted by video
    train: TrainRows | None
    warnings: list[str] = field(default_factory=list)


def check_dest(dest: Path, force: bool) -> None:
    if dest.exists() and not dest.is_dir():
        raise InputError(f"--to {dest} is a file: pass a folder for the dataset")
    if dest.is_dir() and any(dest.iterdir()) and not force:
        raise InputError(f"--to {dest} is not empty: pass --force to replace its "
                         f"{', '.join(OWNED)} (nothing else in it is touched), or another "
                         "folder")


def gather(out_dir: Path, dest: Path, opts: HfOptions,
           render_config: PipelineConfig | None = None) -> HfInputs:
    """The records of each split and what the card needs; an ``InputError`` for anything
    that would stop the export, before it writes a byte."""
    check_dest(dest, opts.force)
    plan = load_plan(out_dir)
    run_config = saved_config(out_dir)
    warnings = []
    if run_config is None:
        warnings.append(f"{out_dir / CONFIG_FILE} not found: the card cannot show the run's "
                        "sampling and selection settings")
    elif run_config.fingerprint() != plan.config_fingerprint:
        warnings.append(f"{out_dir / CONFIG_FILE} has fingerprint {run_config.fingerprint()}, "
                        f"the plan {plan.config_fingerprint}: the card shows the file's settings")
    if opts.images == "jpeg" and not Path(plan.sav_root).is_dir():
        raise InputError(f"SA-V root {plan.sav_root} (from {out_dir}/plan.json) is not a "
                         "folder: --images jpeg draws the images from its videos; pass "
                         "--images none")
    run_rows = read_rows(out_dir).to_pylist()
    if not run_rows:
        raise InputError(f"{out_dir} has no finished shards: run `refsav resume --out "
                         f"{out_dir}` first")
    splits: dict[str, list[dict[str, Any]]] = {}
    train = None
    if opts.part in ("train", "all"):
        train = train_rows(out_dir, opts.exclude_chunks)
        splits["train"] = [train_record(r) for r in train.rows]
    if opts.part in ("benchmark", "all"):
        require_validated(out_dir)
        try:
            pairs = benchmark_rows(out_dir)
        except ValueError as exc:
            raise InputError(str(exc)) from exc
        splits["benchmark"] = [benchmark_record(s, r) for s, r in pairs]
        splits["benchmark"].sort(key=lambda r: (r["video_id"], r["masklet_type"],
                                                r["masklet_index"]))
    empty = [name for name, records in splits.items() if not records]
    if len(empty) == len(splits):
        why = (f"; {train.ok_rows} ok rows, {train.excluded_benchmark} in benchmark videos, "
               f"{train.excluded_chunk_rows} in held-out chunks" if train is not None else "")
        raise InputError(f"nothing to export from {out_dir}: no rows for "
                         f"{' or '.join(empty)}{why}")
    for name in empty:
        warnings.append(f"the {name} split has no rows: left out")
        del splits[name]
    return HfInputs(out_dir=out_dir, dest=dest, opts=opts, plan=plan, run_rows=run_rows,
                    run_config=run_config,
                    render_config=display_config(out_dir, render_config),
                    splits=splits, train=train, warnings=warnings)


# ------------------------------------------------------------------------------------------------
# Parquet shards
# ------------------------------------------------------------------------------------------------

@dataclass
class SplitFiles:
    name: str
    files: list[str]  # relative to DIR, in order
    rows: int
    videos: int
    num_bytes: int  # Arrow bytes before compression (what datasets calls the dataset size)
    download_bytes: int  # the Parquet files
    without_images: int = 0


class ShardWriter:
    """``{split}-NNNNN-of-MMMMM.parquet`` files of about ``max_bytes`` each (Arrow bytes
    before compression, as ``datasets``' ``max_shard_size``). Batches are never split: a batch
    larger than ``max_bytes`` is a shard of its own. The total is known only at the end, so
    the files get their names in ``close``."""

    def __init__(self, folder: Path, split: str, schema: pa.Schema, max_bytes: int,
                 row_group_rows: int) -> None:
        self.folder, self.split, self.schema = folder, split, schema
        self.max_bytes, self.row_group_rows = max_bytes, row_group_rows
        self.pending: list[pa.Table] = []  # the next row group
        self.paths: list[Path] = []
        self.writer: pq.ParquetWriter | None = None
        self.shard_bytes = 0  # of the open shard, pending included
        self.rows = 0
        self.num_bytes = 0

    def add(self, records: list[dict[str, Any]]) -> None:
        """One batch (a video's rows, or up to ``row_group_rows`` rows)."""
        table = pa.Table.from_pylist(records, schema=self.schema)
        if self.shard_bytes and self.shard_bytes + table.nbytes > self.max_bytes:
            self._write_pending()
            self._close_shard()
        self.pending.append(table)
        self.shard_bytes += table.nbytes
        self.rows += table.num_rows
        self.num_bytes += table.nbytes
        if sum(t.num_rows for t in self.pending) >= self.row_group_rows:
            self._write_pending()

    def _write_pending(self) -> None:
        if not self.pending:
            return
        if self.writer is None:
            path = self.folder / f".{self.split}-{len(self.paths):05d}.parquet"
            self.paths.append(path)
            self.writer = pq.ParquetWriter(path, self.schema)
        self.writer.write_table(pa.concat_tables(self.pending))
        self.pending = []

    def _close_shard(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        self.shard_bytes = 0

    def close(self) -> list[Path]:
        if not self.paths and not self.pending:  # no rows: one empty file keeps the split
            self.pending.append(self.schema.empty_table())
        self._write_pending()
        self._close_shard()
        n = len(self.paths)
        final = [p.with_name(f"{self.split}-{i:05d}-of-{n:05d}.parquet")
                 for i, p in enumerate(self.paths)]
        for tmp, path in zip(self.paths, final, strict=True):
            tmp.rename(path)
        return final


def _with_images(inputs: HfInputs, split: str,
                 warnings: list[str]) -> Iterator[tuple[list[dict[str, Any]], int]]:
    """Batches of records (one video each) with their images; and how many rows lack them."""
    sav_root = Path(inputs.plan.sav_root)
    for video in video_images(inputs.splits[split], sav_root, inputs.render_config,
                              f"{split} images"):
        if video.problem is not None:
            warnings.append(f"{split}: no images for the {len(video.rows)} rows of "
                            f"{video.video_id}: {video.problem}")
            yield [{**r, **dict.fromkeys(IMAGE_COLUMNS)} for r in video.rows], len(video.rows)
            continue
        yield [{**r, **{col: {"bytes": jpegs[src], "path": None}
                        for col, src in IMAGE_SOURCES.items()}}
               for r, jpegs in zip(video.rows, video.images, strict=True)], 0


def write_split(inputs: HfInputs, split: str, data_dir: Path, schema: pa.Schema,
                warnings: list[str]) -> SplitFiles:
    records = inputs.splits[split]
    opts = inputs.opts
    writer = ShardWriter(data_dir, split, schema, opts.max_shard_bytes,
                         ROW_GROUP_ROWS[opts.images])
    missing = 0
    if opts.images == "jpeg":
        for batch, lacking in _with_images(inputs, split, warnings):
            writer.add(batch)
            missing += lacking
    else:
        for start in range(0, len(records), writer.row_group_rows):
            writer.add(records[start:start + writer.row_group_rows])
    paths = writer.close()
    return SplitFiles(name=split, files=[f"{DATA_DIR}/{p.name}" for p in paths],
                      rows=writer.rows, videos=len({r["video_id"] for r in records}),
                      num_bytes=writer.num_bytes,
                      download_bytes=sum(p.stat().st_size for p in paths),
                      without_images=missing)
