"""Export to Sa2VA's formats, re-read by an independent loader written here (not the exporter's
code): masks against the SA-V JSON, frames against an OpenCV decode, train JSON against rows."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from export_data import cv2_frames, decide, make_export
from pycocotools import mask as mask_utils
from typer.testing import CliRunner

from refsav_pipeline.cli import app
from refsav_pipeline.config import ExportConfig
from refsav_pipeline.export.check import check_export
from refsav_pipeline.export.sa2va import export_benchmark, export_train
from refsav_pipeline.review.export import VALIDATED_SCHEMA, export_validated
from refsav_pipeline.review.paths import validated_path
from refsav_pipeline.review.select import load_benchmark
from refsav_pipeline.review.store import DecisionStore


@pytest.fixture(scope="module")
def ex(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    return make_export(synth_root, tmp_path_factory.mktemp("export"))


def _source(synth_root: Path, video_id: str, kind: str) -> dict:
    """The SA-V annotation JSON, found and parsed without the package's reader."""
    (path,) = synth_root.rglob(f"{video_id}_{kind}.json")
    return json.loads(path.read_text())


def _bench(ex: dict) -> tuple[dict, dict]:
    root = ex["dest"] / "ref_sav_eval"
    meta = json.loads((root / "meta_expressions_valid.json").read_text())
    masks = json.loads((root / "mask_dict.json").read_text())
    return meta, masks


def test_export_passes_the_checker(ex: dict, synth_root: Path) -> None:
    report = check_export(ex["dest"], synth_root)
    assert report.problems == [] and report.warnings == [] and report.passed(strict=True)
    assert ex["bench"].videos == len(ex["bench_videos"])
    assert ex["bench"].long_expressions == len(ex["records"])
    assert ex["bench"].warnings == []


def test_benchmark_masks_and_expressions_match_the_source(ex: dict, synth_root: Path) -> None:
    meta, masks = _bench(ex)
    videos = meta["videos"]
    assert set(videos) == {r["video_id"] for r in ex["records"]}
    by_long = {r["video_caption"]: r for r in ex["records"]}
    seen = set()
    for vid, v in videos.items():
        manual = _source(synth_root, vid, "manual")
        n_ann = len(manual["masklet"])
        assert v["frames"] == [f"{4 * f:05d}" for f in range(n_ann)]
        assert (v["height"], v["width"]) == (int(manual["video_height"]),
                                             int(manual["video_width"]))
        exps = v["expressions"]
        assert all("_" not in k for k in exps)
        longs = [e for e in exps.values() if e["type_id"] == 0]
        shorts = [e for e in exps.values() if e["type_id"] == 1]
        assert len(longs) + len(shorts) == len(exps)
        for e in longs:
            rec = by_long[e["exp"]]  # the reviewer's final video caption, not the model's
            assert rec["video_id"] == vid
            seen.add(e["exp"])
            (anno,) = e["anno_id"]
            assert sorted(s["exp"] for s in shorts if s["anno_id"] == [anno]) == \
                sorted(rec["short_expressions"] or [])
            src = _source(synth_root, vid, rec["masklet_type"])
            k = src["masklet_id"].index(rec["masklet_id"])
            entry = masks[str(anno)]
            assert len(entry) == n_ann
            for f in range(n_ann):
                truth = mask_utils.decode(src["masklet"][f][k])
                if entry[f] is None:
                    assert truth.sum() == 0, f"frame {f}: null but the object is visible"
                else:
                    got = mask_utils.decode(entry[f])
                    assert got.shape == (v["height"], v["width"])
                    assert truth.sum() > 0
                    np.testing.assert_array_equal(got, truth)
        # the second synthetic object leaves the view: some frames must be null
    assert seen == set(by_long)
    all_entries = [m for e in masks.values() for m in e]
    assert any(m is None for m in all_entries) and any(m is not None for m in all_entries)
    assert len({a for v in videos.values() for e in v["expressions"].values()
                for a in e["anno_id"]}) == len(masks) == len(ex["records"])



