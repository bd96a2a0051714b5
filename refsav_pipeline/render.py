"""The images shown to the models: pure functions on RGB uint8 arrays and boolean masks."""

from __future__ import annotations

import cv2
import numpy as np

from refsav_pipeline.config import RGB, YELLOW, RenderConfig

Box = tuple[int, int, int, int]  # x, y, w, h


def _clip_box(box: Box, margin: int, width: int, height: int) -> tuple[int, int, int, int]:
    """Box grown by ``margin`` and clipped to the image, as x0, y0, x1, y1 (exclusive)."""
    x, y, w, h = box
    x0, y0 = max(0, x - margin), max(0, y - margin)
    x1, y1 = min(width, x + w + margin), min(height, y + h + margin)
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


def masked_frame(frame: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The full frame with every non-object pixel black."""
    out = np.zeros_like(frame)
    out[mask] = frame[mask]
    return out


def object_crop(frame: np.ndarray, mask: np.ndarray, box: Box, margin: int = 8) -> np.ndarray:
    """The object's box (plus margin) with every non-object pixel black."""
    height, width = mask.shape
    x0, y0, x1, y1 = _clip_box(box, margin, width, height)
    return masked_frame(frame[y0:y1, x0:x1], mask[y0:y1, x0:x1])


def contour_image(frame: np.ndarray, mask: np.ndarray, color: RGB = YELLOW,
                  thickness: int = 3) -> np.ndarray:
    """The frame with the object's outline drawn over it (the scene-level prompt image)."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_NONE)
    out = np.ascontiguousarray(frame.copy())
    cv2.drawContours(out, contours, -1, tuple(int(c) for c in color), thickness)
    return out


def box_image(frame: np.ndarray, box: Box, color: RGB = YELLOW, thickness: int = 3,
              margin: int = 4, style: str = "rectangle") -> np.ndarray:
    """The frame with a box around the object (the video-level prompt images)."""
    height, width = frame.shape[:2]
    x0, y0, x1, y1 = _clip_box(box, margin, width, height)
    out = np.ascontiguousarray(frame.copy())
    colour = tuple(int(c) for c in color)  # drawn in the array's own channel order (RGB)
    if style == "rectangle":
        cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), colour, thickness)
    elif style == "corners":
        arm = max(4, min(x1 - x0, y1 - y0) // 4)
        for cx, cy, dx, dy in ((x0, y0, 1, 1), (x1 - 1, y0, -1, 1), (x0, y1 - 1, 1, -1),
                               (x1 - 1, y1 - 1, -1, -1)):
            cv2.line(out, (cx, cy), (cx + dx * arm, cy), colour, thickness)
            cv2.line(out, (cx, cy), (cx, cy + dy * arm), colour, thickness)
    else:
        raise ValueError(f"unknown box style {style!r}")
    return out


def encode_jpeg(image: np.ndarray, max_side: int = 1024, quality: int = 90) -> bytes:
    """JPEG bytes, downscaled so the longest side is at most ``max_side``."""
    height, width = image.shape[:2]
    scale = max_side / max(height, width)
    if scale < 1:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def decode_jpeg(data: bytes) -> np.ndarray:
    """RGB array from JPEG bytes (the inverse of ``encode_jpeg``, for tests and the review tool)."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("not a decodable image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class Renderer:
    """The four prompt images of one masklet, as configured."""

    def __init__(self, cfg: RenderConfig) -> None:
        self.cfg = cfg

    def jpeg(self, image: np.ndarray) -> bytes:
        return encode_jpeg(image, self.cfg.max_side, self.cfg.jpeg_quality)

    def crop(self, frame: np.ndarray, mask: np.ndarray, box: Box) -> np.ndarray:
        return object_crop(frame, mask, box, self.cfg.crop_margin)

    def masked(self, frame: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return masked_frame(frame, mask)

    def contour(self, frame: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return contour_image(frame, mask, self.cfg.contour_color, self.cfg.contour_thickness)

    def boxed(self, frame: np.ndarray, box: Box) -> np.ndarray:
        c = self.cfg
        return box_image(frame, box, c.box_color, c.box_thickness, c.box_margin, c.box_style)
