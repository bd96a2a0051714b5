"""The colour vocabulary shared by the synthetic data and the offline reference server.

Synthetic objects are painted with these colours so a caption that names the wrong colour
shows at once that a crop, mask or frame went wrong somewhere upstream. Yellow is reserved for
the highlights drawn for the models (contour, box), so no synthetic object is yellow.
"""

from __future__ import annotations

import re

import numpy as np

# RGB values chosen far apart in hue/lightness so that video compression cannot move one
# into another's name.
OBJECT_PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (40, 180, 50),
    "blue": (40, 70, 230),
    "cyan": (40, 210, 220),
    "magenta": (220, 40, 210),
    "orange": (245, 140, 20),
    "purple": (120, 40, 170),
    "white": (245, 245, 245),
}


# ---------------------------------------------------------------------------------------------
# Naming colours with basic colour terms (used by the offline reference server and by tests).
# ---------------------------------------------------------------------------------------------

COLOR_TERMS: tuple[str, ...] = (
    "red", "orange", "yellow", "green", "cyan", "blue", "purple", "magenta", "pink", "brown",
    "white", "gray", "black",
)
"""The basic colour terms a caption may use; the reference judge compares descriptions on them."""

_IDX = {name: i for i, name in enumerate(COLOR_TERMS)}


def _hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue in degrees [0, 360), saturation and value in [0, 1], for an (..., 3) uint8 array."""
    x = rgb.astype(np.float32) / 255.0
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    mx = x.max(axis=-1)
    mn = x.min(axis=-1)
    d = mx - mn
    safe = np.where(d > 0, d, 1.0)
    h = np.where(mx == r, ((g - b) / safe) % 6.0,
                 np.where(mx == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0)) * 60.0
    h = np.where(d > 0, h, 0.0) % 360.0
    s = np.where(mx > 0, d / np.where(mx > 0, mx, 1.0), 0.0)
    return h, s, mx


def color_indices(rgb: np.ndarray) -> np.ndarray:
    """Index into ``COLOR_TERMS`` for every pixel of an (..., 3) uint8 RGB array.

    Thresholds are in HSV so that JPEG/video compression, which mostly blurs chroma, does not
    move a palette colour across a hue boundary (every palette hue sits >= 13 degrees inside).
    """
    h, s, v = _hsv(np.asarray(rgb, dtype=np.uint8))
    out = np.full(h.shape, _IDX["gray"], dtype=np.int64)
    chroma = s >= 0.18
    light_tint = (s < 0.45) & (v > 0.8)

    def put(cond: np.ndarray, name: str) -> None:
        nonlocal out
        out = np.where(cond, _IDX[name], out)

    # Order matters: later rules override earlier ones.
    put(chroma & ((h < 12) | (h >= 340)), "red")
    put(chroma & (h >= 12) & (h < 42), "orange")
    put(chroma & (h >= 12) & (h < 42) & ((v < 0.6) | ((s < 0.5) & (v < 0.75))), "brown")
    put(chroma & (h >= 42) & (h < 70), "yellow")
    put(chroma & (h >= 42) & (h < 70) & (v < 0.5), "brown")
    put(chroma & (h >= 70) & (h < 165), "green")
    put(chroma & (h >= 165) & (h < 200), "cyan")
    put(chroma & (h >= 200) & (h < 255), "blue")
    put(chroma & (h >= 255) & (h < 290), "purple")
    put(chroma & (h >= 290) & (h < 340), "magenta")
    put(chroma & light_tint & ((h >= 290) | (h < 12)), "pink")
    put(~chroma & (v > 0.82), "white")
    put(v < 0.18, "black")
    return out


def color_name(rgb: tuple[int, int, int]) -> str:
    """The basic colour term for one RGB triple."""
    return COLOR_TERMS[int(color_indices(np.array([rgb], dtype=np.uint8))[0])]


def dominant_color_name(pixels: np.ndarray) -> str | None:
    """Most frequent colour term among pixels (any (..., 3) shape); ``None`` if there are none.

    A vote over per-pixel names rather than the name of the mean colour: a mean mixes the
    object with compression halos at its border, a vote lets the interior win.
    """
    px = np.asarray(pixels, dtype=np.uint8).reshape(-1, 3)
    if px.shape[0] == 0:
        return None
    counts = np.bincount(color_indices(px), minlength=len(COLOR_TERMS))
    return COLOR_TERMS[int(counts.argmax())]


def _is_highlight(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (h >= 45) & (h < 72) & (s >= 0.45) & (v >= 0.55)


def _highlight_candidates(rgb: np.ndarray) -> np.ndarray:
    """A cheap integer superset of ``highlight_mask``: blue strictly the smallest channel and,
    each with a little slack, max(red, green) >= 140 (value >= 0.55 is 140.25), saturation >=
    0.45, hue >= 45 (when red is the max) and hue < 72 (when green is). ``tests/
    test_colors_fast.py`` checks on all 2^24 colours that no highlight pixel is left out."""
    r = rgb[..., 0].astype(np.int16)
    g = rgb[..., 1].astype(np.int16)
    b = rgb[..., 2].astype(np.int16)
    mx = np.maximum(r, g)
    d = mx - b
    return ((b < r) & (b < g) & (mx >= 140) & (20 * d >= 9 * mx - 20)
            & (4 * (g - b) >= 3 * (r - b) - 4) & (5 * (g - r) <= d + 4))


def highlight_mask(rgb: np.ndarray) -> np.ndarray:
    """Pixels that look like the pure-yellow (255, 255, 0) highlights drawn for the models.

    Loose enough to survive JPEG chroma subsampling of a 3 px line, strict enough that no
    palette colour (orange is the nearest, hue 32) or the gray background matches.

    The float HSV test runs only on the few pixels an integer pre-test lets through: same
    answer per pixel (``_hsv`` is per pixel), a fraction of the work on a whole image.
    """
    rgb = np.asarray(rgb, dtype=np.uint8)
    cand = _highlight_candidates(rgb)
    if not cand.any():
        return cand
    out = np.zeros(cand.shape, dtype=bool)
    out[cand] = _is_highlight(*_hsv(rgb[cand]))
    return out


def highlight_mask_reference(rgb: np.ndarray) -> np.ndarray:
    """``highlight_mask`` as the float HSV test of every pixel (the definition; for tests)."""
    return _is_highlight(*_hsv(np.asarray(rgb, dtype=np.uint8)))


def color_terms_in(text: str) -> list[str]:
    """Colour terms named in a text, in order of first mention (``grey`` counts as gray)."""
    words = re.findall(r"[a-z]+", text.lower())
    seen: list[str] = []
    for w in words:
        w = "gray" if w == "grey" else w
        if w in _IDX and w not in seen:
            seen.append(w)
    return seen
