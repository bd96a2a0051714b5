"""The CPU stage: one video in, the prompt images of its selected masklets out.

Small steps composed per video, each turning a bad input into a failed row for just the records
it concerns: read annotation files → choose frames (RLE only) → decode the union of needed
frames once → render and encode each masklet's images.
"""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from refsav_pipeline import __version__
from refsav_pipeline.config import PipelineConfig
from refsav_pipeline.errors import RecordError
from refsav_pipeline.llm.images import Jpeg
from refsav_pipeline.records import RefSavRow
from refsav_pipeline.render import Renderer
from refsav_pipeline.sav.decode import decode_frames
from refsav_pipeline.sav.frames import FrameChoice, choose_frames, decode_mask
from refsav_pipeline.sav.index import SavVideoRef
from refsav_pipeline.sav.masklets import Masklet, load_annotation, masklets_of, unusable_id

TYPE_RANK = {"manual": 0, "auto": 1}
MaskletKey = tuple[str, str, int]  # video_id, masklet_type, masklet_id


def row_sort_key(video_pos: int, masklet_type: str, masklet_index: int) -> tuple[int, int, int]:
    """Row order inside a shard: plan order of videos, manual before auto, file order."""
    return (video_pos, TYPE_RANK.get(masklet_type, 9), masklet_index)


class MaskletJob(BaseModel):
    """One masklet ready for the model stage: its row so far and its four kinds of image."""

    model_config = ConfigDict(frozen=True)

    base: dict[str, Any]  # RefSavRow fields known before any model call
    crop_jpeg: bytes
    masked_jpeg: bytes
    contour_jpeg: bytes
    frames_jpegs: list[bytes]

    @property
    def key(self) -> MaskletKey:
        return (self.base["video_id"], self.base["masklet_type"], self.base["masklet_id"])


class PreparedVideo(BaseModel):
    video_id: str
    jobs: list[MaskletJob]
    failed: list[RefSavRow]
    frames_decoded: int = 0
    frames_needed: int = 0
    cpu_s: float = 0.0


def failed_row(base: dict[str, Any], err: RecordError) -> RefSavRow:
    return RefSavRow(**base, status="failed", error_kind=err.kind, error=str(err))


def _file_base(ref: SavVideoRef, masklet_type: str, fingerprint: str) -> dict[str, Any]:
    """Row fields for a whole annotation file that could not be read (no masklet known)."""
    return dict(video_id=ref.video_id, masklet_id=-1, masklet_type=masklet_type,
                masklet_index=-1, video_path=ref.video_path,
                anno_path=ref.annotation_paths()[masklet_type], height=0, width=0,
                video_frame_count=0, pipeline_version=__version__,
                config_fingerprint=fingerprint)


def _masklet_base(ref: SavVideoRef, m: Masklet, fingerprint: str) -> dict[str, Any]:
    return dict(video_id=m.video_id, masklet_id=m.masklet_id, masklet_type=m.type,
                masklet_index=m.index, video_path=ref.video_path,
                anno_path=ref.annotation_paths().get(m.type, ref.manual_path),
                height=m.height, width=m.width, video_frame_count=m.video_frame_count,
                size_bucket=m.size_bucket, pipeline_version=__version__,
                config_fingerprint=fingerprint)


def _with_choice(base: dict[str, Any], c: FrameChoice) -> dict[str, Any]:
    return {**base, "max_area_frame": c.max_area_frame, "max_area": c.max_area,
            "sampled_frames": list(c.sampled_frames), "bbox": list(c.bboxes[c.max_area_frame])}


def prepare_video(sav_root: str | Path, ref: SavVideoRef, cfg: PipelineConfig, fingerprint: str,
                  only: set[MaskletKey] | None = None) -> PreparedVideo:
    """Render one video's masklets. ``only`` restricts it to some masklets (retry of failures);
    a key with masklet id -1 stands for every masklet of that annotation file, and one with
    ``unusable_id(index)`` for the masklet at that index."""
    t0 = time.process_time()
    root = Path(sav_root)
    out = PreparedVideo(video_id=ref.video_id, jobs=[], failed=[])
    chosen: list[tuple[Masklet, FrameChoice, dict[str, Any]]] = []
    for mtype, rel in ref.annotation_paths().items():
        if mtype not in cfg.selection.masklet_types:
            continue
        if only is not None and not any(k[0] == ref.video_id and k[1] == mtype for k in only):
            continue
        try:
            ann = load_annotation(root / rel, ref.video_id)
            if ann.video_id != ref.video_id:
                raise RecordError("bad_json", f"{rel} says video_id={ann.video_id!r}",
                                  video_id=ref.video_id)
        except RecordError as err:
            out.failed.append(failed_row(_file_base(ref, mtype, fingerprint), err))
            continue
        for m in masklets_of(ann, mtype):
            if only is not None and not ({(ref.video_id, mtype, m.masklet_id),
                                          (ref.video_id, mtype, -1),
                                          (ref.video_id, mtype, unusable_id(m.index))} & only):
                continue
            base = _masklet_base(ref, m, fingerprint)
            try:
                c = choose_frames(m, cfg.frames.num_sampled)
            except RecordError as err:
                out.failed.append(failed_row(base, err))
                continue
            if c.visible_frames < cfg.selection.min_visible_frames or \
                    c.max_area < cfg.selection.min_area:
                continue  # not selected: no row
            chosen.append((m, c, _with_choice(base, c)))
    if chosen:
        _render(root, ref, cfg, chosen, out)
    out.cpu_s = time.process_time() - t0
    return out


