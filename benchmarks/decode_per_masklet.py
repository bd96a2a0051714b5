"""Frames decoded and CPU seconds per masklet: decode-once-with-seeking vs naive full decodes.

Why: decoding is the CPU stage's dominant cost. The pipeline (``prepare_video``) plans every
masklet of a video from its RLEs first, then decodes only the union of their needed frames
once per video, seeking to the keyframe before far-away frames (``decode_frames``). This
compares decoding alone against a pipeline that decodes each video once, all of it, converting
every frame to RGB: that ratio is the RESULT, and it overstates what seeking buys the stage.
The whole CPU stage against an honest naive pipeline (RGB only for the needed frames, the same
rendering and JPEG) is ``benchmarks/cpu_stage.py``. A naiver script that decodes the whole
video once per masklet is shown too (second line), since that is what per-masklet tools do.

The two ``decode_frames`` backends get the same needed-frame sets but not the same work:
``pyav`` seeks, ``opencv`` grabs sequentially up to the last needed frame and so decodes more
frames. Their ratio is therefore "backend with its own strategy"; CPU per decoded frame is
shown next to it as the like-for-like codec cost. Same SA-V-shaped sample for all (848x480,
481 frames at 24 fps, several masklets per video).

    .venv/bin/python benchmarks/decode_per_masklet.py [--videos 4 --gop 24 ...] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import av
import numpy as np
from _sample import add_sample_args, sample, spec_from_args

from refsav_pipeline.config import PipelineConfig
from refsav_pipeline.pipeline.prepare import prepare_video
from refsav_pipeline.sav.decode import decode_frames
from refsav_pipeline.sav.frames import choose_frames
from refsav_pipeline.sav.index import SavVideoRef, index_sav_root
from refsav_pipeline.sav.masklets import load_annotation, masklets_of


@dataclass
class Measure:
    method: str
    masklets: int = 0
    frames_needed: int = 0
    frames_decoded: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0

    def row(self) -> list[str]:
        m = max(1, self.masklets)
        return [self.method, str(self.frames_needed), str(self.frames_decoded),
                f"{self.frames_decoded / m:.1f}", f"{self.cpu_s:.2f}",
                f"{self.cpu_s / m:.3f}", f"{self.wall_s:.2f}",
                f"{1000 * self.cpu_s / max(1, self.frames_decoded):.2f}"]


def plan(root: Path, ref: SavVideoRef, cfg: PipelineConfig) -> list[set[int]]:
    """Needed video frames of each selected masklet, as ``prepare_video`` chooses them."""
    out = []
    for mtype, rel in ref.annotation_paths().items():
        for m in masklets_of(load_annotation(root / rel, ref.video_id), mtype):
            c = choose_frames(m, cfg.frames.num_sampled)
            if c.visible_frames >= cfg.selection.min_visible_frames and \
                    c.max_area >= cfg.selection.min_area:
                out.append(c.needed_frames())
    return out


def naive_decode(path: Path, needed: set[int]) -> tuple[dict[int, np.ndarray], int]:
    """Every frame, in order, each converted to RGB; keeps the needed ones."""
    kept: dict[int, np.ndarray] = {}
    n = 0
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            rgb = frame.to_ndarray(format="rgb24")
            n += 1
            if i in needed:
                kept[i] = rgb
    return kept, n


def timed(fn, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn(*a, **kw)
    return out, time.process_time() - c0, time.perf_counter() - w0


def run(root: Path) -> dict:
    cfg = PipelineConfig()
    refs = index_sav_root(root)
    plans = {r.video_id: plan(root, r, cfg) for r in refs}
    naive, pyav, opencv = Measure("naive: full decode per masklet"), \
        Measure("ours: union per video, pyav"), Measure("ours: union per video, opencv")
    once = Measure("naive: full decode once per video")
    prep = Measure("ours: prepare_video (decode+render+JPEG)")
    identical = True
    decode_frames(root / refs[0].video_path, [0], video_id="warmup")  # libs, page cache
    for ref in refs:
        path, needs = root / ref.video_path, plans[ref.video_id]
        union = set().union(*needs)
        for meas, backend in ((pyav, "pyav"), (opencv, "opencv")):
            d, cpu, wall = timed(decode_frames, path, union, video_id=ref.video_id,
                                 backend=backend)
            meas.masklets += len(needs)
            meas.frames_needed += len(union)
            meas.frames_decoded += d.decoded
            meas.cpu_s += cpu
            meas.wall_s += wall
            if backend == "pyav":
                ours = d.frames
        (kept, n), cpu, wall = timed(naive_decode, path, union)
        once.masklets += len(needs)
        once.frames_needed += len(union)
        once.frames_decoded += n
        once.cpu_s += cpu
        once.wall_s += wall
        identical &= all(np.array_equal(kept[f], ours[f]) for f in union)
        for need in needs:
            (kept, n), cpu, wall = timed(naive_decode, path, need)
            naive.masklets += 1
            naive.frames_needed += len(need)
            naive.frames_decoded += n
            naive.cpu_s += cpu
            naive.wall_s += wall
            identical &= all(np.array_equal(kept[f], ours[f]) for f in need)
        pv, cpu, wall = timed(prepare_video, root, ref, cfg, "bench")
        prep.masklets += len(pv.jobs)
        prep.frames_needed += pv.frames_needed
        prep.frames_decoded += pv.frames_decoded
        prep.cpu_s += cpu
        prep.wall_s += wall
    return {
        "videos": len(refs), "masklets": naive.masklets, "naive_equals_pyav": identical,
        "measures": [asdict(m) for m in (once, naive, pyav, opencv, prep)],
        "ratios": {
            "once_over_pyav_frames": once.frames_decoded / max(1, pyav.frames_decoded),
            "once_over_pyav_cpu": once.cpu_s / max(1e-9, pyav.cpu_s),
            "naive_over_pyav_frames": naive.frames_decoded / max(1, pyav.frames_decoded),
            "naive_over_pyav_cpu": naive.cpu_s / max(1e-9, pyav.cpu_s),
            "opencv_over_pyav_frames": opencv.frames_decoded / max(1, pyav.frames_decoded),
            "opencv_over_pyav_cpu": opencv.cpu_s / max(1e-9, pyav.cpu_s),
            "opencv_over_pyav_wall": opencv.wall_s / max(1e-9, pyav.wall_s),
            "opencv_over_pyav_cpu_per_frame": (opencv.cpu_s / max(1, opencv.frames_decoded))
            / max(1e-12, pyav.cpu_s / max(1, pyav.frames_decoded)),
        },
    }


def print_table(res: dict) -> None:
    head = ["method", "needed", "decoded", "decoded/masklet", "CPU s", "CPU s/masklet",
            "wall s", "CPU ms/decoded frame"]
    rows = [head] + [Measure(**m).row() for m in res["measures"]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    for k, r in enumerate(rows):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(r, widths, strict=True))))
        if k == 0:
            print("  ".join("-" * w for w in widths))
    print(f"({res['videos']} videos, {res['masklets']} masklets; needed = distinct frames "
          f"asked for; naive frames == pyav frames: {res['naive_equals_pyav']})")
    q = res["ratios"]
    print(f"RESULT naive decode once per video / ours (pyav): frames decoded "
          f"{q['once_over_pyav_frames']:.1f}x, CPU {q['once_over_pyav_cpu']:.1f}x")
    print(f"also: naive decode once per masklet / ours: frames "
          f"{q['naive_over_pyav_frames']:.1f}x, CPU {q['naive_over_pyav_cpu']:.1f}x | "
          f"opencv (sequential) / pyav (seeking), each its own strategy: frames "
          f"{q['opencv_over_pyav_frames']:.2f}x, CPU {q['opencv_over_pyav_cpu']:.2f}x, "
          f"wall {q['opencv_over_pyav_wall']:.2f}x; CPU per decoded frame "
          f"{q['opencv_over_pyav_cpu_per_frame']:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_sample_args(ap)
    ap.add_argument("--json", action="store_true", help="print JSON results only")
    args = ap.parse_args()
    spec = spec_from_args(args)
    with sample(spec, args.sample_dir) as root:
        res = {"sample": asdict(spec), **run(root)}
    if args.json:
        json.dump(res, sys.stdout, indent=1)
        print()
    else:
        print_table(res)


if __name__ == "__main__":
    main()
