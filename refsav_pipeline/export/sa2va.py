"""Export a run to the files Sa2VA's own code reads (see docs: ref-sav.md).

Train: ``Ref-SAV.json``, one entry per (video, annotation file): the manual file's entry keyed
by the video id, as in the published file, an auto file's by ``{vid}_auto``. Objects are keyed
by the masklet's index in the annotation's inner list (Sa2VA indexes the decoded mask stack
with it) and carry ``formated`` (the long expression) and ``short_caps``. Paths are relative to
the SA-V root (``sav_train/sav_000/x.mp4``): both of Sa2VA's loaders join them to their SA-V
folder as they are (the current one only removes a duplicated chunk folder,
``sav_000/sav_train/sav_000/`` → ``sav_train/sav_000/``, which our paths never have). An entry
whose video ``cv2`` decodes to a frame count that does not match its masklet is left out
(``frame_counts``), and chunks can be held out as a whole (``sav.chunks``).

Benchmark: ``ref_sav_eval/`` as read by Sa2VA's referring-VOS evaluation (dataset ``REF_SAV``):
every annotated frame of a benchmark video as ``videos/{vid}/{frame:05d}.jpg`` (24 fps frame
index; zero-padded so that Sa2VA's ``sorted(frames)`` is numeric order and the masks line up),
``meta_expressions_valid.json`` and ``mask_dict.json`` (one entry per object, null where the
object is not visible). Exp ids are plain integers: the evaluation splits ``{vid}_{exp}`` on the
last underscore.
"""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from refsav_pipeline.config import ExportConfig
from refsav_pipeline.errors import RecordError
from refsav_pipeline.export.frame_counts import EntryFiles, verify_frame_counts
from refsav_pipeline.export.layout import (
    BENCH_DIR,
    Layout,
    LayoutName,
    guard_train_files,
    layout_for,
    link_sav_root,
    write_train_files,
)
from refsav_pipeline.export.short_caps import short_caps
from refsav_pipeline.pipeline.plan import load_plan, write_atomic
from refsav_pipeline.progress import progress
from refsav_pipeline.records import read_rows
from refsav_pipeline.review import ValidatedSample, benchmark_video_ids, load_validated
from refsav_pipeline.review.paths import validated_path
from refsav_pipeline.review.select import benchmark_chunks
from refsav_pipeline.sav.chunks import chunk_of
from refsav_pipeline.sav.decode import decode_frames
from refsav_pipeline.sav.masklets import load_annotation
from refsav_pipeline.sav.schema import ANNOTATION_STRIDE, SavAnnotation

VIDEOS_DIR = "videos"
META_FILE = "meta_expressions_valid.json"
MASK_FILE = "mask_dict.json"
MANIFEST_FILE = "export_manifest.json"
FRAME_COUNT_CACHE = Path("export") / "cv2_frame_counts.json"
"""Under the run folder: cv2 frame counts of the SA-V files, so a re-export decodes nothing."""
LONG_TYPE, SHORT_TYPE = 0, 1
DECODE_CHUNK = 24
"""Annotated frames decoded at once: bounds memory on long, high-resolution videos."""

Part = Literal["train", "benchmark", "all"]


def frame_name(video_frame: int) -> str:
    """File stem of a 24 fps frame: 5 digits, like SA-V val's ``JPEGImages_24fps``."""
    return f"{video_frame:05d}"


def compose_long(choice: str, object_caption: str | None, scene_caption: str | None,
                 video_caption: str | None) -> str | None:
    """The long expression for the configured choice; ``None`` if that caption is missing."""
    texts = {"object": [object_caption], "scene": [scene_caption], "video": [video_caption],
             "scene+video": [scene_caption, video_caption]}[choice]
    parts = [t.strip() for t in texts if t and t.strip()]
    if len(parts) != len(texts):
        return None
    return " ".join(parts)


