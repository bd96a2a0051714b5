"""The reference server's fast yellow-highlight test gives the float HSV definition's answer."""

from __future__ import annotations

import numpy as np

from refsav_pipeline.colors import (
    _highlight_candidates,
    highlight_mask,
    highlight_mask_reference,
)
from refsav_pipeline.reference.testing import background, blob_mask, contour_frame, to_jpeg
from refsav_pipeline.reference.vision import decode_jpeg


def test_highlight_mask_equals_definition_on_every_colour() -> None:
    g, b = np.meshgrid(np.arange(256, dtype=np.uint8), np.arange(256, dtype=np.uint8),
                       indexing="ij")
    found = 0
    for r in range(256):  # all 2^24 RGB triples, one red value at a time
        img = np.stack([np.full_like(g, r), g, b], axis=-1)
        ref = highlight_mask_reference(img)
        assert not (ref & ~_highlight_candidates(img)).any(), r  # pre-test misses none
        assert np.array_equal(highlight_mask(img), ref), r
        found += int(ref.sum())
    assert found > 0


def test_highlight_mask_on_a_prompt_image() -> None:
    bg = background(120, 160, 0)
    mask = blob_mask(120, 160, 80, 60, 25)
    frame = bg.copy()
    frame[mask] = (245, 140, 20)  # orange: the palette colour nearest to yellow
    img = decode_jpeg(to_jpeg(contour_frame(frame, mask)))
    m = highlight_mask(img)
    assert m.dtype == bool and m.shape == img.shape[:2] and m.any()
    assert np.array_equal(m, highlight_mask_reference(img))
    assert not highlight_mask(bg).any()
