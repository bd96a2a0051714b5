"""Decoding only the needed frames, and the four prompt images."""

from __future__ import annotations

import shutil
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from refsav_pipeline.config import RenderConfig
from refsav_pipeline.errors import RecordError
from refsav_pipeline.render import (
    Renderer,
    box_image,
    contour_image,
    decode_jpeg,
    encode_jpeg,
    masked_frame,
    object_crop,
)
from refsav_pipeline.sav.decode import decode_frames
from refsav_pipeline.sav.frames import choose_frames, decode_mask
from refsav_pipeline.sav.index import find_video
from refsav_pipeline.sav.masklets import read_video_masklets

YELLOW = np.array([255, 255, 0])


def _all_frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


@pytest.mark.parametrize("backend", ["pyav", "opencv"])
def test_needed_frames_equal_full_decode(synth_root: Path, backend: str) -> None:
    ref = find_video(synth_root, "sav_000003")
    full = _all_frames(synth_root / ref.video_path)
    wanted = {0, 5, 40, 41, len(full) - 9, len(full) - 1}
    got = decode_frames(synth_root / ref.video_path, wanted, video_id=ref.video_id,
                        expected_frame_count=len(full), backend=backend)
    assert set(got.frames) == wanted
    for i in wanted:
        np.testing.assert_array_equal(got.frames[i], full[i])


def test_far_frames_are_reached_by_seeking(synth_root: Path) -> None:
    ref = find_video(synth_root, "sav_000003")
    path = synth_root / ref.video_path
    n = len(_all_frames(path))
    assert n > 70
    got = decode_frames(path, [1, n - 2], video_id=ref.video_id)
    assert got.seeks == 2 and got.decoded < n, "the gap should be skipped, not decoded"


def test_seeks_only_when_a_keyframe_lies_between(synth_root: Path) -> None:
    """Synthetic videos have a keyframe every 24 frames (0, 24, 48, …)."""
    path = synth_root / find_video(synth_root, "sav_000003").video_path
    across = decode_frames(path, [26, 70], video_id="v")
    assert across.seeks == 2 and across.decoded == (26 - 24 + 1) + (70 - 48 + 1)
    within = decode_frames(path, [26, 40], video_id="v")
    assert within.seeks == 1 and within.decoded == 40 - 24 + 1


def test_video_errors(synth_root: Path, tmp_path: Path) -> None:
    ref = find_video(synth_root, "sav_000001")
    with pytest.raises(RecordError) as err:
        decode_frames(tmp_path / "nope.mp4", [0], video_id="sav_000001")
    assert err.value.kind == "video_missing"
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    with pytest.raises(RecordError) as err:
        decode_frames(corrupt, [0], video_id="sav_000001")
    assert err.value.kind == "video_unreadable" and "sav_000001" in str(err.value)
    truncated = tmp_path / "truncated.mp4"
    data = (synth_root / ref.video_path).read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    with pytest.raises(RecordError) as err:
        decode_frames(truncated, [0, 60], video_id="sav_000001")
    assert err.value.kind == "video_unreadable"
    good = synth_root / ref.video_path
    with pytest.raises(RecordError) as err:
        decode_frames(good, [0], video_id="sav_000001", expected_frame_count=999)
    assert err.value.kind == "frame_count_mismatch" and "999" in str(err.value)


def _blob() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    frame = rng.integers(40, 90, size=(120, 160, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:120, 0:160]
    mask = ((xx - 70) / 25) ** 2 + ((yy - 60) / 15) ** 2 <= 1
    frame[mask] = (40, 70, 230)
    return frame, mask


def test_crop_and_masked_frame_hold_only_object_pixels() -> None:
    frame, mask = _blob()
    ys, xs = np.nonzero(mask)
    box = (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
    crop = object_crop(frame, mask, box, margin=6)
    assert crop.shape[:2] == (box[3] + 12, box[2] + 12)
    sub = mask[box[1] - 6: box[1] + box[3] + 6, box[0] - 6: box[0] + box[2] + 6]
    assert not crop[~sub].any(), "a non-object pixel survived in the crop"
    np.testing.assert_array_equal(crop[sub], frame[mask])
    full = masked_frame(frame, mask)
    assert not full[~mask].any() and (full[mask] == frame[mask]).all()


def test_crop_margin_clips_at_image_border() -> None:
    frame, mask = _blob()
    crop = object_crop(frame, mask, (0, 0, 10, 10), margin=8)
    assert crop.shape[:2] == (18, 18)


def test_contour_is_yellow_on_the_outline_only() -> None:
    frame, mask = _blob()
    out = contour_image(frame, mask, thickness=3)
    yellow = (out == YELLOW).all(axis=2)
    edge = mask & ~cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    assert yellow[edge].mean() > 0.95
    far_inside = cv2.erode(mask.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    far_outside = ~cv2.dilate(mask.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    assert not yellow[far_inside].any() and not yellow[far_outside].any()
    np.testing.assert_array_equal(out[far_outside], frame[far_outside])


@pytest.mark.parametrize("style", ["rectangle", "corners"])
def test_box_is_yellow_around_the_object(style: str) -> None:
    frame, _ = _blob()
    out = box_image(frame, (40, 30, 50, 40), thickness=2, margin=4, style=style)
    yellow = (out == YELLOW).all(axis=2)
    x0, y0, x1, y1 = 36, 26, 93, 73  # box grown by the margin, inclusive corners
    assert yellow[y0, x0] and yellow[y1, x1] and yellow[y0, x1] and yellow[y1, x0]
    assert not yellow[y0 + 10: y1 - 10, x0 + 10: x1 - 10].any()
    assert not yellow[:y0 - 3].any() and not yellow[y1 + 3:].any()
    if style == "rectangle":
        assert yellow[y0, x0:x1].all() and yellow[y0:y1, x0].all()


def test_jpeg_bounded_side_and_round_trip() -> None:
    frame, mask = _blob()
    small = decode_jpeg(encode_jpeg(frame, max_side=80, quality=95))
    assert small.shape == (60, 80, 3)
    same = decode_jpeg(encode_jpeg(frame, max_side=1024, quality=95))
    assert same.shape == frame.shape
    inner = cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    assert np.abs(same[inner].astype(int) - frame[inner]).mean() < 4


def test_renderer_on_synthetic_video(synth_root: Path) -> None:
    ref = find_video(synth_root, "sav_000002")
    m = read_video_masklets(synth_root, ref)[0]
    c = choose_frames(m)
    frames = decode_frames(synth_root / ref.video_path, c.needed_frames(),
                           video_id=ref.video_id).frames
    r = Renderer(RenderConfig())
    mask = decode_mask(m, c.max_area_frame)
    crop = r.crop(frames[c.max_area_frame], mask, c.bboxes[c.max_area_frame])
    assert crop.any() and crop.shape[0] <= m.height
    boxed = r.boxed(frames[c.sampled_frames[0]], c.bboxes[c.sampled_frames[0]])
    assert (boxed == YELLOW).all(axis=2).sum() > 50
    assert decode_jpeg(r.jpeg(r.contour(frames[c.max_area_frame], mask))).shape[:2] == (
        m.height, m.width)


def test_corrupt_copy_does_not_touch_others(synth_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "sav"
    shutil.copytree(synth_root / "sav_train", root / "sav_train")
    bad = find_video(root, "sav_000001")
    (root / bad.video_path).write_bytes(b"not a video")
    with pytest.raises(RecordError):
        decode_frames(root / bad.video_path, [0], video_id=bad.video_id)
    good = find_video(root, "sav_000002")
    assert decode_frames(root / good.video_path, [0], video_id=good.video_id).frames
