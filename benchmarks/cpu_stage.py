"""The whole CPU stage against an honest naive pipeline, and where the stage's CPU goes.

Why: the CPU stage (``prepare_video``: read the JSONs, choose frames from the RLEs, decode the
union of needed frames once per video, render the four prompt images, JPEG) is what a cluster
of CPU nodes spends most of its cores on. The honest baseline is the pipeline anyone would
write first, minus its worst waste: PyAV decodes each video once, every frame in order, and
converts to RGB only the frames some masklet needs; frame choice, rendering and JPEG are the
same code as ours (``prepare_video`` itself, with its decoder swapped for the naive one). So
the ratio is what seeking buys on the whole stage, not on decoding alone.

It runs at 480p (848x480) and 720p (1280x720), with a keyframe every 24 and every 250 frames
(SA-V-shaped sample: 481 frames at 24 fps, 20 s; ``benchmarks/_sample.py``), and profiles our
stage once per setting to split its CPU: keyframe scan (demux), decoding, RGB conversion, RLE
masks, drawing, downscaling for JPEG, JPEG encoding, hashing, the rest.

    .venv/bin/python benchmarks/cpu_stage.py [--videos 3 --objects 6] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import os
import pstats
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import av
from _procs import loadavg
from _sample import SampleSpec, sample

from refsav_pipeline.config import PipelineConfig
from refsav_pipeline.pipeline import prepare
from refsav_pipeline.sav.decode import DecodedFrames
from refsav_pipeline.sav.index import index_sav_root

SETTINGS = [("480p", 848, 480, 24), ("480p", 848, 480, 250),
            ("720p", 1280, 720, 24), ("720p", 1280, 720, 250)]


def naive_decode(path: str | Path, indices: Any, *, video_id: str,
                 expected_frame_count: int | None = None, backend: str = "pyav",
                 threads: int = 1) -> DecodedFrames:
    """Every frame decoded in order, once; only the needed ones converted to RGB."""
    wanted = set(indices)
    out = DecodedFrames(frames={}, decoded=0, frame_count=0)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = threads
        for i, frame in enumerate(container.decode(stream)):
            out.decoded += 1
            if i in wanted:
                out.frames[i] = frame.to_ndarray(format="rgb24")
        out.frame_count = out.decoded
    return out


@contextlib.contextmanager
def decoder(fn: Any) -> Iterator[None]:
    """``prepare_video`` with another decoder (the rest of the stage unchanged)."""
    ours = prepare.decode_frames
    prepare.decode_frames = fn
    try:
        yield
    finally:
        prepare.decode_frames = ours


def stage_cpu(root: Path, cfg: PipelineConfig, repeat: int) -> tuple[float, int, int, int]:
    """(CPU s, masklets, frames decoded, jobs' JPEG bytes) of the stage over the sample, best
    of ``repeat`` passes (the first pass also warms the page cache)."""
    refs = index_sav_root(root)
    best = float("inf")
    for _ in range(repeat):
        c0 = time.process_time()
        masklets = decoded = size = 0
        for ref in refs:
            pv = prepare.prepare_video(root, ref, cfg, "bench")
            masklets += len(pv.jobs)
            decoded += pv.frames_decoded
            size += sum(len(j.crop_jpeg) + len(j.masked_jpeg) + len(j.contour_jpeg)
                        + sum(map(len, j.frames_jpegs)) for j in pv.jobs)
        best = min(best, time.process_time() - c0)
    return best, masklets, decoded, size


# Where the CPU goes: the functions (cProfile's keys) whose cumulative time makes each part.
PARTS = {
    "keyframe scan": ["_keyframes"],
    "RGB conversion": ["to_ndarray"],
    "RLE masks": ["decode_mask"],
    "drawing (incl. frame copies)": ["object_crop", "masked_frame", "contour_image",
                                     "box_image"],
    "downscale for JPEG": ["resize"],
    "JPEG encode (incl. RGB to BGR)": ["imencode", "cvtColor"],
    "hashing": ["openssl_sha256"],
    "annotations (JSON, frame choice)": ["load_annotation", "choose_frames"],
}


def _short(name: str) -> str:
    """cProfile's name of a function: ``f``, ``<method 'f' of …>``, ``<built-in method m.f>``,
    ``<f>`` (OpenCV's)."""
    if name.startswith("<method '"):
        return name.split("'")[1]
    if name.startswith("<built-in method "):
        return name.removesuffix(">").split(" ")[-1].split(".")[-1]
    if name.startswith("<") and " " not in name:
        return name.strip("<>")
    return name


def where_cpu_goes(root: Path, cfg: PipelineConfig) -> dict[str, float]:
    """Share of the stage's profiled time per part; decoding is ``_decode_pyav`` minus the
    keyframe scan and RGB conversion inside it."""
    refs = index_sav_root(root)
    prof = cProfile.Profile()
    prof.enable()
    for ref in refs:
        prepare.prepare_video(root, ref, cfg, "bench")
    prof.disable()
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    cum: dict[str, float] = {}
    total = 0.0
    for (_file, _line, name), (_cc, _nc, _tt, ct, _callers) in stats.items():
        short = _short(name)
        cum[short] = cum.get(short, 0.0) + ct
        if short == "prepare_video":
            total = ct
    parts = {part: sum(cum.get(f, 0.0) for f in fns) for part, fns in PARTS.items()}
    parts["decoding"] = cum.get("_decode_pyav", 0.0) - parts["keyframe scan"] - \
        parts["RGB conversion"]
    parts["other"] = total - sum(parts.values())
    return {k: v / total for k, v in sorted(parts.items(), key=lambda kv: -kv[1])}


def run(spec: SampleSpec, sample_dir: str | None, repeat: int) -> dict[str, Any]:
    cfg = PipelineConfig()
    with sample(spec, sample_dir) as root:
        ours = stage_cpu(root, cfg, repeat)
        with decoder(naive_decode):
            naive = stage_cpu(root, cfg, repeat)
        split = where_cpu_goes(root, cfg)
    assert ours[1] == naive[1] and ours[3] == naive[3], "the two pipelines made other images"
    return {"sample": asdict(spec), "masklets": ours[1],
            "ours": {"cpu_s": ours[0], "frames_decoded": ours[2]},
            "naive": {"cpu_s": naive[0], "frames_decoded": naive[2]},
            "naive_over_ours_cpu": naive[0] / ours[0],
            "naive_over_ours_frames": naive[2] / max(1, ours[2]),
            "ours_cpu_ms_per_masklet": 1000 * ours[0] / max(1, ours[1]),
            "where_ours_goes": split}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=3)
    ap.add_argument("--objects", type=int, default=6, help="masklets per video")
    ap.add_argument("--frames", type=int, default=481)
    ap.add_argument("--repeat", type=int, default=2, help="passes per pipeline (best taken)")
    ap.add_argument("--quick", action="store_true", help="2 videos of 121 frames, 1 pass")
    ap.add_argument("--sample-dir", default=None, help="keep the samples under this folder")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.videos, args.frames, args.repeat = 2, 121, 1
    load_before = loadavg()
    points = []
    for name, w, h, gop in SETTINGS:
        spec = replace(SampleSpec(), videos=args.videos, width=w, height=h,
                       frames=args.frames, objects=args.objects, gop=gop)
        keep = None if args.sample_dir is None else \
            os.path.join(args.sample_dir, f"{name}-gop{gop}")
        points.append({"setting": f"{name}, keyframe every {gop}", **run(spec, keep,
                                                                         args.repeat)})
    res = {"cores": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": loadavg(),
           "points": points}
    if args.json:
        json.dump(res, sys.stdout, indent=1)
        print()
        return
    print(f"{'setting':<28} {'masklets':>8} {'naive CPU s':>11} {'ours CPU s':>10} "
          f"{'naive/ours':>10} {'frames naive/ours':>17} {'ours ms/masklet':>15}")
    for p in points:
        print(f"{p['setting']:<28} {p['masklets']:>8} {p['naive']['cpu_s']:>11.2f} "
              f"{p['ours']['cpu_s']:>10.2f} {p['naive_over_ours_cpu']:>10.2f} "
              f"{p['naive_over_ours_frames']:>17.2f} {p['ours_cpu_ms_per_masklet']:>15.1f}")
    print("where our stage's CPU goes (share of its profiled time):")
    for p in points:
        print(f"  {p['setting']}: " + ", ".join(f"{k} {v:.0%}"
                                                 for k, v in p["where_ours_goes"].items()))
    print(f"({args.videos} videos x {args.frames} frames, {args.objects} masklets each; best "
          f"of {args.repeat} passes; {os.cpu_count()} cores; loadavg before "
          f"{res['loadavg_before']}, after {res['loadavg_after']})")
    print("RESULT whole CPU stage, naive (decode every frame once, RGB only where needed) / "
          "ours: " + "; ".join(f"{p['setting']} {p['naive_over_ours_cpu']:.2f}x"
                               for p in points))


if __name__ == "__main__":
    main()
