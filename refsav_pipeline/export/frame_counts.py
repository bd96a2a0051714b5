"""Does Sa2VA's training loader see as many frames as the annotation has masks?

Both of Sa2VA's Ref-SAV training loaders read every frame with ``cv2.VideoCapture`` and keep
every 4th (SA-V annotates 24 fps video at 6 fps). The current one asserts that this equals the
number of annotated frames (``len(masklet)``), outside any ``try``: one entry where the decoder
disagrees with the annotation stops a training run. The older one indexes the frames with mask
positions and fails when the video is short. So each entry is checked with the same decoder.

Counting uses ``grab()``: the same demux and decode as ``read()`` without the colour
conversion. Counts are cached by file path, size and mtime, so a re-export decodes nothing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2

from refsav_pipeline.pipeline.plan import write_atomic
from refsav_pipeline.sav.schema import ANNOTATION_STRIDE


def cv2_frame_count(video: Path) -> int:
    """Frames ``cv2.VideoCapture`` delivers, read to the end (0 if it cannot open the file)."""
    cap = cv2.VideoCapture(str(video))
    try:
        if not cap.isOpened():
            return 0
        n = 0
        while cap.grab():
            n += 1
        return n
    finally:
        cap.release()


def every_4th(frames: int) -> int:
    """``len(frames[::4])``: what the loader compares with the masklet."""
    return len(range(0, frames, ANNOTATION_STRIDE))


def masklet_frames(annotation: Path) -> int:
    """``len(masklet)`` of an SA-V annotation JSON: its annotated frames."""
    return len(json.loads(annotation.read_bytes())["masklet"])


@dataclass(frozen=True)
class EntryFiles:
    key: str  # the training JSON's entry key
    video: Path  # absolute, as the loader resolves it
    annotation: Path


class CountCache:
    """``{path: [size, mtime_ns, count]}`` in one JSON file; a changed file is counted again."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.data: dict[str, list[int]] = {}
        if path is not None and path.is_file():
            try:
                self.data = json.loads(path.read_bytes())
            except ValueError:
                self.data = {}  # a damaged cache only costs a recount

    def get(self, file: Path, count: Callable[[Path], int]) -> int:
        st = file.stat()
        key = str(file.resolve())
        hit = self.data.get(key)
        if hit is not None and hit[:2] == [st.st_size, st.st_mtime_ns]:
            return hit[2]
        n = count(file)
        self.data[key] = [st.st_size, st.st_mtime_ns, n]
        return n

    def save(self) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, json.dumps(self.data, sort_keys=True).encode())


def _count(file: Path, cache: CountCache) -> int | str:
    """The file's count, or why it has none (missing, unreadable)."""
    counter = cv2_frame_count if file.suffix.lower() == ".mp4" else masklet_frames
    try:
        return cache.get(file, counter)
    except FileNotFoundError:
        return f"{file} does not exist"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{file.name} is not a readable SA-V annotation ({exc})"


def verify_frame_counts(entries: Iterable[EntryFiles], cache_path: Path | None = None,
                        workers: int = 0) -> dict[str, str]:
    """Entry key → why Sa2VA's loader would fail on it, for every entry that fails.

    Each file is counted once (a video's manual and auto entries share it). ``workers``
    threads count at once (0: one per CPU); OpenCV releases the GIL while it decodes.
    """
    entries = list(entries)
    cache = CountCache(cache_path)
    files = sorted({f for e in entries for f in (e.video, e.annotation)})
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        counts = dict(zip(files, pool.map(lambda f: _count(f, cache), files), strict=True))
    cache.save()
    failed: dict[str, str] = {}
    for e in entries:
        frames, masks = counts[e.video], counts[e.annotation]
        if isinstance(frames, str) or isinstance(masks, str):
            failed[e.key] = frames if isinstance(frames, str) else str(masks)
        elif frames == 0:
            failed[e.key] = f"cv2.VideoCapture reads no frame of {e.video.name}"
        elif every_4th(frames) != masks:
            failed[e.key] = (f"cv2.VideoCapture reads {frames} frames of {e.video.name}, every "
                             f"4th is {every_4th(frames)}, but {e.annotation.name} has {masks} "
                             "annotated frames")
    return failed
