"""The pictures of a run's row as people see them: the object crop and the yellow contour at
its max-area frame, and its sampled frames with their boxes side by side in one strip.

The run report's gallery and the dataset export's image columns both come from here, so a
published image is byte for byte the one the report shows. The drawing is ``render.py``'s
(the images the models saw), downscaled for display.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from refsav_pipeline.config import PipelineConfig
from refsav_pipeline.errors import RecordError
from refsav_pipeline.progress import progress
from refsav_pipeline.render import Renderer, encode_jpeg
from refsav_pipeline.sav.decode import decode_frames
from refsav_pipeline.sav.frames import boxes_at, decode_mask
from refsav_pipeline.sav.masklets import Masklet, load_annotation, masklets_of

STRIP_HEIGHT = 120
"""Pixel height of each sampled frame in the strip."""
DISPLAY_JPEG = {"crop": (320, 85), "contour": (480, 85), "strip": (2048, 80)}
"""Longest side (pixels) and JPEG quality of each image."""


@dataclass
class VideoImages:
    """The images of one video's rows, in the rows' order; none if the video could not be read."""

    video_id: str
    rows: list[dict[str, Any]]
    images: list[dict[str, bytes]] = field(default_factory=list)  # DISPLAY_JPEG name -> JPEG
    problem: str | None = None


def row_jpegs(row: dict[str, Any], masklet: Masklet, frames: dict[int, np.ndarray],
              renderer: Renderer) -> dict[str, bytes]:
    """Crop, contour and strip of one row, from its video's decoded frames."""
    best = int(row["max_area_frame"])
    mask = decode_mask(masklet, best)
    box = tuple(int(v) for v in row["bbox"])
    tiles = []
    for f, b in boxes_at(masklet, [int(f) for f in row["sampled_frames"]]).items():
        tile = renderer.boxed(frames[f], b)
        scale = STRIP_HEIGHT / tile.shape[0]
        tiles.append(cv2.resize(tile, (max(1, round(tile.shape[1] * scale)), STRIP_HEIGHT),
                                interpolation=cv2.INTER_AREA))
        tiles.append(np.full((STRIP_HEIGHT, 4, 3), 255, np.uint8))
    images = {"crop": renderer.crop(frames[best], mask, box),
              "contour": renderer.contour(frames[best], mask), "strip": np.hstack(tiles[:-1])}
    return {name: encode_jpeg(image, *DISPLAY_JPEG[name]) for name, image in images.items()}


def video_images(rows: list[dict[str, Any]], sav_root: Path, cfg: PipelineConfig,
                 label: str) -> Iterator[VideoImages]:
    """The images of ``rows`` (ok rows of a run), one video at a time in video-id order, each
    video decoded once. A video or annotation that cannot be read is that video's ``problem``;
    the other videos go on."""
    renderer = Renderer(cfg.render)
    by_video: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_video[r["video_id"]].append(r)
    for video_id in progress(sorted(by_video), label):
        group = by_video[video_id]
        try:
            needed = {int(f) for r in group for f in [r["max_area_frame"], *r["sampled_frames"]]}
            decoded = decode_frames(sav_root / group[0]["video_path"], needed, video_id=video_id,
                                    backend=cfg.decode.backend).frames
            anns = {p: load_annotation(sav_root / p, video_id)
                    for p in {r["anno_path"] for r in group}}
        except (RecordError, OSError) as exc:
            yield VideoImages(video_id, group, problem=str(exc))
            continue
        images = [row_jpegs(r, masklets_of(anns[r["anno_path"]], r["masklet_type"])
                            [int(r["masklet_index"])], decoded, renderer) for r in group]
        yield VideoImages(video_id, group, images)
