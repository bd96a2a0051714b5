"""Synthetic images and sessions for tests and benchmarks of the model layer.

Mirrors what the pipeline renders: objects in ``OBJECT_PALETTE`` colours on a dark gray
textured background, non-object pixels blacked out for object images, pure-yellow contour
and box highlights about 3 px wide, JPEG at quality 90.
"""

from __future__ import annotations

import cv2
import numpy as np

from refsav_pipeline.colors import OBJECT_PALETTE
from refsav_pipeline.config import YELLOW
from refsav_pipeline.llm.config import ClientConfig, ModelsConfig
from refsav_pipeline.render import (
    box_image,
    contour_image,
    encode_jpeg,
    masked_frame,
    object_crop,
)


def to_jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    return encode_jpeg(rgb, max_side=max(rgb.shape[:2]), quality=quality)


def background(h: int = 240, w: int = 320, seed: int = 0) -> np.ndarray:
    """Dark gray texture (values ~35–75), like the synthetic SA-V videos."""
    rng = np.random.default_rng(seed)
    base = rng.integers(35, 75, size=(h // 8 + 1, w // 8 + 1, 1)).astype(np.uint8)
    tex = cv2.resize(np.repeat(base, 3, axis=2), (w, h), interpolation=cv2.INTER_LINEAR)
    noise = rng.integers(-6, 7, size=(h, w, 3))
    return np.clip(tex.astype(int) + noise, 0, 255).astype(np.uint8)


def blob_mask(h: int, w: int, cx: int, cy: int, r: int) -> np.ndarray:
    """An irregular blob (ellipse + circle) so shapes are not all perfect discs."""
    m = np.zeros((h, w), np.uint8)
    cv2.ellipse(m, (cx, cy), (r, int(r * 0.7)), 20, 0, 360, 255, -1)
    cv2.circle(m, (cx + r // 2, cy - r // 3), r // 2, 255, -1)
    return m > 0


def object_frame(color: str, cx: int, cy: int, r: int = 30, h: int = 240, w: int = 320,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(frame RGB, object mask) with one palette-coloured blob on the textured background."""
    frame = background(h, w, seed)
    mask = blob_mask(h, w, cx, cy, r)
    frame[mask] = OBJECT_PALETTE[color]
    return frame, mask


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return (int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
            int(ys.max() - ys.min() + 1))


def crop(frame: np.ndarray, mask: np.ndarray, margin: int = 8) -> np.ndarray:
    """Object crop with non-object pixels blacked out, exactly as the pipeline renders it."""
    return object_crop(frame, mask, _bbox(mask), margin)


def contour_frame(frame: np.ndarray, mask: np.ndarray, thickness: int = 3) -> np.ndarray:
    return contour_image(frame, mask, YELLOW, thickness)


def box_frames(color: str, path: list[tuple[int, int]], r: int = 20, h: int = 240,
               w: int = 320, thickness: int = 3, margin: int = 4) -> list[bytes]:
    """JPEG frames of a blob following ``path`` (centres), boxed in yellow in each frame."""
    out = []
    for i, (cx, cy) in enumerate(path):
        frame, mask = object_frame(color, cx, cy, r, h, w, seed=i)
        out.append(to_jpeg(box_image(frame, _bbox(mask), YELLOW, thickness, margin)))
    return out


def models_at(url: str | list[str], base: ModelsConfig | None = None,
              max_concurrency: int = 8) -> ModelsConfig:
    """``base`` (default models) with both roles pointed at ``url`` (one or several)."""
    base = base or ModelsConfig()
    urls = [url] if isinstance(url, str) else list(url)
    upd = {"endpoints": urls, "max_concurrency": max_concurrency}
    return base.model_copy(update={"captioner": base.captioner.model_copy(update=upd),
                                   "judge": base.judge.model_copy(update=upd)})


def fast_client(**kw: object) -> ClientConfig:
    """Client settings for tests: short timeouts, millisecond backoff."""
    d: dict[str, object] = {"connect_timeout_s": 1.0, "request_timeout_s": 2.0,
                            "max_attempts": 8, "backoff_base_s": 0.01, "backoff_max_s": 0.05,
                            "health_timeout_s": 1.0, "reprobe_interval_s": 0.5}
    d.update(kw)
    return ClientConfig.model_validate(d)


__all__ = ["background", "blob_mask", "box_frames", "contour_frame", "crop",
           "fast_client", "masked_frame", "models_at", "object_frame", "to_jpeg"]