def test_benchmark_frames_are_the_annotated_24fps_frames(ex: dict, synth_root: Path) -> None:
    meta, _ = _bench(ex)
    unique_matches = 0
    for vid, v in meta["videos"].items():
        (mp4,) = synth_root.rglob(f"{vid}.mp4")
        frames = cv2_frames(mp4)
        for name in v["frames"]:
            jpg = cv2.imread(str(ex["dest"] / "ref_sav_eval" / "videos" / vid / f"{name}.jpg"))
            assert jpg is not None and jpg.shape[:2] == (v["height"], v["width"])
            diffs = np.array([np.abs(jpg.astype(np.int16) - f).mean() for f in frames])
            index = int(name)
            assert diffs[index] < 1.5  # the same picture, up to JPEG loss
            assert diffs[index] <= diffs.min() + 1e-3, f"{vid}/{name} is closer to frame " \
                                                        f"{int(diffs.argmin())}"
            unique_matches += bool(np.sort(diffs)[1] > diffs[index] + 0.05)
    assert unique_matches >= 10  # moving objects make the match unambiguous


def test_train_json_excludes_benchmark_and_keys_by_inner_index(ex: dict,
                                                               synth_root: Path) -> None:
    data = json.loads((ex["dest"] / "Ref-SAV.json").read_text())
    reviewed = {r["video_id"] for r in ex["records"]}
    expected: dict[str, dict] = {}
    for r in ex["rows"]:
        if r.status != "ok" or r.video_id in ex["bench_videos"] | reviewed:
            continue
        # the published file keys manual entries by the bare video id
        key = r.video_id if r.masklet_type == "manual" else f"{r.video_id}_{r.masklet_type}"
        e = expected.setdefault(key, {
            "video_path": r.video_path, "anno_path": r.anno_path, "objects": {}})
        # object caption "A red circle object." -> its first clause, as the short expression
        e["objects"][str(r.masklet_index)] = {"formated": r.video_caption,
                                              "short_caps": [r.object_caption.rstrip(".")]}
    assert data == expected
    assert list(data) == sorted(data)
    assert any(k.endswith("_auto") for k in data) and any("_auto" not in k for k in data)
    assert not {e["video_path"].rsplit("/", 1)[1][:-4] for e in data.values()} \
        & ex["bench_videos"]
    assert any(r.status != "ok" for r in ex["rows"])
    rows = {(r.video_id, r.masklet_type, r.video_caption): r for r in ex["rows"]}
    for key, entry in data.items():
        vid = Path(entry["video_path"]).stem
        kind = "auto" if key.endswith("_auto") else "manual"
        assert entry["anno_path"].endswith(f"{vid}_{kind}.json")
        # Both of Sa2VA's loaders join the paths to their SA-V folder as they are (the current
        # one would only remove a chunk folder repeated around sav_train/, which is absent).
        for name in ("video_path", "anno_path"):
            parts = entry[name].split("/")
            assert parts[0] == "sav_train" and parts.count("sav_train") == 1
            assert (synth_root / entry[name]).is_file()
        src = json.loads((synth_root / entry["anno_path"]).read_text())
        for index, obj in entry["objects"].items():
            row = rows[(vid, kind, obj["formated"])]
            assert src["masklet_id"][int(index)] == row.masklet_id


def test_export_is_deterministic(ex: dict, tmp_path: Path) -> None:
    export_train(ex["out"], tmp_path)
    export_benchmark(ex["out"], tmp_path)
    for rel in ("Ref-SAV.json", "ref_sav_eval/meta_expressions_valid.json",
                "ref_sav_eval/mask_dict.json", "ref_sav_eval/export_manifest.json"):
        assert (tmp_path / rel).read_bytes() == (ex["dest"] / rel).read_bytes(), rel


