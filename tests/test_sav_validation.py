"""Annotation files are validated when read: every bad number becomes a failed row naming the
field, and nothing in a file can stop the run or a shard write."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from refsav_pipeline.config import PipelineConfig
from refsav_pipeline.errors import RecordError
from refsav_pipeline.pipeline.prepare import prepare_video
from refsav_pipeline.records import RefSavRow, rows_to_table
from refsav_pipeline.sav.frames import choose_frames, decode_mask
from refsav_pipeline.sav.index import find_video
from refsav_pipeline.sav.masklets import load_annotation, masklets_of
from refsav_pipeline.sav.rle import rle_pixel_counts

CFG = PipelineConfig()


def _rows(root: Path, video_id: str) -> list[RefSavRow]:
    """The CPU stage's rows for one video (jobs as if captioned ok), written to a table."""
    ref = find_video(root, video_id)
    pv = prepare_video(root, ref, CFG, "f" * 16)
    rows = [*pv.failed, *(RefSavRow(**j.base, status="ok") for j in pv.jobs)]
    rows_to_table(rows)  # every value fits the Parquet schema
    return rows


@pytest.fixture
def root(synth_root: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "sav"
    shutil.copytree(synth_root, dst)
    return dst


def _edit(root: Path, video_id: str, change: Any, kind: str = "manual") -> None:
    path = root / find_video(root, video_id).annotation_paths()[kind]
    ann = json.loads(path.read_text())
    change(ann)
    path.write_text(json.dumps(ann))


@pytest.mark.parametrize("field,value,words", [
    ("video_frame_count", float("inf"), "video_frame_count: Value error, inf is not a finite"),
    ("video_frame_count", 1e12, "video_frame_count: Value error, 1000000000000 is outside"),
    ("video_frame_count", float("nan"), "video_frame_count: Value error, nan is not a finite"),
    ("video_frame_count", 8.0, "at most 2 at 6 fps"),
    ("video_frame_count", 81.5, "81.5 is not a whole number"),
    ("video_height", -192.0, "video_height: Value error, -192 is outside"),
    ("video_width", "256", "video_width: Input should be a valid number"),
    ("video_width", [256], "video_width: Input should be a valid number"),
    ("video_id", ["sav_000002"], "video_id: Input should be a valid string"),
    ("masklet_num", 2**64, "masklet_id has"),
    ("masklet_id", "0,1", "masklet_id: Input should be a valid list"),
])
def test_bad_file_field_is_one_bad_json_row_naming_it(root: Path, field: str, value: Any,
                                                       words: str) -> None:
    _edit(root, "sav_000002", lambda a: a.__setitem__(field, value))
    rows = _rows(root, "sav_000002")
    manual = [r for r in rows if r.masklet_type == "manual"]
    assert [(r.masklet_id, r.status, r.error_kind) for r in manual] == [(-1, "failed",
                                                                         "bad_json")]
    assert words in manual[0].error and "sav_000002_manual.json" in manual[0].error
    assert all(r.status == "ok" for r in rows if r.masklet_type == "auto")


def test_missing_key_names_it(root: Path) -> None:
    _edit(root, "sav_000002", lambda a: a.pop("video_height"))
    (row,) = [r for r in _rows(root, "sav_000002") if r.masklet_type == "manual"]
    assert row.error_kind == "bad_json" and "video_height: Field required" in row.error


@pytest.mark.parametrize("change,masklet_id,words", [
    (lambda a: a["masklet_id"].__setitem__(1, -4), -3, "masklet_id[1]: Input should be greater"),
    (lambda a: a["masklet_id"].__setitem__(1, 2**40), -3, "masklet_id[1]: Input should be less"),
    (lambda a: a["masklet_id"].__setitem__(1, 1.5), -3, "masklet_id[1]: Input should be a valid"),
    (lambda a: a["masklet_id"].__setitem__(1, a["masklet_id"][0]), -3, "repeats"),
    (lambda a: a["masklet_type"].__setitem__(1, "auto"), 1, "masklet_type[1]: 'auto'"),
    (lambda a: a["masklet_size_bucket"].__setitem__(1, ["small"]), 1,
     "masklet_size_bucket[1]: ['small'] is not text"),
    (lambda a: a["masklet"][3][1].__setitem__("counts", None), 1,
     "masklet[3][1]: counts: Input should be a valid string"),
    (lambda a: a["masklet"][3][1].__setitem__("size", [1e400, 3]), 1,
     "masklet[3][1]: size.0: Input should be a valid integer"),
    (lambda a: a["masklet"][3].__setitem__(1, "RLE"), 1, "masklet[3][1]: Input should be"),
    # pycocotools would read past the string and write past its buffer: never handed to it
    (lambda a: a["masklet"][3][1].__setitem__("counts", a["masklet"][3][1]["counts"] + "P"),
     1, "masklet[3][1]: counts: Value error, counts end inside a number"),
])
def test_bad_masklet_entry_fails_only_that_masklet(root: Path, change: Any, masklet_id: int,
                                                   words: str) -> None:
    before = _rows(root, "sav_000002")
    _edit(root, "sav_000002", change)
    after = _rows(root, "sav_000002")
    bad = [r for r in after if r.status == "failed"]
    assert [(r.masklet_index, r.masklet_id, r.error_kind) for r in bad] == [
        (1, masklet_id, "bad_json")]
    assert words in bad[0].error and bad[0].error.startswith("video sav_000002")
    assert [r for r in after if r.masklet_index != 1 or r.masklet_type != "manual"] == \
        [r for r in before if r.masklet_index != 1 or r.masklet_type != "manual"]


def test_retry_redoes_just_the_masklet_whose_id_was_unusable(root: Path) -> None:
    ref = find_video(root, "sav_000002")
    good = {r.masklet_index: r for r in _rows(root, "sav_000002") if r.masklet_type == "manual"}
    path = root / ref.manual_path
    original = path.read_text()
    raw = json.loads(original)
    raw["masklet_id"][1] = -4
    path.write_text(json.dumps(raw))
    only = {("sav_000002", "manual", -3)}  # the failed row's key
    again = prepare_video(root, ref, CFG, "f" * 16, only)
    assert [(r.masklet_index, r.masklet_id) for r in again.failed] == [(1, -3)]
    assert not again.jobs  # the good masklets are not redone (their rows are kept)
    path.write_text(original)  # fixed: the retry now gives the masklet its real row
    fixed = prepare_video(root, ref, CFG, "f" * 16, only)
    assert not fixed.failed
    assert [j.base["masklet_id"] for j in fixed.jobs] == [good[1].masklet_id]


def test_rle_counts_that_do_not_cover_the_frame_are_bad_rle(root: Path) -> None:
    ref = find_video(root, "sav_000002")
    path = root / ref.manual_path
    ann = load_annotation(path, "sav_000002")
    (m,) = [m for m in masklets_of(ann, "manual") if m.index == 0]
    best = choose_frames(m).max_area_frame // 4
    raw = json.loads(path.read_text())
    raw["masklet"][best][0]["counts"] += "1"  # one run more than the frame has pixels
    path.write_text(json.dumps(raw))
    row = next(r for r in _rows(root, "sav_000002") if r.masklet_index == 0
               and r.masklet_type == "manual")
    assert row.error_kind == "bad_rle" and f"annotated frame {best} cover " in row.error
    m = masklets_of(load_annotation(path, "sav_000002"), "manual")[0]
    with pytest.raises(RecordError) as err:  # never handed to pycocotools' decoder
        decode_mask(m, 4 * best)
    assert err.value.kind == "bad_rle"


def test_rle_pixel_counts_reads_pycocotools_format(real_sav_dir: Path) -> None:
    ann = load_annotation(real_sav_dir / "sav_000001_manual.json")
    counts = [rle.counts for row in ann.masklet for rle in row]
    assert set(rle_pixel_counts(counts).tolist()) == {848 * 480}
    good = counts[0]
    got = rle_pixel_counts([good[:-1], good + "1", good, "", "o", good[:-1] + "o" * 8])
    assert got[0] != 848 * 480 and got[1] > 848 * 480 and got[2] == 848 * 480
    assert got[3] == 0 and got[4] == -1 and got[5] == -1


def test_too_many_annotated_frames_and_inf_in_real_file(real_sav_dir: Path,
                                                        tmp_path: Path) -> None:
    raw = json.loads((real_sav_dir / "sav_000001_manual.json").read_text())
    raw["video_frame_count"] = 480.0  # 120 annotated frames at most, the file has 121
    (tmp_path / "sav_000001_manual.json").write_text(json.dumps(raw))
    with pytest.raises(RecordError) as err:
        load_annotation(tmp_path / "sav_000001_manual.json", "sav_000001")
    assert err.value.kind == "bad_json" and "121 annotated frames" in str(err.value)
    (tmp_path / "sav_000001_manual.json").write_text(
        (real_sav_dir / "sav_000001_manual.json").read_text().replace(
            '"video_frame_count": 483.0', '"video_frame_count": 1e400'))
    rows = _rows(tmp_path, "sav_000001")
    assert [(r.error_kind, r.masklet_id) for r in rows] == [("bad_json", -1)]
    assert "video_frame_count" in rows[0].error
