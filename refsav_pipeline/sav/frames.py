"""Choosing a masklet's frames from its compressed RLEs alone: no mask or video decoding.

Areas and boxes come straight from the run-length counts (pycocotools), so a whole video's
masklets are planned before a single frame is decoded, and only the union of the chosen frames
is decoded afterwards.
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils
from pydantic import BaseModel, ConfigDict

from refsav_pipeline.errors import RecordError
from refsav_pipeline.sav.masklets import Masklet
from refsav_pipeline.sav.rle import rle_pixel_counts
from refsav_pipeline.sav.schema import ANNOTATION_STRIDE

Box = tuple[int, int, int, int]  # x, y, w, h in pixels


class FrameChoice(BaseModel):
    """The frames one masklet is shown at; frame numbers are 24 fps video frame indices."""

    model_config = ConfigDict(frozen=True)

    max_area_frame: int
    max_area: int
    first_visible_frame: int
    last_visible_frame: int
    visible_frames: int  # annotated frames with a non-empty mask
    sampled_frames: tuple[int, ...]
    bboxes: dict[int, Box]  # video frame -> box, for the max-area frame and every sampled frame

    def needed_frames(self) -> set[int]:
        return {self.max_area_frame, *self.sampled_frames}


def check_rle_sizes(masklet: Masklet) -> None:
    expected = [masklet.height, masklet.width]
    for f, rle in enumerate(masklet.rles):
        if list(rle["size"]) != expected:
            raise RecordError(
                "rle_size",
                f"RLE at annotated frame {f} has size {list(rle['size'])}, "
                f"video is {expected} (HxW)",
                video_id=masklet.video_id,
                masklet_id=masklet.masklet_id,
            )


def check_rle_counts(masklet: Masklet, annotated_frames: list[int]) -> None:
    """The RLEs at these annotated frames cover exactly H*W pixels (so pycocotools can decode
    them, and their areas and boxes mean something)."""
    frames = sorted(set(annotated_frames))
    pixels = rle_pixel_counts([masklet.rles[f]["counts"] for f in frames])
    expected = masklet.height * masklet.width
    for f, n in zip(frames, pixels.tolist(), strict=True):
        if n != expected:
            what = "are malformed" if n < 0 else f"cover {n} pixels"
            raise RecordError(
                "bad_rle", f"RLE counts at annotated frame {f} {what}, not "
                f"{masklet.height}x{masklet.width}", video_id=masklet.video_id,
                masklet_id=masklet.masklet_id)


def uniform_sample(candidates: list[int], k: int) -> list[int]:
    """``k`` items spread evenly over ``candidates`` with both ends kept; all if fewer exist."""
    if len(candidates) <= k:
        return list(candidates)
    if k == 1:
        return [candidates[0]]
    positions = np.rint(np.linspace(0, len(candidates) - 1, k)).astype(int)
    return [candidates[p] for p in positions]


def choose_frames(masklet: Masklet, num_sampled: int = 8) -> FrameChoice:
    """Max-area frame (ties: earliest) and ``num_sampled`` frames over the visible span.

    The samples are spread evenly over the annotated frames where the object is visible, so
    every sampled frame has a box to draw; when the object is visible throughout its span this
    is the same as uniform in time.
    """
    masklet.check()
    check_rle_sizes(masklet)
    rles = list(masklet.rles)
    areas = mask_utils.area(rles).astype(np.int64)
    visible = np.flatnonzero(areas > 0)
    if visible.size == 0:
        raise RecordError("empty_masklet", "mask is empty in every annotated frame",
                          video_id=masklet.video_id, masklet_id=masklet.masklet_id)
    best = int(np.argmax(areas))
    sampled = uniform_sample(visible.tolist(), num_sampled)
    check_rle_counts(masklet, [best, *sampled])
    bboxes = boxes_at(masklet, [Masklet.video_frame(f) for f in sorted({best, *sampled})])
    return FrameChoice(
        max_area_frame=Masklet.video_frame(best),
        max_area=int(areas[best]),
        first_visible_frame=Masklet.video_frame(int(visible[0])),
        last_visible_frame=Masklet.video_frame(int(visible[-1])),
        visible_frames=int(visible.size),
        sampled_frames=tuple(Masklet.video_frame(f) for f in sampled),
        bboxes=bboxes,
    )


def boxes_at(masklet: Masklet, video_frames: list[int]) -> dict[int, Box]:
    """``[x, y, w, h]`` of the object at annotated video frames, from the RLE counts alone."""
    boxes = mask_utils.toBbox([masklet.rles[_annotated(masklet, f)] for f in video_frames])
    return {f: tuple(int(round(v)) for v in box)
            for f, box in zip(video_frames, boxes, strict=True)}


def _annotated(masklet: Masklet, video_frame: int) -> int:
    f, rest = divmod(video_frame, ANNOTATION_STRIDE)
    if rest or not 0 <= f < len(masklet.rles):
        raise ValueError(f"video frame {video_frame} is not an annotated frame of this masklet")
    return f


def decode_mask(masklet: Masklet, video_frame: int) -> np.ndarray:
    """The object's binary mask (H, W, bool) at an annotated video frame."""
    f = _annotated(masklet, video_frame)
    check_rle_counts(masklet, [f])
    return mask_utils.decode(masklet.rles[f]).astype(bool)
