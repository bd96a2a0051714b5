"""What the offline reference "model" sees in an image: colour, place, yellow marks, motion.

Deterministic functions of the pixels, so captions expose upstream mistakes: a wrong crop names
the wrong colour, a wrong mask puts the object in the wrong place, reversed frames reverse the
motion. Used by ``reference_server``; kept separate so it can be tested without HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from refsav_pipeline.colors import (
    COLOR_TERMS,
    color_indices,
    dominant_color_name,
    highlight_mask,
)

NON_BLACK = 40
"""Max channel above which a pixel counts as object in a masked image (JPEG noise stays below)."""
MIN_PIXELS = 12
STILL_FRACTION = 0.05
"""Box-centre displacement, as a fraction of the image side, below which an object is still."""


def decode_jpeg(data: bytes) -> np.ndarray:
    """JPEG bytes → HxWx3 RGB uint8 (ValueError if undecodable)."""
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if arr is None:
        raise ValueError("undecodable image")
    return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)


def position_name(cx: float, cy: float, w: int, h: int) -> str:
    """3×3 grid name: "top left", "top", …, "center", …, "bottom right"."""
    col = ("left", "", "right")[min(2, int(3 * cx / max(w, 1)))]
    row = ("top", "", "bottom")[min(2, int(3 * cy / max(h, 1)))]
    return " ".join(p for p in (row, col) if p) or "center"


def has_highlight(rgb: np.ndarray, yellow: np.ndarray | None = None) -> bool:
    """True if the image carries a yellow contour or box (enough yellow pixels to be a line).

    ``yellow``: ``highlight_mask(rgb)`` if the caller has it already (it is reused by
    ``see_outlined``, so a scene image is scanned for yellow once)."""
    n = int((highlight_mask(rgb) if yellow is None else yellow).sum())
    return n >= max(30, int(0.0005 * rgb.shape[0] * rgb.shape[1]))


@dataclass(frozen=True)
class Seen:
    color: str | None
    position: str
    cx: float = 0.0
    cy: float = 0.0


def see_object(rgb: np.ndarray) -> Seen:
    """Dominant colour and place of the non-black pixels (object crop or masked frame)."""
    mask = rgb.max(axis=2) > NON_BLACK
    if int(mask.sum()) < MIN_PIXELS:
        return Seen(None, "nowhere")
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    cx, cy = float(xs.mean()), float(ys.mean())
    return Seen(dominant_color_name(rgb[mask]), position_name(cx, cy, w, h), cx, cy)


def _highlight_regions(rgb: np.ndarray,
                       yellow_mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(yellow line mask, filled area enclosed by the yellow lines) as uint8 0/255 masks."""
    if yellow_mask is None:
        yellow_mask = highlight_mask(rgb)
    yellow = yellow_mask.astype(np.uint8) * 255
    closed = cv2.morphologyEx(yellow, cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))
    contours, _ = cv2.findContours(closed, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros_like(yellow)
    big = [c for c in contours if cv2.contourArea(c) >= 9]
    cv2.drawContours(filled, big, -1, 255, thickness=cv2.FILLED)
    return yellow, filled


def see_outlined(rgb: np.ndarray, yellow: np.ndarray | None = None) -> Seen:
    """Colour of what lies inside the yellow contour, and where that is in the frame
    (``yellow``: ``highlight_mask(rgb)`` if already computed)."""
    yellow, filled = _highlight_regions(rgb, yellow)
    line = cv2.dilate(yellow, np.ones((5, 5), np.uint8))
    inside = (filled > 0) & (line == 0)
    if int(inside.sum()) < MIN_PIXELS:
        inside = filled > 0
        if int(inside.sum()) < MIN_PIXELS:
            return Seen(None, "nowhere")
    ys, xs = np.nonzero(inside)
    h, w = inside.shape
    cx, cy = float(xs.mean()), float(ys.mean())
    return Seen(dominant_color_name(rgb[inside]), position_name(cx, cy, w, h), cx, cy)


def see_box(rgb: np.ndarray) -> Seen | None:
    """Centre of the yellow box and the colour of the object it was drawn around."""
    yellow, filled = _highlight_regions(rgb)
    if int((yellow > 0).sum()) < MIN_PIXELS:
        return None
    ys, xs = np.nonzero(filled if filled.any() else yellow)
    x0, x1, y0, y1 = int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    h, w = yellow.shape
    color = _boxed_color(rgb, yellow, (x0, y0, x1, y1))
    return Seen(color, position_name(cx, cy, w, h), float(cx), float(cy))


def _boxed_color(rgb: np.ndarray, yellow: np.ndarray, box: tuple[int, int, int, int]
                 ) -> str | None:
    """The colour of the region whose extent best matches the box.

    A box is drawn around one object, so that object lies inside it and spans it; a neighbour
    that overlaps the box reaches out of it. Matching extents (IoU of a region's bounding box
    with the box) names the boxed object even when a neighbour covers more of the box. Only a
    window around the box is looked at: a region reaching past the window reaches past the
    box too. Gray and black are background; with no other colour region inside, the most
    frequent colour inside the box is the answer.
    """
    x0, y0, x1, y1 = box
    m = 5
    if x1 - x0 <= 2 * m or y1 - y0 <= 2 * m:
        return None
    h, w = yellow.shape
    bw, bh = x1 - x0 + 1, y1 - y0 + 1
    wx0, wy0 = max(0, x0 - bw // 2), max(0, y0 - bh // 2)
    wx1, wy1 = min(w, x1 + bw // 2 + 1), min(h, y1 + bh // 2 + 1)
    window = rgb[wy0:wy1, wx0:wx1]
    names = color_indices(window)
    line = cv2.dilate(yellow[wy0:wy1, wx0:wx1], np.ones((5, 5), np.uint8)) > 0
    inner = np.zeros(names.shape, dtype=bool)
    inner[y0 + m - wy0:y1 - m - wy0, x0 + m - wx0:x1 - m - wx0] = True
    inner &= ~line
    if not inner.any():
        return None
    background = {COLOR_TERMS.index("gray"), COLOR_TERMS.index("black")}
    box_area = float(bw * bh)
    best: tuple[float, int, int] | None = None  # (IoU, pixels inside the box, colour index)
    for c in np.unique(names[inner]).tolist():
        if c in background:
            continue
        n, labels, stats, _ = cv2.connectedComponentsWithStats(
            ((names == c) & ~line).astype(np.uint8), connectivity=8)
        inside = np.bincount(labels[inner], minlength=n)
        for k in range(1, n):
            if inside[k] < MIN_PIXELS:
                continue
            rx0, ry0, rw, rh = (int(v) for v in stats[k, :4])
            rx0, ry0 = rx0 + wx0, ry0 + wy0
            iw = min(rx0 + rw, x1 + 1) - max(rx0, x0)
            ih = min(ry0 + rh, y1 + 1) - max(ry0, y0)
            overlap = float(max(0, iw) * max(0, ih))
            cand = (overlap / (box_area + rw * rh - overlap), int(inside[k]), c)
            if best is None or cand[:2] > best[:2]:
                best = cand
    if best is not None:
        return COLOR_TERMS[best[2]]
    return dominant_color_name(window[inner])


def motion_direction(frames: list[np.ndarray]) -> tuple[str, list[Seen]]:
    """Direction the yellow box moves from the first to the last frame it is found in."""
    seen = [s for s in (see_box(f) for f in frames) if s is not None]
    if len(seen) < 2:
        return "still", seen
    h, w = frames[0].shape[:2]
    dx = (seen[-1].cx - seen[0].cx) / w
    dy = (seen[-1].cy - seen[0].cy) / h
    if max(abs(dx), abs(dy)) < STILL_FRACTION:
        return "still", seen
    if abs(dx) >= abs(dy):
        return ("right" if dx > 0 else "left"), seen
    return ("down" if dy > 0 else "up"), seen