def _render(root: Path, ref: SavVideoRef, cfg: PipelineConfig,
            chosen: list[tuple[Masklet, FrameChoice, dict[str, Any]]], out: PreparedVideo) -> None:
    needed = set().union(*(c.needed_frames() for _, c, _ in chosen))
    out.frames_needed = len(needed)
    try:
        decoded = decode_frames(
            root / ref.video_path, needed, video_id=ref.video_id,
            expected_frame_count=chosen[0][0].video_frame_count if cfg.decode.check_frame_count
            else None,
            backend=cfg.decode.backend, threads=cfg.decode.threads)
    except RecordError as err:
        out.failed.extend(failed_row(base, err) for _, _, base in chosen)
        return
    out.frames_decoded = decoded.decoded
    renderer = Renderer(cfg.render)

    def jpeg(image: Any) -> Jpeg:  # hashed once here for the request cache's keys
        return Jpeg(renderer.jpeg(image))

    for m, c, base in chosen:
        try:
            frame = decoded.frames[c.max_area_frame]
            if frame.shape[:2] != (m.height, m.width):
                raise RecordError(
                    "video_size_mismatch",
                    f"video frames are {frame.shape[1]}x{frame.shape[0]}, annotation says "
                    f"{m.width}x{m.height}", video_id=m.video_id, masklet_id=m.masklet_id)
            mask = decode_mask(m, c.max_area_frame)
            out.jobs.append(MaskletJob(
                base=base,
                crop_jpeg=jpeg(renderer.crop(frame, mask, c.bboxes[c.max_area_frame])),
                masked_jpeg=jpeg(renderer.masked(frame, mask)),
                contour_jpeg=jpeg(renderer.contour(frame, mask)),
                frames_jpegs=[jpeg(renderer.boxed(decoded.frames[f], c.bboxes[f]))
                              for f in c.sampled_frames],
            ))
        except RecordError as err:
            out.failed.append(failed_row(base, err))


def prepare_video_within(sav_root: str | Path, ref: SavVideoRef, cfg: PipelineConfig,
                         fingerprint: str, only: set[MaskletKey] | None = None) -> PreparedVideo:
    """``prepare_video`` with ``cfg.run.video_timeout_s``: past it, one ``video_timeout`` row per
    annotation file (as for a file that cannot be read) and the shard goes on.

    The work runs in a daemon thread: a read blocked in the kernel (a hung NFS mount, a FIFO
    put there after planning) cannot be interrupted, but need not hold the task; the thread
    is left behind and the process can still exit.
    """
    answer: queue.SimpleQueue[PreparedVideo | BaseException] = queue.SimpleQueue()

    def work() -> None:
        try:
            answer.put(prepare_video(sav_root, ref, cfg, fingerprint, only))
        except BaseException as exc:  # noqa: BLE001 (handed to the caller as is)
            answer.put(exc)

    threading.Thread(target=work, name=f"prepare-{ref.video_id}", daemon=True).start()
    limit = cfg.run.video_timeout_s
    try:
        got = answer.get(timeout=limit)
    except queue.Empty:
        err = RecordError("video_timeout", f"reading and rendering took more than {limit:g} s "
                          "(run.video_timeout_s): a hung file system, or a file that never "
                          "ends", video_id=ref.video_id)
        return PreparedVideo(video_id=ref.video_id, jobs=[], failed=[
            failed_row(_file_base(ref, mtype, fingerprint), err)
            for mtype in ref.annotation_paths() if mtype in cfg.selection.masklet_types
            and (only is None or any(k[0] == ref.video_id and k[1] == mtype for k in only))])
    if isinstance(got, BaseException):
        raise got
    return got
