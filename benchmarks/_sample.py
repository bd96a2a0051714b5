"""A synthetic SA-V sample shaped like the real one, for the benchmarks.

``refsav_pipeline.sav.synth.synth_sav`` makes short (73–97 frame) 256x192 clips, right for
tests but too short for seeking to matter. This writes the same layout (``sav_train/sav_000/``,
``{id}.mp4`` H.264 via ``synth.write_mp4``, ``{id}_manual.json`` / ``{id}_auto.json`` with the
real files' key set, compressed RLEs every 4th frame) at SA-V's shape: 848x480, 481 frames
(20 s at 24 fps), a panning textured background and several moving, partly hidden objects.
Drawing uses OpenCV so a 20 s video takes seconds, not minutes.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from refsav_pipeline.colors import OBJECT_PALETTE
from refsav_pipeline.sav.schema import ANNOTATION_STRIDE
from refsav_pipeline.sav.synth import FPS, write_mp4


@dataclass(frozen=True)
class SampleSpec:
    videos: int = 4
    width: int = 848
    height: int = 480
    frames: int = 481  # 4k+1: the last frame is annotated, as in synth
    objects: int = 4  # per video: the first two manual, the rest auto
    gop: int = FPS  # keyframe interval of the mp4s (synth's default: 1 s)
    seed: int = 0


def add_sample_args(parser: object, **defaults: int) -> None:
    """``--videos --width --height --frames --objects --gop --seed --sample-dir`` options."""
    spec = SampleSpec(**defaults)
    for name, value in asdict(spec).items():
        parser.add_argument(f"--{name}", type=int, default=value,  # type: ignore[attr-defined]
                            help=f"sample {name} (default {value})")
    parser.add_argument("--sample-dir", default=None,  # type: ignore[attr-defined]
                        help="keep/reuse the sample here instead of a temp dir")


def spec_from_args(args: object) -> SampleSpec:
    return SampleSpec(**{k: getattr(args, k) for k in asdict(SampleSpec())})


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()}


def _annotation(video_id: str, spec: SampleSpec, kind: str, rles: list[list[dict]],
                idx: list[int], ids: list[int]) -> dict:
    """One SA-V JSON with the real files' key set and types (as ``synth._annotation``)."""
    hw = spec.width * spec.height
    areas = [[float(a) for a in mask_utils.area([r[i] for r in rles])] for i in idx]
    visible = [[a > 0 for a in obj] for obj in areas]
    mean_vis = [float(np.mean([a for a in obj if a > 0] or [0])) for obj in areas]
    n_ann = len(rles)
    return {
        "video_id": video_id,
        "video_duration": spec.frames / FPS,
        "video_frame_count": float(spec.frames),
        "video_height": float(spec.height),
        "video_width": float(spec.width),
        "video_resolution": float(hw),
        "video_environment": "Outdoor",
        "video_split": "train",
        "masklet": [[r[i] for i in idx] for r in rles],
        "masklet_id": ids,
        "masklet_size_rel": [m / hw for m in mean_vis],
        "masklet_size_abs": mean_vis,
        "masklet_size_bucket": ["small" if m < 32**2 else "medium" if m < 96**2 else "large"
                                for m in mean_vis],
        "masklet_visibility_changes": [
            int(sum(a != b for a, b in zip(v, v[1:], strict=False))) for v in visible],
        "masklet_first_appeared_frame": [
            float(v.index(True) * ANNOTATION_STRIDE) if kind == "manual" and any(v) else 0
            for v in visible],
        "masklet_frame_count": [n_ann] * len(idx),
        "masklet_edited_frame_count": [0] * len(idx),
        "masklet_type": [kind] * len(idx),
        "masklet_stability_score": ([None] * len(idx) if kind == "manual" else
                                    [[0.95] * n_ann for _ in idx]),
        "masklet_num": len(idx),
    }


