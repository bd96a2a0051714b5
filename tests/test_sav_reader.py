"""SA-V reader and frame choice against the real annotation file and synthetic data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from typer.testing import CliRunner

from refsav_pipeline.cli import app
from refsav_pipeline.errors import RecordError
from refsav_pipeline.sav.frames import choose_frames, decode_mask
from refsav_pipeline.sav.index import find_video, index_sav_root
from refsav_pipeline.sav.masklets import load_annotation, read_video_masklets


def _decoded_areas(masklet) -> np.ndarray:
    return np.array([mask_utils.decode(r).sum() for r in masklet.rles])


def _bbox_of(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
            int(ys.max() - ys.min() + 1)]


def test_real_file_types(real_sav_dir: Path) -> None:
    ann = load_annotation(real_sav_dir / "sav_000001_manual.json")
    assert ann.video_id == "sav_000001"
    assert (ann.frame_count, ann.height, ann.width) == (483, 848, 480)
    assert isinstance(ann.video_frame_count, float)
    assert ann.masklet_num == 5 and len(ann.masklet) == 121
    assert ann.masklet_stability_score == [None] * 5
    empty = [f for f in range(121) if ann.masklet[f][2].counts and
             mask_utils.area(ann.masklet[f][2].as_coco()) == 0]
    assert empty, "masklet 2 changes visibility, so it must have empty RLEs"


def test_real_file_frame_choice_matches_full_decode(real_sav_dir: Path) -> None:
    ref = find_video(real_sav_dir, "sav_000001")
    masklets = read_video_masklets(real_sav_dir, ref)
    assert [m.masklet_id for m in masklets] == [0, 1, 2, 3, 4]
    for m in masklets:
        c = choose_frames(m)
        areas = _decoded_areas(m)
        np.testing.assert_array_equal(areas, mask_utils.area(list(m.rles)))
        best = int(np.flatnonzero(areas == areas.max())[0])  # ties: earliest
        assert c.max_area_frame == 4 * best and c.max_area == areas.max()
        visible = np.flatnonzero(areas > 0)
        assert len(c.sampled_frames) == min(8, len(visible))
        assert list(c.sampled_frames) == sorted(set(c.sampled_frames))
        assert c.sampled_frames[0] == 4 * visible[0] and c.sampled_frames[-1] == 4 * visible[-1]
        positions = [int(np.flatnonzero(visible == f // 4)[0]) for f in c.sampled_frames]
        gaps = np.diff(positions)
        assert gaps.max() - gaps.min() <= 1, f"samples not uniform: {positions}"
        for frame, box in c.bboxes.items():
            assert list(box) == _bbox_of(decode_mask(m, frame))


def test_inspect_json_on_real_file(real_sav_dir: Path) -> None:
    result = CliRunner().invoke(
        app, ["sav", "inspect", "--sav-root", str(real_sav_dir), "--video", "sav_000001",
              "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) == 5
    assert set(rows[0]) == {"masklet_id", "type", "max_area_frame", "max_area",
                            "sampled_frames", "bbox"}
    ann = json.loads((real_sav_dir / "sav_000001_manual.json").read_text())
    for row in rows:
        k = ann["masklet_id"].index(row["masklet_id"])
        areas = [int(mask_utils.decode({"size": f[k]["size"], "counts": f[k]["counts"]}).sum())
                 for f in ann["masklet"]]
        assert row["max_area"] == max(areas)
        assert row["max_area_frame"] == 4 * areas.index(max(areas))
        assert len(row["sampled_frames"]) == 8 and row["type"] == "manual"
        assert all(f % 4 == 0 and f < 483 for f in row["sampled_frames"])


def test_index_nested_and_flat(synth_root: Path, tmp_path: Path) -> None:
    nested = index_sav_root(synth_root)
    assert [r.video_id for r in nested] == ["sav_000001", "sav_000002", "sav_000003",
                                            "sav_000004"]
    assert nested[0].video_path == "sav_train/sav_000/sav_000001.mp4"
    flat = tmp_path / "flat"
    flat.mkdir()
    for f in (synth_root / "sav_train" / "sav_000").glob("sav_000002*"):
        shutil.copy(f, flat)
    (ref,) = index_sav_root(flat)
    assert ref.video_path == "sav_000002.mp4" and ref.manual_path == "sav_000002_manual.json"


def test_type_selection(synth_root: Path) -> None:
    refs = index_sav_root(synth_root)
    with_auto = next(r for r in refs if r.auto_path)
    manual = read_video_masklets(synth_root, with_auto, ("manual",))
    both = read_video_masklets(synth_root, with_auto, ("manual", "auto"))
    assert {m.type for m in manual} == {"manual"}
    assert {m.type for m in both} == {"manual", "auto"} and len(both) > len(manual)


def test_fewer_visible_than_eight(synth_root: Path) -> None:
    ref = index_sav_root(synth_root)[0]
    m = read_video_masklets(synth_root, ref)[0]
    empty = {"size": m.rles[0]["size"], "counts": mask_utils.encode(
        np.zeros(m.rles[0]["size"], np.uint8, order="F"))["counts"].decode()}
    keep = {3, 7, 11}
    short = m.model_copy(update={"rles": tuple(r if f in keep else empty
                                                for f, r in enumerate(m.rles))})
    c = choose_frames(short)
    assert c.sampled_frames == (12, 28, 44)
    assert c.visible_frames == 3


def _copy_video(synth_root: Path, tmp_path: Path, video_id: str = "sav_000002") -> Path:
    root = tmp_path / "sav"
    shutil.copytree(synth_root / "sav_train", root / "sav_train")
    return root


@pytest.mark.parametrize("text", ['{"video_id": "sav_000002", "masklet": [[', "", "[1, 2]"])
def test_broken_json_is_a_clear_record_error(synth_root: Path, tmp_path: Path, text: str) -> None:
    root = _copy_video(synth_root, tmp_path)
    ref = find_video(root, "sav_000002")
    (root / ref.manual_path).write_text(text)
    with pytest.raises(RecordError) as err:
        read_video_masklets(root, ref)
    assert err.value.kind == "bad_json" and "sav_000002" in str(err.value)
    # the other videos still read
    assert read_video_masklets(root, find_video(root, "sav_000001"))


def test_rle_size_mismatch_names_video_and_masklet(synth_root: Path, tmp_path: Path) -> None:
    root = _copy_video(synth_root, tmp_path)
    ref = find_video(root, "sav_000002")
    path = root / ref.manual_path
    ann = json.loads(path.read_text())
    bad = mask_utils.encode(np.zeros((10, 10), np.uint8, order="F"))
    ann["masklet"][5][1] = {"size": [10, 10], "counts": bad["counts"].decode()}
    path.write_text(json.dumps(ann))
    m0, m1 = read_video_masklets(root, ref, ("manual",))
    choose_frames(m0)
    with pytest.raises(RecordError) as err:
        choose_frames(m1)
    assert err.value.kind == "rle_size"
    assert "video sav_000002 masklet 1" in str(err.value) and "[10, 10]" in str(err.value)


def test_empty_masklet(synth_root: Path) -> None:
    ref = index_sav_root(synth_root)[0]
    m = read_video_masklets(synth_root, ref)[0]
    empty = mask_utils.encode(np.zeros(m.rles[0]["size"], np.uint8, order="F"))
    blank = {"size": m.rles[0]["size"], "counts": empty["counts"].decode()}
    with pytest.raises(RecordError) as err:
        choose_frames(m.model_copy(update={"rles": (blank,) * len(m.rles)}))
    assert err.value.kind == "empty_masklet" and "masklet 0" in str(err.value)
