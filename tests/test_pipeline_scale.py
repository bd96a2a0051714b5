"""The model stage at scale: actors with their own cache shards, the driver off the data path,
resume set-up that lists the shards folder once, status that trusts size+mtime."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pipeline_helpers import config_for, content
from typer.testing import CliRunner

from refsav_pipeline import records
from refsav_pipeline.cli import app
from refsav_pipeline.config import PipelineConfig
from refsav_pipeline.pipeline.cli import free_port, reference_server
from refsav_pipeline.pipeline.driver import execute, prepare_output
from refsav_pipeline.pipeline.plan import Plan, load_plan, make_plan, save_plan
from refsav_pipeline.pipeline.prepare import prepare_video
from refsav_pipeline.pipeline.shard_book import RunStats, ShardBook
from refsav_pipeline.pipeline.shards import (
    ShardState,
    shard_path,
    shard_states,
    shards_left,
    write_shard,
)
from refsav_pipeline.pipeline.status import run_status
from refsav_pipeline.records import SHARDS_DIR, marker_path, read_rows
from refsav_pipeline.sav.index import SavVideoRef, index_sav_root


def _chat_requests(url: str) -> int:
    stats = httpx.get(url.removesuffix("/v1") + "/stats", trust_env=False).json()
    return int(stats["chat_completions"])


@pytest.fixture(scope="module")
def two_actor_run(synth_root: Path, local_ray: None, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[tuple[Path, RunStats, PipelineConfig]]:
    out = tmp_path_factory.mktemp("two-actors")
    # each call takes 1.5 s, longer than the driver's 1 s between in-flight polls, so the
    # progress line sees captioner requests whatever the machine's load
    with reference_server(free_port(), "--latency", "1.5") as url:
        cfg = config_for(url)
        cfg.run.model_actors = 2
        cfg.run.max_inflight_masklets = 8
        prepare_output(synth_root, out, cfg)
        stats = execute(out, cfg, show_progress=False)
        yield out, stats, cfg


def test_actors_share_the_load_each_with_its_own_cache_shard(two_actor_run: tuple) -> None:
    out, stats, _ = two_actor_run
    files = sorted((out / "cache" / "parts").glob("*/*.jsonl"))  # per actor and video
    writers = {f.name.rsplit("-", 1)[0] for f in files}  # <host>-<pid>-<id>-<n>.jsonl
    assert len(writers) == 2, files  # each actor writes its own files, nobody shares one
    lines = [len(p.read_text().splitlines()) for p in files]
    cache = stats.model["cache"]  # summed over the actors
    assert all(n > 0 for n in lines) and sum(lines) == cache["writes"]
    assert cache["misses"] + cache["hits"] == 5 * stats.masklets
    assert cache["writes"] <= cache["misses"]  # an identical call answered twice is kept once
    assert stats.model["peak_in_flight"]["captioner"] > 0  # what the progress line shows


def test_driver_moves_references_not_images(two_actor_run: tuple, synth_root: Path) -> None:
    out, stats, cfg = two_actor_run
    ref = index_sav_root(synth_root)[0]
    pv = prepare_video(synth_root, ref, cfg, cfg.fingerprint())
    image_bytes = [len(j.crop_jpeg) + len(j.masked_jpeg) + len(j.contour_jpeg)
                   + sum(map(len, j.frames_jpegs)) for j in pv.jobs]
    per_masklet = stats.driver_bytes / stats.masklets
    assert stats.masklets == read_rows(out).num_rows
    assert per_masklet < min(image_bytes) / 2, (per_masklet, image_bytes)


def test_resume_with_actor_cache_shards_repeats_no_call(two_actor_run: tuple,
                                                        tmp_path: Path) -> None:
    out, _, _ = two_actor_run
    again = tmp_path / "run"
    shutil.copytree(out, again)
    shutil.rmtree(again / SHARDS_DIR)  # every shard lost; both actors' cache shards kept
    with reference_server(free_port()) as url:
        cfg = config_for(url)
        cfg.run.model_actors = 3
        stats = execute(again, cfg, show_progress=False)
        assert _chat_requests(url) == 0
    assert stats.shards_written == 2
    assert content(read_rows(again)) == content(read_rows(out))
    assert set(read_rows(again).column("cached_calls").to_pylist()) == {5}


class _Counter:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.listings: list[str] = []
        self.hashes = 0
        real_scandir, real_listdir, real_glob = os.scandir, os.listdir, Path.glob
        real_hash = records.file_sha256
        real_unlink = os.unlink
        self.unlinked: list[str] = []

        def scandir(path: object = ".") -> object:
            self.listings.append(str(path))
            return real_scandir(path)  # type: ignore[arg-type]

        def listdir(path: object = ".") -> list[str]:
            self.listings.append(str(path))
            return real_listdir(path)  # type: ignore[arg-type]

        def glob(p: Path, pattern: str) -> object:
            self.listings.append(str(p))
            return real_glob(p, pattern)

        def unlink(path: object, *args: object, **kwargs: object) -> None:
            self.unlinked.append(str(path))
            real_unlink(path, *args, **kwargs)  # type: ignore[arg-type]

        def file_sha256(path: Path) -> str:
            self.hashes += 1
            return real_hash(path)

        monkeypatch.setattr(os, "scandir", scandir)
        monkeypatch.setattr(os, "listdir", listdir)
        monkeypatch.setattr(Path, "glob", glob)
        monkeypatch.setattr(os, "unlink", unlink)
        monkeypatch.setattr(records, "file_sha256", file_sha256)

    def of(self, folder: Path) -> int:
        return sum(Path(p) == folder for p in self.listings)


def _half_done_run(out: Path, n: int) -> Plan:
    """``n`` one-video shards: the first half finished (a real Parquet file and marker each),
    one pending shard in ten torn by a crash mid-write (a temp file and an unvouched file)."""
    videos = [SavVideoRef(video_id=f"v{i:05d}", video_path=f"v{i:05d}.mp4",
                          manual_path=f"v{i:05d}_manual.json") for i in range(n)]
    plan = make_plan(out / "sav", videos, 1, "fp")
    save_plan(out, plan)
    template = write_shard(out, 0, [], "fp")
    data = shard_path(out, 0).read_bytes()
    for shard in plan.shards[1: n // 2]:  # copies: one fsync'd write is enough for the test
        path = shard_path(out, shard)
        path.write_bytes(data)
        st = path.stat()
        marker = template.model_copy(update={"shard_id": shard.shard_id, "size": st.st_size,
                                             "mtime_ns": st.st_mtime_ns})
        marker_path(path).write_text(marker.model_dump_json())
    for shard in plan.shards[n // 2::10]:
        path = shard_path(out, shard)
        (path.parent / f".{path.name}.tmp-99").write_bytes(b"half")
        path.write_bytes(b"PAR1 unvouched")
    return plan


def test_resume_setup_lists_the_shards_folder_once(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Thousands of shards, half finished, some torn: the set-up lists the folder once for
    the states and the clean-up together, whatever the number of shards, reads no Parquet
    file, and removes exactly the leftovers."""
    n = 2000
    plan = _half_done_run(tmp_path, n)
    folder = tmp_path / SHARDS_DIR
    torn = plan.shards[n // 2::10]
    states = shard_states(tmp_path, plan)
    assert sum(s is ShardState.done for s, _ in states.values()) == n // 2
    assert sum(s is ShardState.partial for s, _ in states.values()) == len(torn)
    count = _Counter(monkeypatch)
    left = shards_left(tmp_path, plan)
    assert count.of(folder) == 1 and count.hashes == 0
    assert left == [s for s in plan.shards if states[s.shard_id][0] is not ShardState.done]
    assert len(count.unlinked) == 2 * len(torn)
    assert {Path(p).parent for p in count.unlinked} == {folder}
    book = ShardBook(tmp_path, plan, left, None, RunStats())
    assert count.of(folder) == 1 and len(count.unlinked) == 2 * len(torn)  # nothing more
    assert len(book.videos) == n // 2
    assert len(list(folder.iterdir())) == 2 * (n // 2)  # torn files gone, finished ones kept
    shard_states(tmp_path, plan, verify=True)
    assert count.hashes == n // 2


def _setup_calls(out: Path) -> int:
    """Python and C function calls made by a resume's set-up (load the plan, find and clear
    the shards left, book them): a measure of its work that machine load does not move."""
    calls = 0

    def profile(frame: object, event: str, arg: object) -> None:
        nonlocal calls
        calls += event in ("call", "c_call")

    sys.setprofile(profile)
    try:
        plan = load_plan(out)
        ShardBook(out, plan, shards_left(out, plan), None, RunStats())
    finally:
        sys.setprofile(None)
    return calls


def test_resume_setup_work_grows_linearly_with_the_shards(tmp_path: Path) -> None:
    """4x the shards, at most 4x the set-up's calls (and not much fewer: it did the work)."""
    calls = {}
    for n in (500, 2000):
        _half_done_run(tmp_path / str(n), n)
        calls[n] = _setup_calls(tmp_path / str(n))
    small, big = calls[500], calls[2000]
    assert 3.5 * small < big <= 4 * small, (small, big)


def test_status_trusts_size_and_mtime_and_verify_rehashes(two_actor_run: tuple,
                                                          tmp_path: Path) -> None:
    out, _, _ = two_actor_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    path = shard_path(copy, 0)
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, then the same mtime: only a hash sees it
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert run_status(copy).shards["done"] == 2
    assert run_status(copy, verify=True).shards == {"done": 1, "partial": 1, "pending": 0}
    result = CliRunner().invoke(app, ["status", "--out", str(copy), "--verify", "--json"])
    assert result.exit_code == 0, result.output
    assert '"partial": 1' in result.output
    # a file whose size or mtime moved is re-hashed, not distrusted: a copy that lost the
    # mtimes stays done; a marker whose hash no longer matches does not
    os.utime(shard_path(copy, 1), ns=(1, 1))
    assert run_status(copy).shards["done"] == 2
    os.utime(path, ns=(1, 1))
    assert run_status(copy).shards == {"done": 1, "partial": 1, "pending": 0}
    assert marker_path(path).exists()
