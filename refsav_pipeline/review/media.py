"""Review media, rendered lazily per video and cached on disk under ``<out>/review/media/``.

Opening a sample decodes only its video's annotated frames (one pass, shared by the video's
benchmark objects, which are adjacent in review order) and writes, per object: every annotated
frame with the object outlined just outside its mask (the scrubber and the 6 fps clip), so each
object pixel keeps its true colour (colour is an acceptance criterion); the same frames with a
translucent tint, for the switch that is off by default; the 8 sampled frames with the yellow
boxes the video-level model saw; and the max-area frame with the yellow contour.
A finished object folder is renamed into place whole, so readers never see half of one.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
from pydantic import BaseModel

from refsav_pipeline.pipeline.plan import load_plan
from refsav_pipeline.records import SampleKey
from refsav_pipeline.render import box_image, contour_image, encode_jpeg
from refsav_pipeline.review.paths import media_dir
from refsav_pipeline.review.select import BenchmarkSample
from refsav_pipeline.sav.decode import decode_frames
from refsav_pipeline.sav.frames import boxes_at, decode_mask
from refsav_pipeline.sav.masklets import load_annotation, masklets_of
from refsav_pipeline.sav.schema import ANNOTATION_STRIDE
from refsav_pipeline.sav.synth import write_mp4

DISPLAY_SIDE = 960
OVERLAY_RGB = (0, 190, 255)
OVERLAY_ALPHA = 0.45
OUTLINE_RGB = (255, 214, 0)
OUTLINE_PX = 3  # ring width outside the mask; its outermost pixel is dark, for contrast
CLIP_FPS = 6  # annotated frames are 6 fps
INDEX_FILE = "media.json"
MEDIA_FORMAT = "v2"  # bump when what is drawn changes: old caches are then re-rendered


class SampleMedia(BaseModel):
    """Paths (absolute) of one object's review images; frame numbers are 24 fps indices."""

    frames: list[int]  # annotated video frames, scrubber order
    overlays: list[str]  # one per frame: outline only, object pixels untouched
    tinted: list[str] = []  # one per frame: translucent tint (switched off by default)
    sampled: list[tuple[str, str]]  # (path, caption) of the boxed frames, in time order
    max_area: str
    max_area_frame: int
    clip: str | None = None


def object_dir(out_dir: str | Path, key: SampleKey) -> Path:
    video_id, masklet_type, masklet_id = key
    return media_dir(out_dir) / MEDIA_FORMAT / video_id / f"{masklet_type}-{masklet_id}"


