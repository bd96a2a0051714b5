"""``refsav export check``: validate an export against what Sa2VA's loaders assume.

Every problem here is a way Sa2VA's training or evaluation would crash or, worse, silently score
against the wrong mask: a frame that is not there, a mask of another size, an anno id that
points nowhere, frames that sort out of order, an exp id its evaluation cannot split back, a
training path that does not resolve under the SA-V root, a video whose ``cv2`` frames (every
4th) do not match its masklet. Warnings are what makes a result meaningless rather than a crash
(a benchmark without long or short expressions scores NaN there) or what could not be verified;
``strict`` turns them into failures.

Both the flat export folder and Sa2VA's ``data/`` tree (``layout``) are recognised.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from refsav_pipeline.export.frame_counts import EntryFiles, verify_frame_counts
from refsav_pipeline.export.layout import BENCH_DIR, TRAIN_FILE, LayoutName, detect_layout
from refsav_pipeline.export.sa2va import (
    LONG_TYPE,
    MASK_FILE,
    META_FILE,
    SHORT_TYPE,
    VIDEOS_DIR,
)

MAX_PER_KIND = 20
"""Problems listed per kind before the rest are only counted (a broken export repeats itself)."""


@dataclass(frozen=True)
class Problem:
    kind: str  # short, stable: what a test or a script matches on
    where: str  # file and position
    message: str

    def __str__(self) -> str:
        return f"[{self.kind}] {self.where}: {self.message}"


@dataclass
class CheckReport:
    layout: LayoutName
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)

    def passed(self, strict: bool = False) -> bool:
        return not self.problems and not (strict and self.warnings)


class _Collector:
    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []
        self.counts: dict[str, int] = {}

    def warn(self, kind: str, where: str, message: str) -> None:
        self.warnings.append(Problem(kind, where, message))

    def add(self, kind: str, where: str, message: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if self.counts[kind] <= MAX_PER_KIND:
            self.problems.append(Problem(kind, where, message))
        elif self.counts[kind] == MAX_PER_KIND + 1:
            self.problems.append(Problem(kind, where, "… further problems of this kind not "
                                         "listed"))


def _load_json(path: Path, c: _Collector) -> Any:
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        c.add("bad_json", path.name, f"cannot be read as JSON: {exc}")
        return None


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(v, str) and v.strip() for v in value)


def loader_paths(root: Path, rel: str) -> dict[str, Path]:
    """Where each of Sa2VA's training loaders opens ``rel`` (a path from the training JSON).

    The older loader joins it to its SA-V folder as it is. The current one does the same and
    then, if the path has the folder before ``sav_train`` repeated right after it
    (``sav_000/sav_train/sav_000/``), removes the first of the two.
    """
    joined = (root / rel).as_posix()
    parts = joined.split("/")
    current = joined
    hits = [i for i, part in enumerate(parts) if part == "sav_train"]
    if len(hits) == 1 and 0 < hits[0] < len(parts) - 1 \
            and parts[hits[0] - 1] == parts[hits[0] + 1]:
        current = "/".join(parts[:hits[0] - 1] + parts[hits[0]:])
    return {"older loader": Path(joined), "current loader": Path(current)}


def check_train(path: Path, c: _Collector, sav_root: Path | None, workers: int = 0) -> set[str]:
    """Checks ``Ref-SAV.json``; returns the video ids it covers."""
    data = _load_json(path, c)
    videos: set[str] = set()
    if data is None:
        return videos
    if not isinstance(data, dict) or not data:
        c.add("train_schema", path.name, "top level must be a non-empty object")
        return videos
    no_short = 0
    to_count: list[EntryFiles] = []
    for key, entry in data.items():
        where = f"{path.name}[{key!r}]"
        if not isinstance(entry, dict):
            c.add("train_schema", where, "entry must be an object")
            continue
        paths = {}
        for name in ("video_path", "anno_path"):
            value = entry.get(name)
            if not isinstance(value, str) or not value:
                c.add("train_schema", where, f"{name} missing or not a string")
                continue
            p = Path(value)
            if p.is_absolute() or ".." in p.parts:
                c.add("train_path", where, f"{name} {value!r} must be relative to the SA-V root "
                      "(Sa2VA joins it to its SA-V folder)")
            paths[name] = p
        if "video_path" in paths:
            videos.add(paths["video_path"].stem)
        objects = entry.get("objects")
        if not isinstance(objects, dict) or not objects:
            c.add("train_schema", where, "objects missing or empty")
            objects = {}
        for index, obj in objects.items():
            owhere = f"{where}.objects[{index!r}]"
            if not (isinstance(index, str) and index.isdigit()):
                c.add("train_schema", owhere, "object key must be the masklet index (digits)")
            if not isinstance(obj, dict) or not isinstance(obj.get("formated"), str) \
                    or not obj["formated"].strip():
                c.add("train_schema", owhere, "formated (the long expression) missing or empty")
            elif "short_caps" not in obj:
                no_short += 1
            elif not _is_str_list(obj["short_caps"]):
                c.add("train_schema", owhere, "short_caps must be a non-empty list of strings")
        if sav_root is not None and len(paths) == 2 \
                and _check_train_files(sav_root, paths, objects, where, c):
            to_count.append(EntryFiles(key, sav_root / paths["video_path"],
                                       sav_root / paths["anno_path"]))
    if no_short:
        c.warn("no_short_caps", path.name, f"{no_short} objects have no short_caps: Sa2VA's "
               "older loader fails on them in mode 'short' or 'long_short'")
    if sav_root is None:
        c.warn("train_unverified", path.name, "no SA-V root given (--sav-root): training paths "
               "and frame counts are not verified")
    for key, why in verify_frame_counts(to_count, workers=workers).items():
        c.add("train_frames", f"{path.name}[{key!r}]", f"{why}: Sa2VA's loader asserts they "
              "are equal")
    return videos


def _check_train_files(sav_root: Path, paths: dict[str, Path], objects: dict, where: str,
                       c: _Collector) -> bool:
    """Files exist where both loaders look and indices fit; True if frames can be counted."""
    found = True
    for name, rel in paths.items():
        for loader, full in loader_paths(sav_root, rel.as_posix()).items():
            if not full.is_file():
                c.add("train_missing_file", where, f"{name}: {full} does not exist (as the "
                      f"{loader} resolves {rel.as_posix()!r})")
                found = False
                break
    if not found:
        return False
    anno = sav_root / paths["anno_path"]
    try:
        num = int(json.loads(anno.read_bytes())["masklet_num"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        c.add("train_missing_file", where, f"{anno} is not an SA-V annotation ({exc})")
        return False
    for index in objects:
        if isinstance(index, str) and index.isdigit() and int(index) >= num:
            c.add("train_index", where, f"object index {index} but {anno.name} has only {num} "
                  "masklets")
    return True


def _decode(rle: Any, where: str, size: tuple[int, int], c: _Collector) -> np.ndarray | None:
    if not (isinstance(rle, dict) and isinstance(rle.get("counts"), str)
            and isinstance(rle.get("size"), list) and len(rle["size"]) == 2):
        c.add("bad_rle", where, "not a COCO RLE {size: [H, W], counts: str}")
        return None
    if tuple(rle["size"]) != size:
        c.add("mask_size", where, f"mask is {rle['size'][0]}x{rle['size'][1]} (HxW), "
              f"frame is {size[0]}x{size[1]}")
        return None
    try:
        mask = mask_utils.decode(rle)
    except Exception as exc:  # pycocotools raises plain Exceptions on bad counts
        c.add("bad_rle", where, f"RLE does not decode: {exc}")
        return None
    if mask.shape != size or int(mask_utils.area(rle)) != int(mask.sum()):
        c.add("bad_rle", where, "RLE counts do not cover the frame exactly")
        return None
    return mask


def check_benchmark(bench: Path, c: _Collector) -> set[str]:
    """Checks ``ref_sav_eval/``; returns its video ids."""
    meta_path, mask_path = bench / META_FILE, bench / MASK_FILE
    for p in (meta_path, mask_path):
        if not p.is_file():
            c.add("missing_file", str(p), "not found")
    if c.counts.get("missing_file"):
        return set()
    meta, masks = _load_json(meta_path, c), _load_json(mask_path, c)
    if meta is None or masks is None:
        return set()
    videos = meta.get("videos") if isinstance(meta, dict) else None
    if not isinstance(videos, dict) or not videos:
        c.add("meta_schema", META_FILE, "must be {\"videos\": {vid: …}} with at least one video")
        return set()
    if not isinstance(masks, dict):
        c.add("mask_schema", MASK_FILE, "must be an object {anno_id: [RLE or null per frame]}")
        return set(videos)
    used: dict[str, str] = {}  # anno_id -> video
    checked: set[str] = set()
    types: dict[int, int] = {}
    for vid, v in videos.items():
        where = f"{META_FILE}[{vid}]"
        if not isinstance(v, dict):
            c.add("meta_schema", where, "video entry must be an object")
            continue
        frames, height, width = v.get("frames"), v.get("height"), v.get("width")
        if not _is_str_list(frames):
            c.add("meta_schema", where, "frames must be a non-empty list of frame names")
            continue
        if not all(isinstance(x, int) and x > 0 for x in (height, width)):
            c.add("meta_schema", where, "height and width must be positive integers")
            continue
        if len(set(frames)) != len(frames):
            c.add("meta_frames", where, "frame names repeat")
        if frames != sorted(frames):
            c.add("meta_frames", where, "frames are not in sorted order: Sa2VA sorts them as "
                  "strings, so masks would be matched to the wrong frames")
        if not all(f.isdigit() for f in frames):
            c.add("meta_frames", where, "frame names must be 24 fps frame numbers")
        for name in frames:
            img = bench / VIDEOS_DIR / vid / f"{name}.jpg"
            try:
                with Image.open(img) as im:
                    if im.size != (width, height):
                        c.add("frame_size", str(img.relative_to(bench)),
                              f"image is {im.size[0]}x{im.size[1]}, meta says {width}x{height}")
            except FileNotFoundError:
                c.add("missing_frame", str(img.relative_to(bench)), "frame image does not exist")
            except OSError as exc:
                c.add("bad_frame", str(img.relative_to(bench)), f"not a readable image: {exc}")
        exps = v.get("expressions")
        if not isinstance(exps, dict) or not exps:
            c.add("meta_schema", where, "expressions missing or empty")
            continue
        for exp_id, e in exps.items():
            ewhere = f"{where}.expressions[{exp_id}]"
            if "_" in exp_id:
                c.add("meta_schema", ewhere, "exp id must not contain '_' (the evaluation splits "
                      "'{vid}_{exp}' on the last underscore)")
            if not isinstance(e, dict):
                c.add("meta_schema", ewhere, "expression must be an object")
                continue
            if not isinstance(e.get("exp"), str) or not e["exp"].strip():
                c.add("meta_schema", ewhere, "exp text missing or empty")
            if e.get("type_id") not in (LONG_TYPE, SHORT_TYPE) or isinstance(
                    e.get("type_id"), bool):
                c.add("type_id", ewhere, f"type_id {e.get('type_id')!r} is not 0 (long) or "
                      "1 (short)")
            else:
                types[e["type_id"]] = types.get(e["type_id"], 0) + 1
            anno_ids = e.get("anno_id")
            if not isinstance(anno_ids, list) or not anno_ids:
                c.add("meta_schema", ewhere, "anno_id must be a non-empty list")
                continue
            if "obj_id" in e and (not isinstance(e["obj_id"], list)
                                  or len(e["obj_id"]) != len(anno_ids)):
                c.add("meta_schema", ewhere, "obj_id must be a list as long as anno_id")
            for a in anno_ids:
                key = str(a)
                if used.setdefault(key, vid) != vid:
                    c.add("anno_shared", ewhere, f"anno_id {key} is also used by video "
                          f"{used[key]}")
                if key not in masks:
                    c.add("dangling_anno_id", ewhere, f"anno_id {key} has no entry in "
                          f"{MASK_FILE}")
                elif key not in checked:
                    checked.add(key)
                    _check_mask_entry(masks[key], key, frames, (height, width), c)
    for key in masks:
        if key not in used:
            c.add("orphan_mask", f"{MASK_FILE}[{key}]", "no expression refers to this anno_id")
    for type_id, name in ((LONG_TYPE, "long"), (SHORT_TYPE, "short")):
        if not types.get(type_id):
            c.warn(f"no_{name}", META_FILE, f"no {name} expression (type_id {type_id}): "
                   f"Sa2VA's Ref-SAV evaluation reports NaN for {name} and overall J&F")
    return set(videos)


def _check_mask_entry(entry: Any, key: str, frames: list[str], size: tuple[int, int],
                      c: _Collector) -> None:
    where = f"{MASK_FILE}[{key}]"
    if not isinstance(entry, list):
        c.add("mask_schema", where, "must be a list with one RLE or null per frame")
        return
    if len(entry) != len(frames):
        c.add("mask_frames", where, f"{len(entry)} masks for {len(frames)} frames")
    visible = 0
    for i, rle in enumerate(entry):
        if rle is None:
            continue
        fname = frames[i] if i < len(frames) else f"#{i}"
        mask = _decode(rle, f"{where}[{i}] (frame {fname})", size, c)
        visible += mask is not None and bool(mask.any())
    if visible == 0 and entry:
        c.add("empty_object", where, "the object is not visible in any frame")


def check_export(dest: str | Path, sav_root: str | Path | None = None,
                 workers: int = 0) -> CheckReport:
    """All problems and warnings of the export under ``dest``: a flat export folder (train
    JSON and/or ``ref_sav_eval/``) or a Sa2VA root with the ``data/`` tree. In the Sa2VA tree
    the SA-V root defaults to ``data/video_datas/sam_v_full``, where the loaders look."""
    layout = detect_layout(dest)
    c = _Collector()
    report = CheckReport(layout.name, c.problems, c.warnings)
    train, bench = layout.train_file, layout.bench_dir
    if not train.is_file() and not bench.is_dir():
        c.add("missing_file", str(dest), f"neither {TRAIN_FILE} nor {BENCH_DIR}/ found")
        return report
    if train.is_file():
        content = train.read_bytes() if layout.train_files[1:] else b""
        for other in layout.train_files[1:]:
            if not other.is_file() or other.read_bytes() != content:
                c.add("train_copy", str(other), f"must exist with the same content as "
                      f"{train.name} (older Sa2VA configs read this name)")
        if sav_root is None and layout.sav_link is not None:
            if layout.sav_link.is_dir():
                sav_root = layout.sav_link
            else:
                c.add("sav_link", str(layout.sav_link), "the SA-V root Sa2VA's configs join "
                      "training paths to is missing")
    train_videos = check_train(train, c, Path(sav_root) if sav_root else None, workers) \
        if train.is_file() else set()
    bench_videos = check_benchmark(bench, c) if bench.is_dir() else set()
    for vid in sorted(train_videos & bench_videos):
        c.add("leak", train.name, f"benchmark video {vid} is also in the training file")
    return report
