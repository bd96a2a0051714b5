"""Inputs of the export that the review module owns, made the way people make them: the
benchmark selection (``select_and_write``), reviewers' decisions in the ``DecisionStore`` and
the validated file written by ``export_validated``."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from refsav_pipeline.review.export import export_validated
from refsav_pipeline.review.select import BenchmarkSample, select_and_write
from refsav_pipeline.review.store import DecisionStore, NewDecision

BENCHMARK_COUNT = 5
"""With ``synth_sav(videos=4, seed=0)`` and seed 0: two whole videos, one with manual and auto
objects, and a failed row of a benchmark video that must stay out of train anyway."""


def final_texts(s: BenchmarkSample, i: int) -> dict[str, str]:
    """Edited, unique-per-sample final texts (with characters HTML and JSON must escape)."""
    return {
        "edited_object_caption": f"final object #{i} <b>{s.video_id}</b>",
        "edited_scene_caption": f"final scene #{i} & \"{s.masklet_type}\"",
        "edited_video_caption": f"final video #{i}: the object {s.masklet_id} — moves é",
    }


def decide(store: DecisionStore, s: BenchmarkSample, reviewer: str, action: str,
           **kw: str) -> None:
    """One reviewer's decision on the view they would see now (no conflict)."""
    store.record(NewDecision(video_id=s.video_id, masklet_type=s.masklet_type,
                             masklet_id=s.masklet_id, sample_version=s.sample_version,
                             reviewer=reviewer, action=action,
                             base_seq=store.latest_seq(s.key), **kw))


def write_review_inputs(out_dir: Path, count: int = BENCHMARK_COUNT, seed: int = 0,
                        reject: int = 1) -> tuple[set[str], list[dict]]:
    """Select a benchmark of whole videos and review it: the first ``reject`` samples (in
    review order) rejected, every other one accepted with edited texts by "ann"; every second
    accepted one also gets two short expressions, the second from "bob" accepting after her.
    Returns (benchmark video ids, validated records as written by the review export)."""
    samples = select_and_write(out_dir, count=count, seed=seed, double_review=0.0)
    store = DecisionStore.for_run(out_dir)
    for s in samples[:reject]:
        decide(store, s, "ann", "reject", reason="wrong object")
    for i, s in enumerate(samples[reject:]):
        shorts = i % 2 == 0
        decide(store, s, "ann", "edit_accept", **final_texts(s, i),
               **({"short_expression": f"short {i} a"} if shorts else {}))
        if shorts:
            decide(store, s, "bob", "accept", short_expression=f"short {i} b")
    _, validated = export_validated(out_dir)
    return {s.video_id for s in samples}, [v.model_dump() for v in validated]


def make_export(synth_root: Path, base: Path, fail_every: int = 4) -> dict:
    """A finished fake run with review inputs, exported in full: everything a test needs."""
    from factories import write_fake_run

    from refsav_pipeline.export.sa2va import export_sa2va

    out, dest = base / "out", base / "dest"
    rows = write_fake_run(synth_root, out, fail_every=fail_every)
    bench_videos, records = write_review_inputs(out)
    # the test data must exercise both sides: held-out videos and videos left for train
    assert 0 < len(bench_videos) < len({r.video_id for r in rows})
    assert any(r.video_id in bench_videos and r.status != "ok" for r in rows)
    assert all(r["long_accepted"] for r in records)
    train, bench = export_sa2va(out, dest)
    return {"out": out, "dest": dest, "rows": rows, "bench_videos": bench_videos,
            "records": records, "train": train, "bench": bench}


def cv2_frames(video: Path) -> list[np.ndarray]:
    """Every frame of ``video`` as OpenCV reads it (BGR): what Sa2VA's loaders see."""
    cap = cv2.VideoCapture(str(video))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames
