"""A small SA-V train sample with known answers: real H.264 mp4s and real compressed RLEs.

Objects are painted in distinct colours from ``colors.OBJECT_PALETTE`` on a dark textured
background and move in known directions, so a caption that names the wrong colour or the wrong
motion shows exactly which stage went wrong. The sidecar ``synth_truth.json`` holds the answers.
Masks are the visible part of each object after occlusion, as in SA-V.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from pycocotools import mask as mask_utils
from pydantic import BaseModel

from refsav_pipeline.colors import OBJECT_PALETTE
from refsav_pipeline.sav.schema import ANNOTATION_STRIDE

FPS = 24
TRUTH_FILE = "synth_truth.json"
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "still": (0, 0)}


class SynthObject(BaseModel):
    masklet_id: int
    type: str
    color: str
    direction: str
    shape: str
    hidden: tuple[int, int] | None = None  # video frames [start, end) where it is not drawn


class SynthVideo(BaseModel):
    video_id: str
    width: int
    height: int
    frame_count: int
    objects: list[SynthObject]


def _plan_video(rng: np.random.Generator, video_id: str, width: int, height: int) -> tuple[
        SynthVideo, list[dict]]:
    frame_count = int(rng.choice([73, 81, 97]))  # 4k+1 frames: the last frame is annotated
    colors = rng.permutation(list(OBJECT_PALETTE))[: int(rng.integers(2, 5))]
    objects, motions = [], []
    counters = {"manual": 0, "auto": 0}
    for i, color in enumerate(colors):
        kind = "manual" if i < 2 else "auto"
        direction = str(rng.choice(list(DIRECTIONS)))
        size = int(rng.integers(min(width, height) // 6, min(width, height) // 4))
        travel = int(0.45 * (width if direction in ("left", "right") else height))
        speed = travel / (frame_count - 1) if direction != "still" else 0.0
        dx, dy = DIRECTIONS[direction]
        half = size // 2 + 2
        # start so the whole path stays inside the frame
        x_lo = half + (travel if dx < 0 else 0)
        x_hi = width - half - (travel if dx > 0 else 0)
        y_lo = half + (travel if dy < 0 else 0)
        y_hi = height - half - (travel if dy > 0 else 0)
        cx0 = float(rng.integers(x_lo, max(x_lo + 1, x_hi)))
        cy0 = float(rng.integers(y_lo, max(y_lo + 1, y_hi)))
        hidden = None
        if i == 1:  # the second object leaves the view for a while: empty RLEs
            a = int(rng.integers(frame_count // 4, frame_count // 2))
            hidden = (a, a + frame_count // 5)
        objects.append(SynthObject(masklet_id=counters[kind], type=kind, color=str(color),
                                   direction=direction, shape=str(rng.choice(["ellipse", "box"])),
                                   hidden=hidden))
        counters[kind] += 1
        motions.append({"c0": (cx0, cy0), "v": (dx * speed, dy * speed), "size": size})
    return SynthVideo(video_id=video_id, width=width, height=height, frame_count=frame_count,
                      objects=objects), motions


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    base = rng.integers(45, 75, size=(height // 8 + 1, width // 8 + 1), dtype=np.uint8)
    tex = np.kron(base, np.ones((8, 8), np.uint8))[:height, :width]
    return np.repeat(tex[:, :, None], 3, axis=2)


def _draw(frame: np.ndarray, obj: SynthObject, motion: dict, t: int) -> np.ndarray:
    """Paint the object at frame ``t``; return its full (pre-occlusion) mask."""
    height, width = frame.shape[:2]
    cx = motion["c0"][0] + motion["v"][0] * t
    cy = motion["c0"][1] + motion["v"][1] * t
    r = motion["size"] / 2
    yy, xx = np.mgrid[0:height, 0:width]
    if obj.shape == "ellipse":
        mask = ((xx - cx) / r) ** 2 + ((yy - cy) / (0.75 * r)) ** 2 <= 1.0
    else:
        mask = (np.abs(xx - cx) <= r) & (np.abs(yy - cy) <= 0.7 * r)
    frame[mask] = OBJECT_PALETTE[obj.color]
    return mask


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()}


def _size_bucket(area: float) -> str:
    return "small" if area < 32**2 else "medium" if area < 96**2 else "large"


def _annotation(video: SynthVideo, kind: str, masks: dict[int, list[np.ndarray]]) -> dict:
    """One SA-V JSON in the real files' exact key set and types."""
    objs = [o for o in video.objects if o.type == kind]
    idx = [video.objects.index(o) for o in objs]
    n_ann = len(masks[idx[0]]) if idx else 0
    areas = [[float(m.sum()) for m in masks[i]] for i in idx]
    visible = [[a > 0 for a in obj_areas] for obj_areas in areas]
    mean_vis = [float(np.mean([a for a in obj_areas if a > 0] or [0])) for obj_areas in areas]
    hw = video.height * video.width
    return {
        "video_id": video.video_id,
        "video_duration": video.frame_count / FPS,
        "video_frame_count": float(video.frame_count),
        "video_height": float(video.height),
        "video_width": float(video.width),
        "video_resolution": float(hw),
        "video_environment": "Indoor",
        "video_split": "train",
        "masklet": [[_rle(masks[i][f]) for i in idx] for f in range(n_ann)],
        "masklet_id": [o.masklet_id for o in objs],
        "masklet_size_rel": [m / hw for m in mean_vis],
        "masklet_size_abs": mean_vis,
        "masklet_size_bucket": [_size_bucket(m) for m in mean_vis],
        "masklet_visibility_changes": [
            int(sum(a != b for a, b in zip(v, v[1:], strict=False))) for v in visible
        ],
        "masklet_first_appeared_frame": [
            float(v.index(True) * ANNOTATION_STRIDE) if kind == "manual" else 0 for v in visible
        ],
        "masklet_frame_count": [n_ann] * len(objs),
        "masklet_edited_frame_count": [0] * len(objs),
        "masklet_type": [kind] * len(objs),
        "masklet_stability_score": (
            [None] * len(objs)
            if kind == "manual"
            else [[round(0.9 + 0.001 * (f % 50), 4) for f in range(n_ann)] for _ in objs]
        ),
        "masklet_num": len(objs),
    }


