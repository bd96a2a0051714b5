"""The reference server's eyes: the video answer names the object the yellow box was drawn
around, even when a neighbour covers more of the box than the object itself."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from refsav_pipeline.colors import COLOR_TERMS, OBJECT_PALETTE, color_indices
from refsav_pipeline.config import YELLOW
from refsav_pipeline.reference.server import answer
from refsav_pipeline.reference.testing import background, blob_mask, to_jpeg
from refsav_pipeline.reference.vision import decode_jpeg, see_box
from refsav_pipeline.render import box_image

Box = tuple[int, int, int, int]


def _boxed_scene(obj: str, neighbour: str, x: int, ncx: int, ncy: int
                 ) -> tuple[np.ndarray, Box]:
    """A thin diagonal ``obj`` (a stick: its box is mostly empty) boxed in yellow, on top of a
    big ``neighbour`` blob that fills most of the box and reaches far out of it."""
    frame = background(240, 320, seed=x)
    frame[blob_mask(240, 320, ncx, ncy, 70)] = OBJECT_PALETTE[neighbour]
    stick = np.zeros((240, 320), np.uint8)
    cv2.line(stick, (x, 95), (x + 50, 145), 255, 6)
    frame[stick > 0] = OBJECT_PALETTE[obj]
    ys, xs = np.nonzero(stick)
    box = (int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
           int(ys.max() - ys.min() + 1))
    return decode_jpeg(to_jpeg(box_image(frame, box, YELLOW, 3, 4))), box


@pytest.mark.parametrize("obj,neighbour,x,ncx,ncy", [
    ("red", "blue", 130, 200, 130), ("magenta", "green", 150, 130, 105),
    ("white", "orange", 140, 170, 190),
])
def test_box_names_the_boxed_object_not_the_bigger_neighbour(
        obj: str, neighbour: str, x: int, ncx: int, ncy: int) -> None:
    rgb, (bx, by, bw, bh) = _boxed_scene(obj, neighbour, x, ncx, ncy)
    # the trap is real: inside the box, the neighbour's colour is the most frequent one
    counts = np.bincount(color_indices(rgb[by:by + bh, bx:bx + bw]).ravel(),
                         minlength=len(COLOR_TERMS))
    assert counts[COLOR_TERMS.index(neighbour)] > counts[COLOR_TERMS.index(obj)]
    seen = see_box(rgb)
    assert seen is not None and seen.color == obj


def test_video_answer_names_the_boxed_object() -> None:
    frames = [to_jpeg(_boxed_scene("red", "blue", 110 + 10 * i, 200, 130)[0])
              for i in range(8)]
    kind, text, _ = answer("Describe the motion.", frames)
    assert kind == "video"
    assert text == "The red object moves right across the video."
