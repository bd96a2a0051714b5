"""The export as Sa2VA reads it: its data/ tree, both training loaders, its evaluation.

What Sa2VA's code does with our files, written down here from reading it (no code of Sa2VA's
is used or copied; the readers below are ours, written from these rules):

Training, older loader (``VideoSAM2Dataset``, ``data/video_datas/sam_v_final_v3.json`` with SA-V
at ``data/video_datas/sam_v_full/``):
  - every entry of the JSON is one sample; its key is not used;
  - ``video_path`` and ``anno_path`` are joined to the SA-V folder as they are;
  - all frames are read with ``cv2.VideoCapture`` and every 4th is kept; mask positions index
    into that list, so it must have at least ``len(masklet)`` frames;
  - each object key is a position in the annotation's inner ``masklet`` lists (the decoded
    H×W×N stack is indexed with ``int(key)``);
  - the text is ``formated`` in mode ``long``, a random element of ``short_caps`` in mode
    ``short``, either in ``long_short`` (a missing ``short_caps`` is a KeyError).
Training, current loader (``Sa2VA03RefVOS``, ``dataset_type='refsav'``,
``data/video_datas/Ref-SAV.json``): the same, except that
  - after joining, a folder repeated on both sides of ``sav_train`` is removed once
    (``sam_v_full/sav_000/sav_train/sav_000/x`` → ``sam_v_full/sav_train/sav_000/x``);
  - it asserts ``len(frames[::4]) == len(masklet)``, outside any try: a mismatch stops training;
  - it only reads ``formated``.
Evaluation (``--dataset REF_SAV``, ``data/ref_sav_eval/``):
  - ``meta_expressions_valid.json`` is ``{"videos": {vid: {"frames": [names], "height",
    "width", "expressions": {exp_id: {"exp", "anno_id": [...], "type_id"}}}}}``; frames are
    ``videos/{vid}/{name}.jpg``;
  - ``mask_dict.json`` is ``{str(anno_id): [RLE or null per frame of the video]}``;
  - results are averaged per ``type_id`` (0 long, 1 short) and overall is their mean, so a
    benchmark without one type scores NaN.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from export_data import cv2_frames, make_export
from factories import write_fake_run
from pycocotools import mask as mask_utils
from typer.testing import CliRunner

from refsav_pipeline.cli import app
from refsav_pipeline.config import ExportConfig
from refsav_pipeline.export.check import check_export, loader_paths
from refsav_pipeline.export.frame_counts import CountCache, cv2_frame_count
from refsav_pipeline.export.sa2va import export_sa2va, export_train
from refsav_pipeline.export.short_caps import derive_short, short_caps
from refsav_pipeline.review.select import benchmark_chunks, load_benchmark
from refsav_pipeline.sav.chunks import chunk_of, parse_chunks
from refsav_pipeline.sav.synth import synth_sav, write_mp4

runner = CliRunner()


@pytest.fixture(scope="module")
def ex(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A reviewed run exported into a Sa2VA checkout's data/ tree."""
    made = make_export(synth_root, tmp_path_factory.mktemp("loaders"))
    sa2va_root = made["out"].parent / "Sa2VA"
    made["train_sa2va"], made["bench_sa2va"] = export_sa2va(made["out"], sa2va_root,
                                                            layout="sa2va")
    made["sa2va_root"] = sa2va_root
    return made



def _current_loader_path(joined: str) -> str:
    parts = joined.split("/")
    i = parts.index("sav_train") if "sav_train" in parts else -1
    if 0 < i < len(parts) - 1 and parts[i - 1] == parts[i + 1]:
        del parts[i - 1]
    return "/".join(parts)


def _load_like_sa2va(sam2_folder: str, expression_file: Path, mode: str,
                     current: bool) -> list[dict]:
    """Every object of every entry as the loader would train on it."""
    rng = random.Random(0)
    samples = []
    for entry in json.loads(expression_file.read_text()).values():
        video = f"{sam2_folder}/{entry['video_path']}"
        anno = f"{sam2_folder}/{entry['anno_path']}"
        if current:
            video, anno = _current_loader_path(video), _current_loader_path(anno)
        frames = cv2_frames(Path(video))[::4]
        masklet = json.loads(Path(anno).read_text())["masklet"]
        if current:
            assert len(frames) == len(masklet)
        stacks = [mask_utils.decode(per_frame) for per_frame in masklet]  # H x W x N each
        for key, info in entry["objects"].items():
            if mode == "long" or (mode == "long_short" and rng.random() < 0.5):
                text = info["formated"]
            else:
                text = info["short_caps"][rng.randrange(len(info["short_caps"]))]
            samples.append({"anno": anno, "key": int(key), "text": text,
                            "frames": [frames[f] for f in range(len(masklet))],
                            "masks": [s[:, :, int(key)] for s in stacks]})
    return samples


def test_sa2va_tree_is_what_its_configs_name(ex: dict, synth_root: Path) -> None:
    data = ex["sa2va_root"] / "data"
    video_datas = data / "video_datas"
    assert (video_datas / "sam_v_full").is_symlink()
    assert (video_datas / "sam_v_full").resolve() == synth_root.resolve()
    new, old = video_datas / "Ref-SAV.json", video_datas / "sam_v_final_v3.json"
    assert new.read_bytes() == old.read_bytes() == (ex["dest"] / "Ref-SAV.json").read_bytes()
    for name in ("meta_expressions_valid.json", "mask_dict.json"):
        assert (data / "ref_sav_eval" / name).read_bytes() == \
            (ex["dest"] / "ref_sav_eval" / name).read_bytes()
    assert sorted(p.name for p in (data / "ref_sav_eval" / "videos").iterdir()) == \
        sorted(json.loads((data / "ref_sav_eval" / "meta_expressions_valid.json")
                          .read_text())["videos"])


@pytest.mark.parametrize(("mode", "current"), [("long", True), ("long", False),
                                               ("short", False), ("long_short", False)])
def test_both_training_loaders_read_every_object_in_every_mode(ex: dict, synth_root: Path,
                                                               mode: str, current: bool) -> None:
    video_datas = ex["sa2va_root"] / "data" / "video_datas"
    name = "Ref-SAV.json" if current else "sam_v_final_v3.json"
    samples = _load_like_sa2va(f"{video_datas}/sam_v_full", video_datas / name, mode, current)
    rows = {(r.anno_path, r.masklet_index): r for r in ex["rows"]}
    assert len(samples) == ex["train_sa2va"].objects > 0
    for s in samples:
        row = rows[(str(Path(s["anno"]).relative_to(video_datas / "sam_v_full")), s["key"])]
        assert row.status == "ok" and row.video_id not in ex["bench_videos"]
        truth = json.loads((synth_root / row.anno_path).read_text())
        assert truth["masklet_id"][s["key"]] == row.masklet_id
        for f, mask in enumerate(s["masks"]):
            np.testing.assert_array_equal(mask, mask_utils.decode(truth["masklet"][f][s["key"]]))
        assert s["text"] in ({row.video_caption} if mode == "long"
                             else {row.video_caption, row.object_caption.rstrip(".")})
        assert all(fr.shape[:2] == (row.height, row.width) for fr in s["frames"])
    if mode == "short":
        assert {s["text"] for s in samples} <= {r.object_caption.rstrip(".")
                                                for r in ex["rows"] if r.status == "ok"}


def test_evaluation_reads_both_expression_types(ex: dict) -> None:
    bench = ex["sa2va_root"] / "data" / "ref_sav_eval"
    meta = json.loads((bench / "meta_expressions_valid.json").read_text())["videos"]
    masks = json.loads((bench / "mask_dict.json").read_text())
    scores: dict[int, list[float]] = {0: [], 1: []}
    for vid, v in meta.items():
        for exp_id, e in v["expressions"].items():
            assert f"{vid}_{exp_id}".rsplit("_", 1) == [vid, exp_id]
            gt = np.zeros((len(v["frames"]), v["height"], v["width"]), np.uint8)
            for a in e["anno_id"]:
                for f, rle in enumerate(masks[str(a)]):
                    if rle:
                        gt[f] += mask_utils.decode(rle)
                assert len(masks[str(a)]) == len(v["frames"])
            for name in v["frames"]:
                assert (bench / "videos" / vid / f"{name}.jpg").is_file()
            pred = gt.copy()  # ground truth as the prediction
            inter, union = (gt & pred).sum(), (gt | pred).sum()
            scores[e["type_id"]].append(inter / union)
    assert scores[0] and scores[1]
    assert np.mean(scores[0]) == np.mean(scores[1]) == 1.0


def test_sa2va_tree_passes_strict_check(ex: dict) -> None:
    report = check_export(ex["sa2va_root"])  # SA-V root found through data/video_datas/sam_v_full
    assert report.layout == "sa2va"
    assert report.problems == [] and report.warnings == []
    res = runner.invoke(app, ["export", "check", str(ex["sa2va_root"]), "--strict"])
    assert res.exit_code == 0, res.output
    assert "sa2va layout, strict" in res.output


def test_cli_writes_the_sa2va_tree(ex: dict, synth_root: Path, tmp_path: Path) -> None:
    for _ in range(2):  # the second time, the link and the exporter's own folder are reused
        res = runner.invoke(app, ["export", "sa2va", "--out", str(ex["out"]), "--to",
                                  str(tmp_path), "--layout", "sa2va"])
        assert res.exit_code == 0, res.output
    assert (tmp_path / "data/video_datas/sam_v_full").resolve() == synth_root.resolve()
    assert "data/video_datas/sam_v_final_v3.json" in res.output
    # an existing sam_v_full that is something else is never replaced
    other = tmp_path / "other"
    (other / "data/video_datas/sam_v_full").mkdir(parents=True)
    res = runner.invoke(app, ["export", "sa2va", "--out", str(ex["out"]), "--to", str(other),
                              "--layout", "sa2va", "--part", "train"])
    assert res.exit_code != 0 and "sam_v_full exists" in " ".join(res.output.split())
    assert not any((other / "data/video_datas/sam_v_full").iterdir())
    assert not (other / "data/video_datas/Ref-SAV.json").exists()


@pytest.mark.parametrize("layout", ["sa2va", "flat"])
def test_a_training_file_we_did_not_write_is_never_replaced(ex: dict, tmp_path: Path,
                                                            layout: str) -> None:
    where = tmp_path / ("data/video_datas" if layout == "sa2va" else "")
    where.mkdir(parents=True, exist_ok=True)
    published = where / "Ref-SAV.json"
    published.write_text('{"sav_000001": {"objects": {}}}')
    res = runner.invoke(app, ["export", "sa2va", "--out", str(ex["out"]), "--to",
                              str(tmp_path), "--layout", layout, "--part", "train"])
    assert res.exit_code != 0
    assert "was not written by refsav export" in " ".join(res.output.split())
    assert published.read_text() == '{"sav_000001": {"objects": {}}}'
    assert not (where / "sam_v_full").exists() and not (where / "sam_v_final_v3.json").exists()
    published.unlink()
    for _ in range(2):  # our own file is replaced
        res = runner.invoke(app, ["export", "sa2va", "--out", str(ex["out"]), "--to",
                                  str(tmp_path), "--layout", layout, "--part", "train"])
        assert res.exit_code == 0, res.output


def test_missing_sa2va_pieces_are_problems(ex: dict, tmp_path: Path) -> None:
    root = tmp_path / "Sa2VA"
    shutil.copytree(ex["sa2va_root"], root, symlinks=True)
    (root / "data/video_datas/sam_v_final_v3.json").write_text("{}")
    (root / "data/video_datas/sam_v_full").unlink()
    kinds = {p.kind for p in check_export(root).problems}
    assert kinds == {"train_copy", "sav_link"}


# --- benchmark expression types ---------------------------------------------------------------

def _retype(dest: Path, keep: int) -> None:
    path = dest / "ref_sav_eval" / "meta_expressions_valid.json"
    meta = json.loads(path.read_text())
    for v in meta["videos"].values():
        for e in v["expressions"].values():
            e["type_id"] = keep
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize(("keep", "missing"), [(0, "no_short"), (1, "no_long")])
def test_benchmark_without_one_type_warns_and_fails_strict(ex: dict, tmp_path: Path, keep: int,
                                                           missing: str) -> None:
    dest = tmp_path / "dest"
    shutil.copytree(ex["dest"] / "ref_sav_eval", dest / "ref_sav_eval")
    _retype(dest, keep)
    report = check_export(dest)
    assert report.problems == [] and [w.kind for w in report.warnings] == [missing]
    assert report.passed() and not report.passed(strict=True)
    res = runner.invoke(app, ["export", "check", str(dest)])
    assert res.exit_code == 0 and f"warning: [{missing}]" in res.output
    res = runner.invoke(app, ["export", "check", str(dest), "--strict"])
    assert res.exit_code == 1 and "NaN" in res.output


def test_train_without_sav_root_or_short_caps_warns(ex: dict, synth_root: Path,
                                                    tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    data = json.loads((ex["dest"] / "Ref-SAV.json").read_text())
    assert all(o["short_caps"] for e in data.values() for o in e["objects"].values())
    (dest / "Ref-SAV.json").write_text(json.dumps(data))
    assert [w.kind for w in check_export(dest).warnings] == ["train_unverified"]
    for e in data.values():
        for o in e["objects"].values():
            del o["short_caps"]
    (dest / "Ref-SAV.json").write_text(json.dumps(data))
    report = check_export(dest, synth_root)
    assert report.problems == [] and [w.kind for w in report.warnings] == ["no_short_caps"]


# --- training paths ---------------------------------------------------------------------------

def test_paths_are_checked_where_each_loader_opens_them(synth_root: Path, tmp_path: Path) -> None:
    # the rule as written in this module's docstring, on the dedup case and a plain path
    assert _current_loader_path("r/sav_000/sav_train/sav_000/x.mp4") == "r/sav_train/sav_000/x.mp4"
    for rel in ("sav_000/sav_train/sav_000/x.mp4", "sav_train/sav_000/x.mp4", "x.mp4"):
        got = loader_paths(Path("/r"), rel)
        assert got["older loader"] == Path("/r") / rel
        assert got["current loader"].as_posix() == _current_loader_path(f"/r/{rel}")
    # A flat SA-V root: single-component paths are valid when the files are there.
    (mp4,) = synth_root.rglob("sav_000001.mp4")
    flat = tmp_path / "flat"
    flat.mkdir()
    for f in mp4.parent.glob("sav_000001*"):
        shutil.copy(f, flat / f.name)
    dest = tmp_path / "dest"
    dest.mkdir()
    entry = {"video_path": "sav_000001.mp4", "anno_path": "sav_000001_manual.json",
             "objects": {"0": {"formated": "a long text", "short_caps": ["A thing"]}}}
    (dest / "Ref-SAV.json").write_text(json.dumps({"sav_000001": entry}))
    report = check_export(dest, flat)
    assert report.problems == [] and report.warnings == []
    # Files only where the current loader looks: the older loader would not find them.
    dup = {"video_path": "sav_000/sav_train/sav_000/sav_000001.mp4",
           "anno_path": "sav_000/sav_train/sav_000/sav_000001_manual.json",
           "objects": entry["objects"]}
    (dest / "Ref-SAV.json").write_text(json.dumps({"sav_000001": dup}))
    problems = check_export(dest, synth_root).problems
    assert {p.kind for p in problems} == {"train_missing_file"}
    assert "older loader" in problems[0].message


# --- frames every 4th vs masklet ----------------------------------------------------------------

def test_cv2_count_is_what_read_delivers(synth_root: Path) -> None:
    for mp4 in sorted(synth_root.rglob("*.mp4")):
        assert cv2_frame_count(mp4) == len(cv2_frames(mp4))
    assert cv2_frame_count(synth_root / "missing.mp4") == 0


def test_counts_are_cached_until_the_file_changes(synth_root: Path, tmp_path: Path) -> None:
    (mp4,) = shutil.copytree(synth_root / "sav_train", tmp_path / "sav").rglob("sav_000001.mp4")
    cache_file = tmp_path / "counts.json"
    first = CountCache(cache_file)
    n = first.get(mp4, cv2_frame_count)
    first.save()
    calls = []
    assert CountCache(cache_file).get(mp4, lambda p: calls.append(p) or -1) == n and not calls
    frames = [cv2.cvtColor(f, cv2.COLOR_BGR2RGB) for f in cv2_frames(mp4)]
    write_mp4(mp4, frames[:-1])
    assert CountCache(cache_file).get(mp4, cv2_frame_count) == n - 1


def _with_short_video(synth_root: Path, root: Path, video_id: str) -> Path:
    """A copy of the SA-V root whose video is re-encoded one frame short: 4k frames read
    against 4k+1 annotated, so every 4th frame gives k against k+1 masks."""
    shutil.copytree(synth_root, root)
    (mp4,) = root.rglob(f"{video_id}.mp4")
    frames = [cv2.cvtColor(f, cv2.COLOR_BGR2RGB) for f in cv2_frames(mp4)]
    write_mp4(mp4, frames[:-1])
    return root


def test_export_leaves_out_entries_whose_frames_disagree(synth_root: Path,
                                                         tmp_path: Path) -> None:
    bad = sorted(synth_root.rglob("*.mp4"))[1].stem
    root = _with_short_video(synth_root, tmp_path / "sav", bad)
    ann = json.loads(next(root.rglob(f"{bad}_manual.json")).read_text())
    (mp4,) = root.rglob(f"{bad}.mp4")
    assert len(cv2_frames(mp4)[::4]) == len(ann["masklet"]) - 1
    out = tmp_path / "out"
    rows = write_fake_run(root, out)
    t = export_train(out, tmp_path / "dest", ExportConfig(frame_count_workers=2))
    kinds = {r.masklet_type for r in rows if r.video_id == bad}
    expected = {bad if k == "manual" else f"{bad}_{k}" for k in kinds}
    assert set(t.frame_mismatch) == expected
    assert all(f"reads {len(ann['masklet']) * 4 - 4} frames" in why
               for why in t.frame_mismatch.values())
    data = json.loads(t.path.read_text())
    assert not any(bad in e["video_path"] for e in data.values())
    assert {Path(e["video_path"]).stem for e in data.values()} == \
        {r.video_id for r in rows if r.status == "ok"} - {bad}
    assert check_export(tmp_path / "dest", root).problems == []
    # the cache holds the counts: a second export gives the same answer
    assert (out / "export" / "cv2_frame_counts.json").is_file()
    again = export_train(out, tmp_path / "again")
    assert again.frame_mismatch == t.frame_mismatch
    assert (tmp_path / "again/Ref-SAV.json").read_bytes() == t.path.read_bytes()
    # the CLI reports the left-out entries by video id
    res = runner.invoke(app, ["export", "sa2va", "--out", str(out), "--to",
                              str(tmp_path / "cli"), "--part", "train"])
    assert res.exit_code == 0, res.output
    assert f"left out {bad}:" in " ".join(res.output.split())


def test_check_finds_entries_whose_frames_disagree(ex: dict, synth_root: Path,
                                                   tmp_path: Path) -> None:
    data = json.loads((ex["dest"] / "Ref-SAV.json").read_text())
    bad = Path(next(iter(data.values()))["video_path"]).stem
    root = _with_short_video(synth_root, tmp_path / "sav", bad)
    problems = check_export(ex["dest"], root).problems
    assert {p.kind for p in problems} == {"train_frames"}
    assert {p.where for p in problems} == {f"Ref-SAV.json[{k!r}]" for k in data if bad in k}
    res = runner.invoke(app, ["export", "check", str(ex["dest"]), "--sav-root", str(root)])
    assert res.exit_code == 1 and "[train_frames]" in res.output


# --- short_caps -------------------------------------------------------------------------------

@pytest.mark.parametrize(("caption", "short"), [
    ("A red circle object. It is round.", "A red circle object"),
    ("The image shows a brown dog with a white collar, sitting on grass.",
     "A brown dog with a white collar"),
    ("This is a silver car that is parked near the curb.", "A silver car"),
    ("In the image, the object is a tall green plant; its leaves are wide.", "A tall green plant"),
    ("a man in a blue shirt who is holding a cup", "A man in a blue shirt"),
    ("one two three four five six seven eight nine ten eleven twelve thirteen",
     "One two three four five six seven eight nine ten eleven twelve"),
])
def test_short_expression_is_the_first_clause(caption: str, short: str) -> None:
    assert derive_short(caption) == short


def test_short_caps_never_empty() -> None:
    assert short_caps("A red cup.", "long") == ["A red cup"]
    assert short_caps(None, "A blue box moving left. More.") == ["A blue box moving left"]
    assert short_caps("  ", "") == ["Object"]
    assert short_caps("The image shows.", "...") == ["Object"]


# --- chunks -----------------------------------------------------------------------------------

def test_chunk_names_and_ranges() -> None:
    assert parse_chunks("sav_055-sav_056") == ["sav_055", "sav_056"]
    assert parse_chunks("sav_010, sav_008-sav_009,sav_010") == ["sav_008", "sav_009", "sav_010"]
    for bad in ("", "sav_056-sav_055", "sav_05-sav_056", "train", "sav_001-x"):
        with pytest.raises(ValueError):
            parse_chunks(bad)
    assert chunk_of("sav_train/sav_055/sav_055123.mp4") == "sav_055"
    assert chunk_of("sav_055123.mp4") is None


@pytest.fixture(scope="module")
def chunked(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    """Six videos in three chunks (sav_000, sav_001, sav_002), captioned, no benchmark yet."""
    base = tmp_path_factory.mktemp("chunks")
    synth_sav(base / "sav", videos=6, seed=3, videos_per_folder=2)
    rows = write_fake_run(base / "sav", base / "out")
    return base / "out", rows


def test_benchmark_from_chunks_and_train_without_them(chunked: tuple[Path, list],
                                                      tmp_path: Path) -> None:
    out, rows = chunked
    out = shutil.copytree(out, tmp_path / "out")
    res = runner.invoke(app, ["benchmark", "select", "--out", str(out), "--count", "3",
                              "--chunks", "sav_002-sav_002", "--double-review", "0"])
    assert res.exit_code == 0, res.output
    samples = load_benchmark(out)
    assert samples and {chunk_of(s.video_path) for s in samples} == {"sav_002"}
    assert benchmark_chunks(out) == ["sav_002"]
    chunk = {r.video_id: chunk_of(r.video_path) for r in rows}
    # by default train leaves out the benchmark's whole chunks, selected videos or not
    t = export_train(out, tmp_path / "a")
    data = json.loads(t.path.read_text())
    trained = {Path(e["video_path"]).stem for e in data.values()}
    assert {chunk[v] for v in trained} == {"sav_000", "sav_001"}
    assert t.excluded_chunks == ["sav_002"]
    assert t.excluded_chunk_rows == sum(r.status == "ok" and chunk[r.video_id] == "sav_002"
                                        and r.video_id not in {s.video_id for s in samples}
                                        for r in rows)
    # more chunks can be held out
    res = runner.invoke(app, ["export", "sa2va", "--out", str(out), "--to", str(tmp_path / "b"),
                              "--part", "train", "--exclude-chunks", "sav_000"])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "b" / "Ref-SAV.json").read_text())
    assert {chunk[Path(e["video_path"]).stem] for e in data.values()} == {"sav_001"}
    assert "sav_000, sav_002" in " ".join(res.output.split())


def test_chunk_errors_exit_2(chunked: tuple[Path, list], tmp_path: Path) -> None:
    out = shutil.copytree(chunked[0], tmp_path / "out")
    res = runner.invoke(app, ["benchmark", "select", "--out", str(out), "--chunks", "sav_007"])
    assert res.exit_code == 2
    assert "error: no eligible ok rows in chunks sav_007" in " ".join(res.output.split())
    res = runner.invoke(app, ["benchmark", "select", "--out", str(out), "--chunks", "x-y"])
    assert res.exit_code == 2 and "error:" in res.output
    assert not (out / "benchmark" / "benchmark.parquet").exists()
    res = runner.invoke(app, ["export", "sa2va", "--out", str(out), "--to", str(tmp_path / "d"),
                              "--exclude-chunks", "sav_9-sav_1"])
    assert res.exit_code == 2 and "error: --exclude-chunks" in res.output


def test_paper_config_selects_manual_masklets_only() -> None:
    from refsav_pipeline.config import PipelineConfig

    root = Path(__file__).resolve().parents[1]
    cfg = PipelineConfig.load(root / "configs" / "refsav-internvl2-76b-qwen2-72b.yaml")
    assert cfg.selection.masklet_types == ["manual"]
    text = (root / "configs" / "refsav-internvl2-76b-qwen2-72b.yaml").read_text()
    auto = text.replace("masklet_types: [manual]", "masklet_types: [manual, auto]")
    assert auto != text  # one line away
    assert PipelineConfig.model_validate(yaml.safe_load(auto)).selection.masklet_types == \
        ["manual", "auto"]