def test_export_does_not_depend_on_the_validated_files_order(ex: dict, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(ex["out"], out)
    path = validated_path(out)
    table = pq.read_table(path, schema=VALIDATED_SCHEMA)
    pq.write_table(table.take(list(range(table.num_rows))[::-1]), path)
    export_benchmark(out, tmp_path)
    for rel in ("ref_sav_eval/meta_expressions_valid.json", "ref_sav_eval/mask_dict.json",
                "ref_sav_eval/export_manifest.json"):
        assert (tmp_path / rel).read_bytes() == (ex["dest"] / rel).read_bytes(), rel
    pq.write_table(pa.concat_tables([table, table.slice(0, 1)]), path)
    with pytest.raises(ValueError, match="more than once"):
        export_benchmark(out, tmp_path)


def test_long_expression_is_a_config_choice(ex: dict, tmp_path: Path) -> None:
    export_train(ex["out"], tmp_path, ExportConfig(long_expression="scene+video"))
    data = json.loads((tmp_path / "Ref-SAV.json").read_text())
    texts = {o["formated"] for e in data.values() for o in e["objects"].values()}
    ok = [r for r in ex["rows"] if r.status == "ok" and r.video_id not in ex["bench_videos"]]
    assert texts == {f"{r.scene_caption} {r.video_caption}" for r in ok}
    shorts = {s for e in data.values() for o in e["objects"].values() for s in o["short_caps"]}
    assert shorts == {r.object_caption.rstrip(".") for r in ok}
    export_benchmark(ex["out"], tmp_path, ExportConfig(long_expression="object"))
    meta = json.loads((tmp_path / "ref_sav_eval/meta_expressions_valid.json").read_text())
    longs = {e["exp"] for v in meta["videos"].values() for e in v["expressions"].values()
             if e["type_id"] == 0}
    assert longs == {r["object_caption"] for r in ex["records"]}


def test_benchmark_never_overwrites_a_foreign_folder(ex: dict, tmp_path: Path) -> None:
    (tmp_path / "ref_sav_eval").mkdir()
    (tmp_path / "ref_sav_eval" / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        export_benchmark(ex["out"], tmp_path)
    assert (tmp_path / "ref_sav_eval" / "mine.txt").read_text() == "keep me"


def test_reviewed_videos_stay_out_of_train_even_without_a_selection(ex: dict,
                                                                   tmp_path: Path) -> None:
    # Reviewed samples are benchmark objects: their videos never enter train, even if the
    # selection file is missing.
    out = tmp_path / "out"
    shutil.copytree(ex["out"], out)
    (out / "benchmark" / "benchmark.parquet").unlink()
    t = export_train(out, tmp_path / "dest")
    data = json.loads(t.path.read_text())
    assert not {e["video_path"].rsplit("/", 1)[1][:-4] for e in data.values()} & \
        {r["video_id"] for r in ex["records"]}


def test_cli_export_and_check(ex: dict, synth_root: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["export", "sa2va", "--out", str(ex["out"]), "--to",
                              str(tmp_path), "--part", "train", "--long-expression", "scene"])
    assert res.exit_code == 0, res.output
    assert not (tmp_path / "ref_sav_eval").exists()
    data = json.loads((tmp_path / "Ref-SAV.json").read_text())
    assert all(o["formated"].endswith("in the middle of the scene.")
               for e in data.values() for o in e["objects"].values())
    res = runner.invoke(app, ["export", "check", str(tmp_path), "--sav-root", str(synth_root)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["export", "sa2va", "--out", str(tmp_path / "nope"), "--to",
                              str(tmp_path / "x"), "--part", "benchmark"])
    assert res.exit_code == 2 and "does not exist" in res.output


def test_long_rejected_objects_keep_only_their_short_expressions(ex: dict, synth_root: Path,
                                                                 tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(ex["out"], out)
    # A later reviewer rejects the long text of an object that has short expressions: the
    # review keeps the object for its short expressions only (long_accepted false).
    rejected = next(r for r in ex["records"] if r["short_expressions"])
    key = (rejected["video_id"], rejected["masklet_type"], rejected["masklet_id"])
    sample = next(s for s in load_benchmark(out) if s.key == key)
    decide(DecisionStore.for_run(out), sample, "carol", "reject", reason="wrong motion")
    _, validated = export_validated(out)
    assert [v.key for v in validated if not v.long_accepted] == [key]
    b = export_benchmark(out, tmp_path / "dest")
    assert b.long_expressions == len(ex["records"]) - 1 and b.warnings == []
    assert check_export(tmp_path / "dest").problems == []
    meta = json.loads((tmp_path / "dest/ref_sav_eval/meta_expressions_valid.json").read_text())
    exps = [e for e in meta["videos"][rejected["video_id"]]["expressions"].values()]
    assert rejected["video_caption"] not in {e["exp"] for e in exps}
    shorts = [e for e in exps if e["exp"] in rejected["short_expressions"]]
    assert len(shorts) == 2 and all(e["type_id"] == 1 for e in shorts)
