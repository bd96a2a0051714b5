"""The request cache by work: a process holds only the partitions (videos) it works on; and
its keys: the same bytes as ever, the images hashed once in the CPU stage.

Real files, real processes, the reference server; the layout of older runs is still read.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import pickle
from pathlib import Path

import pytest
from pipeline_helpers import wait_for

from refsav_pipeline.config import PipelineConfig
from refsav_pipeline.llm.cache import (
    RequestCache,
    cache_key,
    local_namespace,
    part_dir,
    scan_cache,
    working_on,
)
from refsav_pipeline.llm.config import ModelsConfig
from refsav_pipeline.llm.errors import ModelCallError
from refsav_pipeline.llm.images import Jpeg
from refsav_pipeline.llm.session import ModelSession
from refsav_pipeline.pipeline.prepare import prepare_video
from refsav_pipeline.reference.server import ReferenceServer
from refsav_pipeline.reference.testing import fast_client, models_at
from refsav_pipeline.sav.index import index_sav_root


def _fill(shared: Path, videos: int, per_video: int) -> None:
    """One writer that worked on ``videos`` videos, one after another."""
    cache = RequestCache(shared, local_dir="")
    for v in range(videos):
        cache.acquire(f"sav_{v:06d}")
        with working_on(f"sav_{v:06d}"):
            for i in range(per_video):
                cache.put(f"v{v}-k{i}", {"text": f"answer {v}/{i}"})
        cache.release(f"sav_{v:06d}")
    cache.close()


def test_a_process_loads_only_the_partitions_it_acquires_and_drops_released_ones(
        tmp_path: Path) -> None:
    shared = tmp_path / "cache"
    _fill(shared, videos=40, per_video=5)
    assert len(list((shared / "parts").iterdir())) == 40
    cache = RequestCache(shared, local_dir="")
    assert cache.files_read == 0 and cache.held == []  # opening reads nothing
    cache.acquire("sav_000007")
    assert cache.files_read == 1 and cache.held == ["sav_000007"]
    with working_on("sav_000007"):
        assert cache.get("v7-k3") == {"text": "answer 7/3"}
        assert cache.get("v8-k3") is None  # another video's answer is not loaded
        assert len(cache) == 5
    cache.acquire("sav_000007")  # a second holder: read once
    assert cache.files_read == 1
    cache.release("sav_000007")
    assert cache.held == ["sav_000007"]
    cache.release("sav_000007")
    assert cache.held == []  # nobody holds it: dropped from memory
    assert len(scan_cache(shared)) == 200


def test_a_released_partition_is_promoted_and_its_local_file_deleted_at_once(
        tmp_path: Path) -> None:
    shared, local = tmp_path / "cache", tmp_path / "local"
    cache = RequestCache(shared, local_dir=str(local), promote_interval_s=3600)
    cache.acquire("sav_1")
    with working_on("sav_1"):
        cache.put("a", {"text": "A"})
        staged = cache.local_shard
    assert staged is not None and staged.exists() and "a" not in scan_cache(shared)
    cache.release("sav_1")  # long before the promotion interval
    wait_for(lambda: not staged.exists(), 30, "the released partition's promotion")
    assert scan_cache(shared).get("a") == {"text": "A"}
    assert not local_namespace(shared, str(local)).exists()  # type: ignore[union-attr]
    cache.close()


def test_loading_a_partition_reads_this_nodes_unpromoted_answers(tmp_path: Path) -> None:
    """Another writer on this node holds answers not promoted yet: a load finds them."""
    shared, local = tmp_path / "cache", tmp_path / "local"
    writer = RequestCache(shared, local_dir=str(local), promote_interval_s=3600)
    writer.acquire("sav_1")
    with working_on("sav_1"):
        writer.put("a", {"text": "A"})
    assert "a" not in scan_cache(shared)
    reader = RequestCache(shared, local_dir=str(local), promote_interval_s=3600)
    reader.acquire("sav_1")
    with working_on("sav_1"):
        assert reader.get("a") == {"text": "A"}
        reader.put("a", {"text": "again"})  # known: not written twice
    assert reader.writes == 0
    writer.close()
    reader.close()


def test_concurrent_tasks_write_to_their_own_videos_partition(tmp_path: Path) -> None:
    shared = tmp_path / "cache"
    cache = RequestCache(shared, local_dir="")

    async def one(video: str) -> None:
        with working_on(video):
            for i in range(3):
                await asyncio.sleep(0)  # interleave the tasks
                cache.put(f"{video}-{i}", {"text": video})

    videos = [f"sav_{v}" for v in range(6)]
    cache.acquire(*videos)

    async def main() -> None:
        await asyncio.gather(*(one(v) for v in videos))

    asyncio.run(main())
    cache.release(*videos)
    cache.close()
    for v in videos:
        [f] = (shared / "parts" / v).iterdir()
        keys = {line.split("\t")[0] for line in f.read_text().splitlines()}
        assert keys == {f"{v}-{i}" for i in range(3)}


def test_the_flat_layout_of_older_runs_is_still_read(tmp_path: Path) -> None:
    shared = tmp_path / "cache"
    shared.mkdir()
    (shared / "host-1-abcd.jsonl").write_text(  # as the previous layout wrote it
        'old\t{"text": "from an older run"}\n')
    cache = RequestCache(shared, local_dir="")
    cache.acquire("sav_9")
    with working_on("sav_9"):
        assert cache.get("old") == {"text": "from an older run"}
        cache.put("old", {"text": "ignored"})  # the first answer wins
    assert cache.get("old") == {"text": "from an older run"}  # in any partition
    assert cache.writes == 0
    cache.close()
    assert scan_cache(shared).get("old") == {"text": "from an older run"}


def test_partition_folders_are_plain_names() -> None:
    assert part_dir("sav_000123") == "sav_000123"
    assert part_dir("../etc").startswith("h-") and "/" not in part_dir("a/b")
    assert part_dir(".hidden").startswith("h-") and part_dir("").startswith("h-")


def test_cache_key_bytes_are_the_stdlib_json_of_every_cache_so_far() -> None:
    """orjson where it writes the same bytes, the stdlib where not (small floats, NaN)."""
    parts = {"model": "m", "prompt": "p@v1", "system": "é \u2028 \"q\"", "user": "u",
             "inputs": {"b": "2", "a": "1"}, "images": ["ab" * 32],
             "sampling": {"temperature": 0.0, "top_p": 0.9, "seed": 0,
                          "max_completion_tokens": 384},
             "mm_processor_kwargs": {"max_dynamic_patch": 6},
             "response_format": {"type": "json_schema", "json_schema": {"strict": True}}}
    for extra in ({}, {"min_p": 1e-5}, {"x": float("nan")}, {"big": 2 ** 70}, {"n": None}):
        doc = {"schema": 1, **parts, **extra}
        stdlib = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert cache_key({**parts, **extra}) == hashlib.sha256(stdlib.encode()).hexdigest()


def test_the_cpu_stage_hashes_each_image_once_and_the_digest_travels_with_it(
        synth_root: Path, tmp_path: Path) -> None:
    """A rendered image carries its sha256 (through pickling, as through Ray's object store),
    and a call keyed by the carried digest is the call keyed by hashing the bytes."""
    cfg = PipelineConfig()
    ref = index_sav_root(synth_root)[0]
    job = pickle.loads(pickle.dumps(prepare_video(synth_root, ref, cfg, "fp").jobs[0]))
    for image in (job.crop_jpeg, job.masked_jpeg, job.contour_jpeg, *job.frames_jpegs):
        assert isinstance(image, Jpeg)
        assert image.sha256 == hashlib.sha256(bytes(image)).hexdigest()
    with ReferenceServer(ModelsConfig()) as srv:
        with ModelSession(models_at(srv.url), fast_client(), tmp_path) as s:
            carried = s.run(s.complete("scene", [job.contour_jpeg], {"object_description": "x"}))
            plain = s.run(s.complete("scene", [bytes(job.contour_jpeg)],
                                     {"object_description": "x"}))
            with pytest.raises(ModelCallError, match="image is not JPEG data"):
                s.run(s.complete("scene", [b"not a jpeg"], {"object_description": "x"}))
        assert srv.stats.requests["chat_completions"] == 1
    assert not carried[0].cached and plain[0].cached and plain[0].text == carried[0].text
