"""Colour naming used by the reference server: every palette colour keeps its name."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from refsav_pipeline.colors import (
    COLOR_TERMS,
    OBJECT_PALETTE,
    color_name,
    color_terms_in,
    dominant_color_name,
    highlight_mask,
)
from refsav_pipeline.reference.testing import (
    background,
    contour_frame,
    crop,
    masked_frame,
    object_frame,
    to_jpeg,
)
from refsav_pipeline.reference.vision import decode_jpeg, see_object, see_outlined


@pytest.mark.parametrize("name", sorted(OBJECT_PALETTE))
def test_palette_colour_named_as_its_key(name: str) -> None:
    assert color_name(OBJECT_PALETTE[name]) == name


@pytest.mark.parametrize("name", sorted(OBJECT_PALETTE))
def test_palette_colour_survives_jpeg_q90(name: str) -> None:
    frame, mask = object_frame(name, 160, 120, r=40)
    decoded = decode_jpeg(to_jpeg(masked_frame(frame, mask), quality=90))
    assert dominant_color_name(decoded[decoded.max(axis=2) > 40]) == name
    # The whole pipeline path: the crop of the object, and the yellow-outlined frame.
    assert see_object(decode_jpeg(to_jpeg(crop(frame, mask)))).color == name
    assert see_outlined(decode_jpeg(to_jpeg(contour_frame(frame, mask)))).color == name


def test_basic_terms() -> None:
    cases = {(255, 255, 0): "yellow", (0, 0, 0): "black", (128, 128, 128): "gray",
             (255, 255, 255): "white", (255, 182, 193): "pink", (120, 70, 20): "brown"}
    for rgb, name in cases.items():
        assert color_name(rgb) == name, rgb
    assert set(COLOR_TERMS) >= {color_name(c) for c in cases}


def test_yellow_highlight_not_confused_with_palette_or_background() -> None:
    for rgb in OBJECT_PALETTE.values():
        assert not highlight_mask(np.array([[rgb]], np.uint8)).any(), rgb
    assert not highlight_mask(background()).any()
    img = background()
    cv2.rectangle(img, (50, 50), (150, 120), (255, 255, 0), 3)
    m = highlight_mask(decode_jpeg(to_jpeg(img)))
    assert m[50, 100] and m[85, 50] and not m[85, 100]


def test_colour_terms_in_text() -> None:
    assert color_terms_in("A Red car next to a grey wall and a red sign.") == ["red", "gray"]
    assert color_terms_in("Nothing coloured here.") == []
