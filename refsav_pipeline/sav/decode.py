"""Decoding only the frames a video's masklets need, once per video.

A video's masklets share one decode: the caller passes the union of their frames. PyAV first
demuxes the packets (no decoding) to learn where the keyframes are, then, for each needed frame,
seeks only when a keyframe lies between the current position and that frame; frames passed on
the way are decoded but never converted to RGB. The OpenCV backend is kept for comparison
(``benchmarks/decode_per_masklet.py``).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import av
import cv2
import numpy as np

from refsav_pipeline.errors import RecordError


@dataclass
class DecodedFrames:
    frames: dict[int, np.ndarray]  # video frame index -> RGB uint8 (H, W, 3)
    decoded: int  # frames the decoder produced, needed or not
    frame_count: int  # frames the container says it has
    width: int = 0
    height: int = 0
    seeks: int = 0
    notes: list[str] = field(default_factory=list)


def decode_frames(
    path: str | Path,
    indices: Iterable[int],
    *,
    video_id: str,
    expected_frame_count: int | None = None,
    backend: str = "pyav",
    threads: int = 1,
) -> DecodedFrames:
    """RGB frames at ``indices``; any problem is a ``RecordError`` on this video."""
    path = Path(path)
    wanted = sorted(set(indices))
    if not path.is_file():
        raise RecordError("video_missing", f"{path} not found", video_id=video_id)
    try:
        if backend == "pyav":
            result = _decode_pyav(path, wanted, threads)
        elif backend == "opencv":
            result = _decode_opencv(path, wanted)
        else:
            raise ValueError(f"unknown decode backend {backend!r}")
    except (av.error.FFmpegError, OSError, cv2.error) as exc:
        raise RecordError("video_unreadable", f"cannot decode {path.name}: {exc}",
                          video_id=video_id) from exc
    if expected_frame_count is not None and result.frame_count != expected_frame_count:
        raise RecordError(
            "frame_count_mismatch",
            f"{path.name} has {result.frame_count} frames, annotation says {expected_frame_count}",
            video_id=video_id,
        )
    missing = [i for i in wanted if i not in result.frames]
    if missing:
        raise RecordError(
            "video_unreadable",
            f"{path.name}: frames {missing[:5]} could not be decoded "
            f"(container has {result.frame_count})",
            video_id=video_id,
        )
    return result


def _decode_pyav(path: Path, wanted: list[int], threads: int = 1) -> DecodedFrames:
    """``threads``: decoder threads (0: FFmpeg decides). One per Ray task's CPU by default."""
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise OSError("no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        if not rate or stream.time_base is None:
            raise OSError("no frame rate / time base")
        start = stream.start_time or 0

        def index_of(pts: int) -> int:
            return int(round(float((pts - start) * stream.time_base * rate)))

        keyframes, packets = _keyframes(container, stream, index_of)
        frame_count = stream.frames or packets
        out = DecodedFrames(frames={}, decoded=0, frame_count=frame_count,
                            width=stream.codec_context.width, height=stream.codec_context.height)
        stream.codec_context.thread_count = threads
        if threads != 1:
            stream.thread_type = "AUTO"
        todo = [i for i in wanted if i < frame_count]
        wanted_set = set(todo)
        position: int | None = None
        decoder = None
        for target in todo:
            if target in out.frames or (position is not None and target <= position):
                continue  # already taken on the way, or absent from the stream
            k = bisect.bisect_right(keyframes, target) - 1
            if decoder is None or position is None or (k >= 0 and keyframes[k] > position):
                pts = start + int(round(target / rate / stream.time_base))
                container.seek(pts, stream=stream, backward=True, any_frame=False)
                out.seeks += 1
                decoder = container.decode(stream)
            for frame in decoder:
                out.decoded += 1
                position = index_of(frame.pts)
                if position in wanted_set and position not in out.frames:
                    out.frames[position] = frame.to_ndarray(format="rgb24")
                if position >= target:
                    break
            else:
                break  # end of stream: whatever is left is missing
        return out


def _keyframes(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
               index_of: Callable[[int], int]) -> tuple[list[int], int]:
    """Frame indices of the keyframes, and the packet count, from one demux pass."""
    keyframes, packets = [], 0
    for packet in container.demux(stream):
        if packet.size and packet.pts is not None:
            packets += 1
            if packet.is_keyframe:
                keyframes.append(index_of(packet.pts))
    container.seek(0, stream=stream)
    return sorted(keyframes), packets


def _decode_opencv(path: Path, wanted: list[int]) -> DecodedFrames:
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise OSError("OpenCV cannot open the file")
        frame_count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        out = DecodedFrames(frames={}, decoded=0, frame_count=frame_count,
                            width=int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                            height=int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        todo = set(wanted)
        last = max(wanted, default=-1)
        for index in range(last + 1):
            if not cap.grab():
                break
            out.decoded += 1
            if index in todo:
                ok, bgr = cap.retrieve()
                if not ok:
                    raise OSError(f"cannot retrieve frame {index}")
                out.frames[index] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        return out
    finally:
        cap.release()
