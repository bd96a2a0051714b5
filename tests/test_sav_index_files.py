"""The SA-V index on a messy file system: symlinked chunks and files are followed (once, even
in a loop), FIFOs, devices and folders named like files are refused without being opened,
and what is skipped is counted; a video that hangs the CPU stage fails its rows on time."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from refsav_pipeline.cli import app
from refsav_pipeline.config import PipelineConfig
from refsav_pipeline.pipeline.prepare import prepare_video_within
from refsav_pipeline.sav.index import (
    BROKEN_LINK,
    LINK_LOOP,
    NOT_REGULAR,
    SavVideoRef,
    scan_sav_root,
)
from refsav_pipeline.sav.synth import synth_sav


@pytest.fixture
def spread(tmp_path: Path) -> tuple[Path, list[str]]:
    """A root whose second chunk lives on "another disk" behind a symlink."""
    made = synth_sav(tmp_path / "disk1", videos=4, seed=3)
    ids = sorted(v.video_id for v in made)
    chunks = sorted(p for p in (tmp_path / "disk1").rglob("sav_0*") if p.is_dir())
    other = tmp_path / "disk2"
    other.mkdir()
    moved = chunks[-1] if len(chunks) > 1 else None
    root = tmp_path / "disk1"
    if moved is None:  # one chunk: move two of its videos to a folder on the other disk
        chunk = chunks[0]
        target = other / "sav_099"
        target.mkdir()
        for vid in ids[2:]:
            for f in chunk.glob(f"{vid}*"):
                shutil.move(f, target / f.name)
        (chunk.parent / "sav_099").symlink_to(target, target_is_directory=True)
    else:
        shutil.move(moved, other / moved.name)
        moved.symlink_to(other / moved.name, target_is_directory=True)
    return root, ids


def test_symlinked_chunks_are_followed_and_loops_listed_once(spread: tuple[Path, list[str]]
                                                            ) -> None:
    root, ids = spread
    chunk = next(p for p in root.rglob("sav_0*") if p.is_dir() and not p.is_symlink())
    (chunk / "loop").symlink_to(root, target_is_directory=True)  # back to the root
    index = scan_sav_root(root)
    assert [v.video_id for v in index.videos] == ids
    assert list(index.skipped) == [LINK_LOOP] and len(index.skipped[LINK_LOOP]) == 1


def test_symlinked_files_are_followed(tmp_path: Path) -> None:
    synth_sav(tmp_path / "real", videos=2, seed=1)
    root = tmp_path / "links"
    for f in (tmp_path / "real").rglob("*"):
        if f.is_file() and f.name.startswith("sav_"):
            (root / f.parent.relative_to(tmp_path / "real")).mkdir(parents=True, exist_ok=True)
            (root / f.relative_to(tmp_path / "real")).symlink_to(f)
    index = scan_sav_root(root)
    assert index.videos == scan_sav_root(tmp_path / "real").videos and len(index.videos) == 2
    assert index.skipped == {}


def test_non_regular_files_are_refused_without_being_opened(tmp_path: Path) -> None:
    synth_sav(tmp_path / "sav", videos=6, seed=2)
    root = tmp_path / "sav"
    with_auto = [v.video_id for v in scan_sav_root(root).videos if v.auto_path]
    others = [v.video_id for v in scan_sav_root(root).videos if v.video_id not in with_auto[:1]]
    ids = [others[0], others[1], with_auto[0], *others[2:]]

    def path(vid: str, suffix: str) -> Path:
        return next(root.rglob(f"{vid}{suffix}"))

    fifo = path(ids[0], "_manual.json")
    fifo.unlink()
    os.mkfifo(fifo)  # opening it for reading would block forever
    folder = path(ids[1], ".mp4")
    folder.unlink()
    folder.mkdir()  # a folder named like the video
    broken = path(ids[2], "_auto.json")
    broken.unlink()
    broken.symlink_to(tmp_path / "gone.json")

    done = threading.Event()
    result: dict = {}

    def scan() -> None:
        result["index"] = scan_sav_root(root)
        done.set()

    threading.Thread(target=scan, daemon=True).start()
    assert done.wait(20), "the index opened the FIFO"
    index = result["index"]
    rel = lambda p: p.relative_to(root).as_posix()  # noqa: E731
    assert [v.video_id for v in index.videos] == sorted(ids[2:])  # ids[2] without its auto
    assert next(v for v in index.videos if v.video_id == ids[2]).auto_path is None
    assert index.skipped == {BROKEN_LINK: [rel(broken)],
                             NOT_REGULAR: sorted([rel(fifo), rel(folder)])}
    res = CliRunner().invoke(app, ["sav", "inspect", "--sav-root", str(root), "--video", ids[0]])
    assert res.exit_code == 2 and "not a regular file" in res.output and rel(fifo) in res.output


def test_sav_inspect_finds_a_video_behind_a_symlinked_chunk(
        spread: tuple[Path, list[str]]) -> None:
    root, ids = spread
    res = CliRunner().invoke(app, ["sav", "inspect", "--sav-root", str(root), "--video",
                                   ids[-1], "--json"])
    assert res.exit_code == 0, res.output
    assert '"masklet_id"' in res.output


def test_a_video_over_its_time_limit_fails_its_rows_and_returns(tmp_path: Path) -> None:
    """The annotation file became a FIFO after planning (as a hung mount would block)."""
    made = synth_sav(tmp_path / "sav", videos=1, seed=4)
    root = tmp_path / "sav"
    ref = scan_sav_root(root).videos[0]
    manual = root / ref.manual_path
    manual.unlink()
    os.mkfifo(manual)
    cfg = PipelineConfig()
    cfg.run.video_timeout_s = 1.0
    t0 = time.monotonic()
    pv = prepare_video_within(root, SavVideoRef.model_validate(ref.model_dump()), cfg, "f")
    assert time.monotonic() - t0 < 5
    assert made and pv.jobs == []
    assert {(r.masklet_type, r.masklet_id, r.error_kind) for r in pv.failed} == {
        ("manual", -1, "video_timeout"), ("auto", -1, "video_timeout")}
    assert all("run.video_timeout_s" in (r.error or "") for r in pv.failed)
    with open(manual, "wb"):  # let the blocked reader go (it is a daemon thread anyway)
        pass