def write_mp4(path: Path, frames: list[np.ndarray], fps: int = FPS, gop: int = FPS) -> None:
    """H.264 (yuv420p) mp4 that any player and SAM 2's cv2-based reader open."""
    height, width = frames[0].shape[:2]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps, 1))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop
        stream.options = {"crf": "18", "preset": "veryfast", "bf": "0"}
        for image in frames:
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def synth_video(out_dir: Path, video_id: str, rng: np.random.Generator, width: int = 256,
                height: int = 192) -> SynthVideo:
    video, motions = _plan_video(rng, video_id, width, height)
    background = _background(rng, width, height)
    frames: list[np.ndarray] = []
    masks: dict[int, list[np.ndarray]] = {i: [] for i in range(len(video.objects))}
    for t in range(video.frame_count):
        frame = background.copy()
        drawn: list[np.ndarray] = []
        for obj, motion in zip(video.objects, motions, strict=True):
            if obj.hidden and obj.hidden[0] <= t < obj.hidden[1]:
                drawn.append(np.zeros((height, width), bool))
                continue
            drawn.append(_draw(frame, obj, motion, t))
        frames.append(frame)
        if t % ANNOTATION_STRIDE == 0:
            for i in range(len(drawn)):  # visible part: later objects are painted on top
                visible = drawn[i].copy()
                for later in drawn[i + 1:]:
                    visible &= ~later
                masks[i].append(visible)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_mp4(out_dir / f"{video_id}.mp4", frames)
    for kind in ("manual", "auto"):
        if kind == "manual" or any(o.type == "auto" for o in video.objects):
            (out_dir / f"{video_id}_{kind}.json").write_text(
                json.dumps(_annotation(video, kind, masks)))
    return video


def synth_sav(out: str | Path, videos: int, seed: int = 0, videos_per_folder: int = 4,
              width: int = 256, height: int = 192) -> list[SynthVideo]:
    """Write ``videos`` videos as ``sav_train/sav_0XX/…`` plus the ground-truth sidecar."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    made = []
    for n in range(videos):
        folder = out / "sav_train" / f"sav_{n // videos_per_folder:03d}"
        made.append(synth_video(folder, f"sav_{seed:02d}{n + 1:04d}", rng, width, height))
    (out / TRUTH_FILE).write_text(json.dumps([v.model_dump() for v in made], indent=1))
    return made


def load_truth(root: str | Path) -> dict[tuple[str, str, int], SynthObject]:
    """Ground truth keyed by (video_id, masklet type, masklet_id)."""
    data = json.loads((Path(root) / TRUTH_FILE).read_text())
    out = {}
    for v in data:
        video = SynthVideo.model_validate(v)
        for o in video.objects:
            out[(video.video_id, o.type, o.masklet_id)] = o
    return out