def write_video(folder: Path, video_id: str, spec: SampleSpec, rng: np.random.Generator,
                manual: int = 2) -> int:
    """One mp4 + its JSONs (the first ``manual`` masklets manual); returns the masklets."""
    w, h, n = spec.width, spec.height, spec.frames
    pan = n // 2  # background pans 0.5 px/frame to the left
    base = rng.integers(35, 90, size=(h // 8 + 1, (w + pan) // 8 + 1, 1)).astype(np.uint8)
    bg = cv2.resize(np.repeat(base, 3, axis=2), (w + pan, h), interpolation=cv2.INTER_LINEAR)
    bg = np.clip(bg.astype(np.int16) + rng.integers(-10, 11, size=bg.shape), 0, 255)
    bg = bg.astype(np.uint8)
    colors = rng.permutation(list(OBJECT_PALETTE))[: spec.objects]
    objs = []
    for i, color in enumerate(colors):
        r = int(rng.integers(min(w, h) // 12, min(w, h) // 7))
        p0 = rng.uniform([r, r], [w - r, h - r])
        p1 = rng.uniform([r, r], [w - r, h - r])
        hidden = None
        if i % 2 == 1:  # every other object leaves the view for a while (empty RLEs)
            a = int(rng.integers(n // 4, n // 2))
            hidden = (a, a + n // 5)
        objs.append({"color": tuple(int(c) for c in OBJECT_PALETTE[str(color)]), "r": r,
                     "p0": p0, "p1": p1, "hidden": hidden, "box": i % 3 == 2})
    frames: list[np.ndarray] = []
    rles: list[list[dict]] = []  # per annotated frame, per object
    for t in range(n):
        x = int(t * pan / max(1, n - 1))
        frame = np.ascontiguousarray(bg[:, x:x + w])
        masks = []
        for o in objs:
            m = np.zeros((h, w), np.uint8)
            if not (o["hidden"] and o["hidden"][0] <= t < o["hidden"][1]):
                cx, cy = (o["p0"] + (o["p1"] - o["p0"]) * t / max(1, n - 1)).astype(int)
                r = o["r"]
                if o["box"]:
                    cv2.rectangle(m, (cx - r, cy - r * 7 // 10), (cx + r, cy + r * 7 // 10), 1, -1)
                else:
                    cv2.ellipse(m, (int(cx), int(cy)), (r, r * 3 // 4), 15, 0, 360, 1, -1)
                frame[m > 0] = o["color"]
            masks.append(m)
        frames.append(frame)
        if t % ANNOTATION_STRIDE == 0:  # visible part: later objects are painted on top
            visible = []
            for i, m in enumerate(masks):
                v = m.astype(bool)
                for later in masks[i + 1:]:
                    v &= later == 0
                visible.append(_rle(v))
            rles.append(visible)
    folder.mkdir(parents=True, exist_ok=True)
    write_mp4(folder / f"{video_id}.mp4", frames, gop=spec.gop)
    kinds = ["manual" if i < manual else "auto" for i in range(len(objs))]
    for kind in ("manual", "auto"):
        idx = [i for i, k in enumerate(kinds) if k == kind]
        if kind == "manual" or idx:
            ann = _annotation(video_id, spec, kind, rles, idx, list(range(len(idx))))
            (folder / f"{video_id}_{kind}.json").write_text(json.dumps(ann))
    return len(objs)


def _write_nth(root: Path, spec: SampleSpec, v: int) -> int:
    rng = np.random.default_rng([spec.seed, v])
    return write_video(root / "sav_train" / "sav_000", f"sav_b{spec.seed:02d}{v + 1:04d}",
                       spec, rng)


def write_sample(root: Path, spec: SampleSpec) -> int:
    """The whole sample under ``root`` (videos written in parallel); returns the masklets."""
    with ProcessPoolExecutor(max_workers=min(spec.videos, os.cpu_count() or 1)) as pool:
        return sum(pool.map(_write_nth, [root] * spec.videos, [spec] * spec.videos,
                            range(spec.videos)))


@contextmanager
def sample(spec: SampleSpec, keep_dir: str | None = None) -> Iterator[Path]:
    """A sample root made for ``spec`` (reused from ``keep_dir`` if it was made with it)."""
    tmp = None
    if keep_dir is None:
        tmp = tempfile.mkdtemp(prefix="refsav-bench-")
        root = Path(tmp)
    else:
        root = Path(keep_dir)
    stamp = root / "spec.json"
    try:
        if not (stamp.exists() and json.loads(stamp.read_text()) == asdict(spec)):
            shutil.rmtree(root / "sav_train", ignore_errors=True)
            t0 = time.perf_counter()
            n = write_sample(root, spec)
            print(f"# sample: {spec.videos} videos x {spec.frames} frames at "
                  f"{spec.width}x{spec.height}, gop {spec.gop}, {n} masklets "
                  f"(written in {time.perf_counter() - t0:.1f} s)", file=sys.stderr)
            stamp.write_text(json.dumps(asdict(spec)))
        yield root
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
