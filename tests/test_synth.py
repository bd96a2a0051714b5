"""The synthetic SA-V sample is real SA-V: H.264 mp4, RLE masks that match the painted pixels."""

from __future__ import annotations

import json
from pathlib import Path

import av
import cv2
import numpy as np
from pycocotools import mask as mask_utils
from typer.testing import CliRunner

from refsav_pipeline.cli import app
from refsav_pipeline.colors import OBJECT_PALETTE
from refsav_pipeline.sav.index import index_sav_root
from refsav_pipeline.sav.masklets import load_annotation
from refsav_pipeline.sav.synth import load_truth

REAL_KEYS = {
    "video_id", "video_duration", "video_frame_count", "video_height", "video_width",
    "video_resolution", "video_environment", "video_split", "masklet", "masklet_id",
    "masklet_size_rel", "masklet_size_abs", "masklet_size_bucket", "masklet_visibility_changes",
    "masklet_first_appeared_frame", "masklet_frame_count", "masklet_edited_frame_count",
    "masklet_type", "masklet_stability_score", "masklet_num",
}


def test_same_keys_and_types_as_real_file(synth_root: Path, real_sav_dir: Path) -> None:
    real = json.loads((real_sav_dir / "sav_000001_manual.json").read_text())
    assert set(real) == REAL_KEYS
    for ref in index_sav_root(synth_root):
        for rel in ref.annotation_paths().values():
            ann = json.loads((synth_root / rel).read_text())
            assert set(ann) == REAL_KEYS
            for key in ("video_frame_count", "video_height", "video_width"):
                assert isinstance(ann[key], float)
            assert ann["masklet_num"] == len(ann["masklet"][0]) == len(ann["masklet_id"])


def test_sam2_style_reading(synth_root: Path) -> None:
    """As SAM 2's sav_dataset utils read it: cv2 for frames, pycocotools for masklet[f][k]."""
    truth = load_truth(synth_root)
    saw_hidden = False
    for ref in index_sav_root(synth_root):
        cap = cv2.VideoCapture(str(synth_root / ref.video_path))
        frames = []
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        cap.release()
        with av.open(str(synth_root / ref.video_path)) as c:
            assert c.streams.video[0].codec_context.name == "h264"
            assert float(c.streams.video[0].average_rate) == 24.0
        for kind, rel in ref.annotation_paths().items():
            ann = load_annotation(synth_root / rel)
            assert len(frames) == ann.frame_count
            assert len(ann.masklet) == (ann.frame_count - 1) // 4 + 1
            for k, mid in enumerate(ann.masklet_id):
                colour = np.array(OBJECT_PALETTE[truth[(ref.video_id, kind, mid)].color])
                for f in range(len(ann.masklet)):
                    mask = mask_utils.decode(ann.masklet[f][k].as_coco()).astype(bool)
                    assert mask.shape == frames[0].shape[:2]
                    saw_hidden |= mask.sum() == 0
                    if mask.sum() < 200 or f % 3:
                        continue
                    inner = cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
                    pixels = frames[4 * f][inner].astype(int)
                    assert np.abs(np.median(pixels, axis=0) - colour).max() < 25
    assert saw_hidden, "some object should be invisible for a while (empty RLE)"


def test_cli_synth_and_inspect(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["sav", "synth", "--out", str(tmp_path), "--videos", "2",
                              "--seed", "3"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "synth_truth.json").exists()
    res = runner.invoke(app, ["sav", "inspect", "--sav-root", str(tmp_path), "--video",
                              "sav_030001", "--type", "manual", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert rows and {r["type"] for r in rows} == {"manual"}
