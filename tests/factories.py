"""Test data for the readers of a run (review, export, report): a finished run's output folder
built straight from a synthetic SA-V sample, captions taken from its ground truth.

The pipeline's own end-to-end tests check that real runs produce rows of this shape; this lets
the readers be tested without starting Ray or a model server.
"""

from __future__ import annotations

from pathlib import Path

from refsav_pipeline import __version__
from refsav_pipeline.errors import RecordError
from refsav_pipeline.pipeline.plan import make_plan, save_plan
from refsav_pipeline.pipeline.shards import write_shard
from refsav_pipeline.records import PerCall, RefSavRow
from refsav_pipeline.sav.frames import choose_frames
from refsav_pipeline.sav.index import index_sav_root
from refsav_pipeline.sav.masklets import read_video_masklets
from refsav_pipeline.sav.synth import load_truth

FINGERPRINT = "test0000fingerpr"


def write_fake_run(sav_root: Path, out_dir: Path, shard_size: int = 2,
                   fail_every: int = 0) -> list[RefSavRow]:
    """Plan + marked Parquet shards for every masklet of ``sav_root``; every
    ``fail_every``-th row is ``failed`` (0: none). Returns the rows in shard order."""
    truth = load_truth(sav_root)
    refs = index_sav_root(sav_root)
    plan = make_plan(sav_root, refs, shard_size, FINGERPRINT)
    save_plan(out_dir, plan)
    all_rows: list[RefSavRow] = []
    n = 0
    for shard in plan.shards:
        rows = []
        for ref in shard.videos:
            for m in read_video_masklets(sav_root, ref):
                n += 1
                t = truth[(m.video_id, m.type, m.masklet_id)]
                base = dict(
                    video_id=m.video_id, masklet_id=m.masklet_id, masklet_type=m.type,
                    masklet_index=m.index, video_path=ref.video_path,
                    anno_path=ref.annotation_paths()[m.type], height=m.height, width=m.width,
                    video_frame_count=m.video_frame_count, size_bucket=m.size_bucket,
                    pipeline_version=__version__, config_fingerprint=FINGERPRINT,
                )
                try:
                    c = choose_frames(m)
                except RecordError as exc:
                    rows.append(RefSavRow(**base, status="failed", error_kind=exc.kind,
                                          error=str(exc)))
                    continue
                base.update(max_area_frame=c.max_area_frame, max_area=c.max_area,
                            sampled_frames=list(c.sampled_frames),
                            bbox=list(c.bboxes[c.max_area_frame]))
                if fail_every and n % fail_every == 0:
                    rows.append(RefSavRow(**base, status="failed", error_kind="server_error",
                                          error=f"video {m.video_id} masklet {m.masklet_id}: "
                                                "HTTP 500 after 4 tries"))
                    continue
                obj = f"A {t.color} {t.shape} object."
                scene = f"{obj} It is in the middle of the scene."
                rows.append(RefSavRow(
                    **base, object_caption_crop=obj, object_caption_masked=obj,
                    consistent=True, judge_reason="both name the same colour",
                    object_caption=obj, scene_caption=scene,
                    video_caption=f"{scene} Over the video it moves {t.direction}.",
                    captioner_model="OpenGVLab/InternVL2-Llama3-76B",
                    judge_model="Qwen/Qwen2-72B-Instruct",
                    prompt_versions=PerCall(object_crop="object_caption_crop@v1",
                                            object_masked="object_caption_masked@v1",
                                            judge="consistency_judge@v1", scene="scene_caption@v1",
                                            video="video_caption@v1"),
                    latency_s=PerCall(object_crop=0.1, object_masked=0.1, judge=0.05,
                                      scene=0.1, video=0.2),
                    prompt_tokens=1200, completion_tokens=150,
                    prompt_tokens_by_call=PerCall(object_crop=300, object_masked=300, judge=100,
                                                  scene=250, video=250),
                    completion_tokens_by_call=PerCall(object_crop=20, object_masked=20,
                                                      judge=30, scene=30, video=50),
                    status="ok",
                ))
        write_shard(out_dir, shard.shard_id, rows, FINGERPRINT)
        all_rows.extend(rows)
    return all_rows