def _dump(data: Any) -> bytes:
    """Compact, key-order-preserving, UTF-8 JSON: same input, byte-identical file."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass
class TrainExport:
    path: Path
    entries: int = 0
    objects: int = 0
    ok_rows: int = 0
    excluded_benchmark: int = 0
    excluded_chunks: list[str] = field(default_factory=list)
    excluded_chunk_rows: int = 0
    missing_text: int = 0
    also_written: list[Path] = field(default_factory=list)
    frame_mismatch: dict[str, str] = field(default_factory=dict)  # entry key -> why left out


@dataclass
class BenchmarkExport:
    dir: Path
    videos: int = 0
    objects: int = 0
    long_expressions: int = 0
    short_expressions: int = 0
    frames: int = 0
    warnings: list[str] = field(default_factory=list)


def _validated(out_dir: Path) -> list[ValidatedSample]:
    """The reviewed samples sorted by key, so the export does not depend on review order."""
    return sorted(load_validated(out_dir), key=lambda s: s.key)


def _validated_or_empty(out_dir: Path) -> list[ValidatedSample]:
    return _validated(out_dir) if validated_path(out_dir).is_file() else []


def entry_key(video_id: str, masklet_type: str) -> str:
    """The published file keys its (manual-only) entries by video id; auto entries get a
    suffix so that both files of a video can be trained on."""
    return video_id if masklet_type == "manual" else f"{video_id}_{masklet_type}"


@dataclass
class TrainRows:
    """The ``ok`` rows that may be trained on, and what was held out of train."""

    rows: list[dict[str, Any]]  # sorted by video, masklet type, masklet index
    ok_rows: int = 0
    excluded_benchmark: int = 0
    excluded_chunks: list[str] = field(default_factory=list)
    excluded_chunk_rows: int = 0


def train_rows(out_dir: str | Path, exclude_chunks: list[str] | None = None) -> TrainRows:
    """The ``ok`` rows of videos outside the benchmark: every export's train split.

    Left out: benchmark videos and reviewed videos (even if the selection file were to lose
    them), videos of ``exclude_chunks`` and of the chunks the benchmark was selected from.
    """
    excluded = benchmark_video_ids(out_dir) | {s.video_id for s in _validated_or_empty(out_dir)}
    chunks = sorted(set(exclude_chunks or []) | set(benchmark_chunks(out_dir)))
    rows = [r for r in read_rows(out_dir).to_pylist() if r["status"] == "ok"]
    rows.sort(key=lambda r: (r["video_id"], r["masklet_type"], r["masklet_index"]))
    result = TrainRows(rows=[], ok_rows=len(rows), excluded_chunks=chunks)
    for r in rows:
        if r["video_id"] in excluded:
            result.excluded_benchmark += 1
        elif chunk_of(r["video_path"]) in chunks:
            result.excluded_chunk_rows += 1
        else:
            result.rows.append(r)
    return result


def benchmark_rows(out_dir: str | Path) -> list[tuple[ValidatedSample, dict[str, Any]]]:
    """Each reviewed sample (sorted by key) with its run row: every export's benchmark split.
    A sample without a row is a ``ValueError``."""
    samples = _validated(out_dir)
    rows = {(r["video_id"], r["masklet_type"], r["masklet_id"]): r
            for r in read_rows(out_dir).to_pylist()}
    unknown = [s.key for s in samples if s.key not in rows]
    if unknown:
        raise ValueError(f"{len(unknown)} validated samples have no row in {out_dir}: "
                         f"{unknown[:5]}")
    return [(s, rows[s.key]) for s in samples]


def export_train(out_dir: str | Path, dest: str | Path | Layout,
                 cfg: ExportConfig | None = None,
                 exclude_chunks: list[str] | None = None) -> TrainExport:
    """``Ref-SAV.json`` from the ``train_rows``, less entries whose frames do not match their
    masklet. ``dest`` is a folder (flat layout) or a ``Layout`` (the file under each of its
    names).
    """
    cfg = cfg or ExportConfig()
    out_dir = Path(out_dir)
    layout = dest if isinstance(dest, Layout) else layout_for(LayoutName.flat, dest)
    sav_root = Path(load_plan(out_dir).sav_root)
    guard_train_files(layout)  # first: a refusal leaves nothing half-written
    if layout.sav_link is not None:
        link_sav_root(layout.sav_link, sav_root)
    split = train_rows(out_dir, exclude_chunks)
    result = TrainExport(path=layout.train_file, ok_rows=split.ok_rows,
                         excluded_benchmark=split.excluded_benchmark,
                         excluded_chunks=split.excluded_chunks,
                         excluded_chunk_rows=split.excluded_chunk_rows,
                         also_written=list(layout.train_files[1:]))
    entries: dict[str, dict[str, Any]] = {}
    for r in split.rows:
        text = compose_long(cfg.long_expression, r["object_caption"], r["scene_caption"],
                            r["video_caption"])
        if text is None:
            result.missing_text += 1
            continue
        key = entry_key(r["video_id"], r["masklet_type"])
        entry = entries.setdefault(key, {"video_path": r["video_path"],
                                         "anno_path": r["anno_path"], "objects": {}})
        if (entry["video_path"], entry["anno_path"]) != (r["video_path"], r["anno_path"]):
            raise ValueError(f"{key}: rows disagree on video_path/anno_path")
        index = str(r["masklet_index"])
        if index in entry["objects"]:
            raise ValueError(f"{key}: two rows for masklet index {index}")
        entry["objects"][index] = {"formated": text,
                                   "short_caps": short_caps(r["object_caption"], text)}
    failed = verify_frame_counts(
        (EntryFiles(key, sav_root / e["video_path"], sav_root / e["anno_path"])
         for key, e in entries.items()),
        cache_path=out_dir / FRAME_COUNT_CACHE, workers=cfg.frame_count_workers)
    for key in failed:  # manual entries are keyed by video id, auto ones by {vid}_auto
        result.frame_mismatch[key] = failed[key]
        del entries[key]
    entries = {k: entries[k] for k in sorted(entries)}
    result.entries = len(entries)
    result.objects = sum(len(e["objects"]) for e in entries.values())
    write_train_files(layout, _dump(entries))
    return result


def _prepare_bench_dir(bench: Path) -> None:
    """Start from an empty folder; only a folder this exporter wrote is ever removed."""
    if bench.exists():
        if not (bench / MANIFEST_FILE).is_file() and any(bench.iterdir()):
            raise FileExistsError(f"{bench} exists and was not written by refsav export: "
                                  "refusing to overwrite it")
        shutil.rmtree(bench)
    (bench / VIDEOS_DIR).mkdir(parents=True)


def _mask_entry(ann: SavAnnotation, index: int) -> list[dict[str, Any] | None]:
    """The object's RLE per annotated frame, verbatim from SA-V; null where it is not visible."""
    expected = [ann.height, ann.width]
    rles = [{"size": list(frame[index].size), "counts": frame[index].counts}
            for frame in ann.masklet]
    for f, rle in enumerate(rles):
        if rle["size"] != expected:
            raise ValueError(f"{ann.video_id}: RLE of object {index} at annotated frame {f} "
                             f"has size {rle['size']}, video is {expected}")
    areas = mask_utils.area(rles) if rles else np.zeros(0)
    return [rle if area > 0 else None for rle, area in zip(rles, areas, strict=True)]


def _write_frames(video: Path, frames: list[int], out: Path, *, video_id: str, height: int,
                  width: int, frame_count: int, quality: int, backend: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(frames), DECODE_CHUNK):
        chunk = frames[start:start + DECODE_CHUNK]
        decoded = decode_frames(video, chunk, video_id=video_id,
                                expected_frame_count=frame_count, backend=backend)
        for index in chunk:
            rgb = decoded.frames[index]
            if rgb.shape[:2] != (height, width):
                raise RecordError("frame_size", f"frame {index} is {rgb.shape[1]}x{rgb.shape[0]},"
                                  f" annotation says {width}x{height}", video_id=video_id)
            ok = cv2.imwrite(str(out / f"{frame_name(index)}.jpg"),
                             cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                             [cv2.IMWRITE_JPEG_QUALITY, quality])
            if not ok:
                raise OSError(f"cannot write {out / frame_name(index)}.jpg")


def export_benchmark(out_dir: str | Path, dest: str | Path, cfg: ExportConfig | None = None,
                     backend: str = "pyav") -> BenchmarkExport:
    """``DEST/ref_sav_eval/`` from the accepted reviewed samples, with their final texts."""
    cfg = cfg or ExportConfig()
    out_dir, dest = Path(out_dir), Path(dest)
    sav_root = Path(load_plan(out_dir).sav_root)
    pairs = benchmark_rows(out_dir)
    samples = [s for s, _ in pairs]
    rows = {s.key: r for s, r in pairs}
    bench = dest / BENCH_DIR
    _prepare_bench_dir(bench)
    result = BenchmarkExport(dir=bench)
    by_video: dict[str, list[ValidatedSample]] = defaultdict(list)
    for s in samples:
        by_video[s.video_id].append(s)

    meta: dict[str, Any] = {}
    mask_dict: dict[str, list[dict[str, Any] | None]] = {}
    annotations: dict[str, dict[str, Any]] = {}
    next_anno = 0
    for video_id in progress(sorted(by_video), "benchmark videos"):
        group = by_video[video_id]
        first = rows[group[0].key]
        anns = {p: load_annotation(sav_root / p, video_id)
                for p in sorted({rows[s.key]["anno_path"] for s in group})}
        lengths = {p: len(a.masklet) for p, a in anns.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"{video_id}: annotation files disagree on the number of annotated "
                             f"frames: {lengths}")
        some = next(iter(anns.values()))
        height, width, n_ann = some.height, some.width, len(some.masklet)
        frames = [f * ANNOTATION_STRIDE for f in range(n_ann)]
        if frames and frames[-1] >= first["video_frame_count"]:
            raise ValueError(f"{video_id}: annotated frame {frames[-1]} is beyond the video's "
                             f"{first['video_frame_count']} frames")
        expressions: dict[str, dict[str, Any]] = {}
        for ordinal, sample in enumerate(group):
            row = rows[sample.key]
            ann = anns[row["anno_path"]]
            k = row["masklet_index"]
            if k >= ann.masklet_num or ann.masklet_id[k] != sample.masklet_id:
                raise ValueError(f"{sample.key}: {row['anno_path']} has no masklet id "
                                 f"{sample.masklet_id} at index {k}")
            entry = _mask_entry(ann, k)
            if all(m is None for m in entry):
                result.warnings.append(f"{sample.key}: never visible, left out")
                continue
            anno_id = next_anno
            texts: list[tuple[str, int]] = []
            long = compose_long(cfg.long_expression, sample.object_caption,
                                sample.scene_caption, sample.video_caption)
            if not sample.long_accepted:
                pass  # people kept the object for its short expressions only
            elif long is None:
                result.warnings.append(f"{sample.key}: no final {cfg.long_expression} text, "
                                       "long expression left out")
            else:
                texts.append((long, LONG_TYPE))
            texts += [(s.strip(), SHORT_TYPE) for s in sample.short_expressions if s.strip()]
            if not texts:
                result.warnings.append(f"{sample.key}: no expression at all, left out")
                continue
            next_anno += 1
            for text, type_id in texts:
                expressions[str(len(expressions))] = {
                    "exp": text, "anno_id": [anno_id], "obj_id": [ordinal], "type_id": type_id}
                result.long_expressions += type_id == LONG_TYPE
                result.short_expressions += type_id == SHORT_TYPE
            mask_dict[str(anno_id)] = entry
            annotations[str(anno_id)] = {
                "video_id": video_id, "masklet_type": sample.masklet_type,
                "masklet_id": sample.masklet_id, "masklet_index": k,
                "anno_path": row["anno_path"], "obj_id": ordinal}
            result.objects += 1
        if not expressions:
            continue
        _write_frames(sav_root / first["video_path"], frames,
                      bench / VIDEOS_DIR / video_id, video_id=video_id, height=height,
                      width=width, frame_count=first["video_frame_count"],
                      quality=cfg.jpeg_quality, backend=backend)
        meta[video_id] = {"frames": [frame_name(f) for f in frames], "height": height,
                          "width": width, "expressions": expressions}
        result.videos += 1
        result.frames += len(frames)

    write_atomic(bench / META_FILE, _dump({"videos": meta}))
    write_atomic(bench / MASK_FILE, _dump(mask_dict))
    manifest = {"long_expression": cfg.long_expression, "sav_root": str(sav_root),
                "annotations": annotations}
    write_atomic(bench / MANIFEST_FILE, json.dumps(manifest, indent=1).encode())
    return result


def export_sa2va(out_dir: str | Path, dest: str | Path, part: Part = "all",
                 cfg: ExportConfig | None = None, layout: LayoutName | str = LayoutName.flat,
                 exclude_chunks: list[str] | None = None,
                 ) -> tuple[TrainExport | None, BenchmarkExport | None]:
    where = layout_for(layout, dest)
    train = export_train(out_dir, where, cfg, exclude_chunks) \
        if part in ("train", "all") else None
    bench = export_benchmark(out_dir, where.bench_parent, cfg) \
        if part in ("benchmark", "all") else None
    return train, bench
