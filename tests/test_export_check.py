"""The checker passes a good export and names each corruption we introduce."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from export_data import make_export
from pycocotools import mask as mask_utils
from typer.testing import CliRunner

from refsav_pipeline.cli import app
from refsav_pipeline.export.check import Problem, check_export

BENCH = "ref_sav_eval"


@pytest.fixture(scope="module")
def good(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_export(synth_root, tmp_path_factory.mktemp("check"))["dest"]


@pytest.fixture
def dest(good: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "dest"
    shutil.copytree(good, copy)
    return copy


def problems_of(dest: Path, sav_root: Path | None = None) -> list[Problem]:
    return check_export(dest, sav_root).problems


def _edit(path: Path, change: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _meta(dest: Path) -> dict:
    return json.loads((dest / BENCH / "meta_expressions_valid.json").read_text())


def _first(dest: Path) -> tuple[str, dict]:
    vid, v = next(iter(_meta(dest)["videos"].items()))
    return vid, v


def _kinds(problems: list[Problem]) -> set[str]:
    return {p.kind for p in problems}


def test_good_export_has_no_problems(good: Path, synth_root: Path) -> None:
    assert problems_of(good, synth_root) == []


def test_missing_frame(dest: Path) -> None:
    vid, v = _first(dest)
    (dest / BENCH / "videos" / vid / f"{v['frames'][3]}.jpg").unlink()
    problems = problems_of(dest)
    assert _kinds(problems) == {"missing_frame"}
    assert f"videos/{vid}/{v['frames'][3]}.jpg" in str(problems[0])


def test_frame_of_the_wrong_size(dest: Path) -> None:
    vid, v = _first(dest)
    path = dest / BENCH / "videos" / vid / f"{v['frames'][0]}.jpg"
    cv2.imwrite(str(path), cv2.resize(cv2.imread(str(path)), (v["width"] // 2, v["height"])))
    assert _kinds(problems_of(dest)) == {"frame_size"}


def test_mask_of_the_wrong_size(dest: Path) -> None:
    vid, v = _first(dest)
    anno = str(next(iter(v["expressions"].values()))["anno_id"][0])

    def shrink(masks: dict) -> None:
        f = next(i for i, m in enumerate(masks[anno]) if m is not None)
        small = np.zeros((v["height"] - 2, v["width"]), np.uint8, order="F")
        small[5:20, 5:20] = 1
        rle = mask_utils.encode(small)
        masks[anno][f] = {"size": list(rle["size"]), "counts": rle["counts"].decode()}

    _edit(dest / BENCH / "mask_dict.json", shrink)
    problems = problems_of(dest)
    assert _kinds(problems) == {"mask_size"}
    assert f"mask_dict.json[{anno}]" in problems[0].where


def test_dangling_and_orphan_anno_ids(dest: Path) -> None:
    vid, v = _first(dest)
    anno = str(next(iter(v["expressions"].values()))["anno_id"][0])
    _edit(dest / BENCH / "mask_dict.json", lambda m: m.pop(anno))
    problems = problems_of(dest)
    assert "dangling_anno_id" in _kinds(problems)
    assert all(p.kind == "dangling_anno_id" for p in problems)
    assert any(f"anno_id {anno}" in p.message for p in problems)


def test_orphan_mask_entry(dest: Path) -> None:
    _edit(dest / BENCH / "mask_dict.json", lambda m: m.update({"999": m[next(iter(m))]}))
    assert _kinds(problems_of(dest)) == {"orphan_mask"}


def test_bad_type_id_and_exp_id(dest: Path) -> None:
    vid, _ = _first(dest)

    def corrupt(meta: dict) -> None:
        exps = meta["videos"][vid]["expressions"]
        exps["x_1"] = dict(exps["0"], type_id=2)

    _edit(dest / BENCH / "meta_expressions_valid.json", corrupt)
    assert _kinds(problems_of(dest)) == {"type_id", "meta_schema"}


def test_undecodable_rle(dest: Path) -> None:
    def corrupt(masks: dict) -> None:
        entry = masks[next(iter(masks))]
        f = next(i for i, m in enumerate(entry) if m is not None)
        entry[f]["counts"] = "!!!"

    _edit(dest / BENCH / "mask_dict.json", corrupt)
    assert _kinds(problems_of(dest)) == {"bad_rle"}


def test_unpadded_frame_names_are_caught(dest: Path) -> None:
    vid, v = _first(dest)
    folder = dest / BENCH / "videos" / vid
    for name in v["frames"]:
        (folder / f"{name}.jpg").rename(folder / f"{int(name)}.jpg")
    _edit(dest / BENCH / "meta_expressions_valid.json",
          lambda m: m["videos"][vid].update(frames=[str(int(f)) for f in v["frames"]]))
    problems = problems_of(dest)
    assert _kinds(problems) == {"meta_frames"}
    assert "sorted" in problems[0].message


def test_train_paths_and_leaks(dest: Path, synth_root: Path) -> None:
    vid, _ = _first(dest)

    def corrupt(data: dict) -> None:
        key = next(iter(data))
        data[key]["video_path"] = "sav_train/sav_000/missing.mp4"
        data["leak"] = dict(data[key], video_path=f"sav_train/sav_000/{vid}.mp4")
        # valid as a path, but not where this SA-V root has the file
        data["flat"] = dict(data[key], video_path=f"{vid}.mp4")
        data["outside"] = dict(data[key], video_path=f"../{vid}.mp4")
        data[key]["objects"]["99"] = {"formated": "too far", "short_caps": ["x"]}

    _edit(dest / "Ref-SAV.json", corrupt)
    assert _kinds(problems_of(dest)) == {"leak", "train_path"}
    problems = problems_of(dest, synth_root)
    # "leak" pairs another video with the first entry's annotation: frames disagree too
    assert _kinds(problems) == {"train_missing_file", "train_index", "leak", "train_path",
                                "train_frames"}
    assert [p.where for p in problems if p.kind == "train_path"] == ["Ref-SAV.json['outside']"]
    assert any(p.where == "Ref-SAV.json['flat']" for p in problems
               if p.kind == "train_missing_file")


def test_cli_lists_problems_and_exits_1(dest: Path) -> None:
    vid, v = _first(dest)
    (dest / BENCH / "videos" / vid / f"{v['frames'][0]}.jpg").unlink()
    res = CliRunner().invoke(app, ["export", "check", str(dest)])
    assert res.exit_code == 1
    assert "[missing_frame]" in res.output and "1 problem" in res.output
    res = CliRunner().invoke(app, ["export", "check", str(dest / "nothing")])
    assert res.exit_code == 2 and "not a folder" in res.output