def outline(frame: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A ring drawn just outside the mask: every object pixel keeps its true colour."""
    kernel = np.ones((3, 3), np.uint8)
    m = mask.astype(np.uint8)
    inner = cv2.dilate(m, kernel, iterations=OUTLINE_PX - 1).astype(bool)
    outer = cv2.dilate(m, kernel, iterations=OUTLINE_PX).astype(bool)
    out = frame.copy()
    out[outer & ~inner] = (0, 0, 0)
    out[inner & ~mask] = OUTLINE_RGB
    return out


def overlay(frame: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Translucent tint plus the outline: easier to find a small object, but the tint changes
    its colour, so the app shows it only when switched on."""
    out = frame.astype(np.float32)
    out[mask] = (1 - OVERLAY_ALPHA) * out[mask] + OVERLAY_ALPHA * np.array(OVERLAY_RGB)
    return outline(out.astype(np.uint8), mask)


def _display_size(width: int, height: int) -> tuple[int, int]:
    scale = min(1.0, DISPLAY_SIDE / max(width, height))
    # even sides: the H.264 clip is yuv420p
    return max(2, round(width * scale) // 2 * 2), max(2, round(height * scale) // 2 * 2)


class MediaCache:
    """Renders on first request; one lock per video so concurrent sessions decode once."""

    def __init__(self, out_dir: str | Path, sav_root: str | Path | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.sav_root = Path(sav_root) if sav_root else Path(load_plan(out_dir).sav_root)
        self._locks: dict[str, threading.Lock] = defaultdict(threading.Lock)
        self._guard = threading.Lock()

    def get(self, sample: BenchmarkSample, video_samples: list[BenchmarkSample]) -> SampleMedia:
        """Media of ``sample``; renders every object of ``video_samples`` (same video) if the
        sample's folder is missing."""
        cached = self._load(sample.key)
        if cached is not None:
            return cached
        with self._guard:
            lock = self._locks[sample.video_id]
        with lock:
            cached = self._load(sample.key)
            if cached is None:
                todo = [s for s in video_samples if self._load(s.key) is None]
                self._render_video(todo or [sample])
                cached = self._load(sample.key)
        if cached is None:
            raise RuntimeError(f"media for {sample.key} was not written")
        return cached

    def cached(self, key: SampleKey) -> SampleMedia | None:
        """The media of ``key`` if already rendered (never renders)."""
        return self._load(key)

    def render_later(self, sample: BenchmarkSample, video_samples: list[BenchmarkSample]
                     ) -> None:
        """Render in the background (errors surface when the sample is opened)."""

        def work() -> None:
            # an error is shown as "media unavailable" when the sample is opened
            with contextlib.suppress(Exception):
                self.get(sample, video_samples)

        threading.Thread(target=work, name=f"media-{sample.video_id}", daemon=True).start()

    def _load(self, key: SampleKey) -> SampleMedia | None:
        index = object_dir(self.out_dir, key) / INDEX_FILE
        if not index.is_file():
            return None
        return SampleMedia.model_validate_json(index.read_text())

    def _render_video(self, samples: list[BenchmarkSample]) -> None:
        first = samples[0]
        masklets = {}
        for anno_path in sorted({s.anno_path for s in samples}):
            ann = load_annotation(self.sav_root / anno_path, first.video_id)
            file_type = "auto" if anno_path.endswith("_auto.json") else "manual"
            for m in masklets_of(ann, file_type):
                masklets[(m.video_id, m.type, m.masklet_id)] = m
        n_annotated = max(len(masklets[s.key].rles) for s in samples if s.key in masklets)
        wanted = [f * ANNOTATION_STRIDE for f in range(n_annotated)
                  if f * ANNOTATION_STRIDE < first.video_frame_count]
        decoded = decode_frames(self.sav_root / first.video_path, wanted,
                                video_id=first.video_id).frames
        size = _display_size(first.width, first.height)
        frames = {i: cv2.resize(f, size, interpolation=cv2.INTER_AREA)
                  for i, f in decoded.items()}
        for s in samples:
            m = masklets.get(s.key)
            if m is None:
                raise RuntimeError(f"{s.anno_path} has no masklet {s.masklet_id}")
            self._render_object(s, m, frames, wanted, size)

    def _render_object(self, s: BenchmarkSample, m, frames: dict[int, np.ndarray],
                       wanted: list[int], size: tuple[int, int]) -> None:
        final = object_dir(self.out_dir, s.key)
        tmp = final.with_name(f".{final.name}.tmp-{threading.get_ident()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        sx, sy = size[0] / s.width, size[1] / s.height

        def mask_at(vf: int) -> np.ndarray:
            full = decode_mask(m, vf).astype(np.uint8)
            return cv2.resize(full, size, interpolation=cv2.INTER_NEAREST).astype(bool)

        def write(name: str, image: np.ndarray) -> str:
            (tmp / name).write_bytes(encode_jpeg(image, max_side=DISPLAY_SIDE, quality=85))
            return str(final / name)

        overlays, tinted, shown, clip_frames = [], [], [], []
        for vf in wanted:
            if vf // ANNOTATION_STRIDE >= len(m.rles):
                continue
            mask = mask_at(vf)
            image = outline(frames[vf], mask)
            overlays.append(write(f"outline_{vf:05d}.jpg", image))
            tinted.append(write(f"tint_{vf:05d}.jpg", overlay(frames[vf], mask)))
            shown.append(vf)
            clip_frames.append(image)
        sampled = []
        boxes = boxes_at(m, list(s.sampled_frames))
        for k, vf in enumerate(s.sampled_frames):
            x, y, w, h = boxes[vf]
            box = (round(x * sx), round(y * sy), max(1, round(w * sx)), max(1, round(h * sy)))
            sampled.append((write(f"sampled_{vf:05d}.jpg", box_image(frames[vf], box)),
                            f"{k + 1}/{len(s.sampled_frames)} · frame {vf}"))
        best = contour_image(frames[s.max_area_frame], mask_at(s.max_area_frame))
        max_path = write("max_area.jpg", best)
        clip = None
        try:
            write_mp4(tmp / "clip.mp4", clip_frames, fps=CLIP_FPS, gop=CLIP_FPS)
            clip = str(final / "clip.mp4")
        except Exception:  # noqa: BLE001 - the clip is a convenience; frames still work
            clip = None
        media = SampleMedia(frames=shown, overlays=overlays, tinted=tinted, sampled=sampled,
                            max_area=max_path,
                            max_area_frame=s.max_area_frame, clip=clip)
        (tmp / INDEX_FILE).write_text(json.dumps(media.model_dump()))
        try:
            tmp.rename(final)
        except OSError:  # another process finished the same object first
            shutil.rmtree(tmp, ignore_errors=True)

