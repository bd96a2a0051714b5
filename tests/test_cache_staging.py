"""Node-local staging of the request cache: real files, real processes, real Ray.

Writers append to a shard on local disk and promote it to the shared ``<out>/cache/``; what a
killed writer left is promoted by a task on its node; a killed promotion loses nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pipeline_helpers import killed_cache_writer, wait_for

from refsav_pipeline.llm.cache import (
    CacheScan,
    RequestCache,
    local_namespace,
    promote,
    promote_orphans,
    scan_cache,
)
from refsav_pipeline.llm.config import ClientConfig
from refsav_pipeline.pipeline.cache_staging import promote_on_every_node


def _shared_only(shared: Path) -> CacheScan:
    """What the shared folder holds, read without promoting anything on the way."""
    return scan_cache(shared)



def test_a_killed_writers_shard_is_promoted_on_its_node_a_live_one_is_not(
        local_ray: None, tmp_path: Path) -> None:
    shared, local = tmp_path / "out" / "cache", tmp_path / "local"
    live = RequestCache(shared, local_dir=str(local), promote_interval_s=3600)
    for i in range(50):
        live.put(f"live{i}", {"text": f"L{i}"})
    acked = killed_cache_writer(shared, local, 1500)  # its open leaves the live shard alone
    ns = local_namespace(shared, str(local))
    assert ns is not None and len(list(ns.rglob("*.jsonl"))) == 2
    assert len(_shared_only(shared)) == 0  # nothing promoted yet: all of it is on local disk

    reports = promote_on_every_node(
        ClientConfig(cache_path=str(shared), cache_local_dir=str(local)), tmp_path / "out")

    assert [(r.shards, r.busy) for r in reports] == [(1, 1)]  # one node: dead one, live one
    seen = _shared_only(shared)
    assert all(f"k{i}" in seen for i in range(acked + 1)) and seen.torn_lines == 0
    assert seen.get(f"k{acked}") == {"text": "t" * 200, "i": acked}
    assert "live0" not in seen  # the live writer's shard was left alone...
    assert list(ns.rglob("*.jsonl")) == [live.local_shard]  # ...and the dead one deleted
    live.put("live50", {"text": "L50"})  # it goes on writing its own shard
    live.close()
    seen = _shared_only(shared)
    assert all(f"live{i}" in seen for i in range(51)) and len(seen) >= acked + 1 + 51
    assert not ns.exists()


def test_interval_and_close_promote_and_close_removes_the_local_shard(tmp_path: Path) -> None:
    shared, local = tmp_path / "cache", tmp_path / "local"
    cache = RequestCache(shared, local_dir=str(local), promote_interval_s=0.05)
    for i in range(20):
        cache.put(f"a{i}", {"text": f"A{i}"})
    assert cache.shard is not None and cache.local_shard is not None
    assert cache.local_shard.parent == local_namespace(shared, str(local)) / "parts" / "_"  # type: ignore[operator]
    wait_for(lambda: len(_shared_only(shared)) == 20, 60, "the background promotion")
    assert cache.local_shard.exists()  # still writing there
    slow = RequestCache(shared, local_dir=str(local), promote_interval_s=3600)
    for i in range(20):
        slow.put(f"b{i}", {"text": f"B{i}"})
    cache.close()
    slow.close()  # long before its interval: close promotes
    assert not cache.local_shard.exists() and not slow.local_shard.exists()  # type: ignore
    assert not local_namespace(shared, str(local)).exists()  # type: ignore[union-attr]
    seen = _shared_only(shared)
    assert len(seen) == 40 and seen.files == 2
    assert seen.get("b19") == {"text": "B19"} and seen.torn_lines == 0


def test_the_default_stages_under_the_temp_dir_and_is_namespaced_per_run(tmp_path: Path) -> None:
    import tempfile

    a, b = tmp_path / "run-a" / "cache", tmp_path / "run-b" / "cache"
    ca, cb = RequestCache(a), RequestCache(b)
    ca.put("x", {"text": "from a"})
    cb.put("x", {"text": "from b"})
    assert ca.local_shard is not None and cb.local_shard is not None
    assert ca.local_shard.parents[3] == Path(tempfile.gettempdir()) / "refsav-cache"
    assert ca.local_shard.parent != cb.local_shard.parent
    ca.close()
    cb.close()
    assert RequestCache(a).get("x") == {"text": "from a"}
    assert RequestCache(b).get("x") == {"text": "from b"}
    assert local_namespace(a, "") is None  # "" writes straight to the shared folder
    direct = RequestCache(a, local_dir="")
    direct.put("y", {"text": "Y"})
    assert direct.local_shard is None and direct.shard is not None and direct.shard.stat().st_size
    direct.close()


def _json_ok(cache: CacheScan, key: str) -> bool:
    """``key`` is absent or answers a whole record."""
    return key not in cache or "text" in (cache.get(key) or {})


@pytest.mark.parametrize("cut", ["mid_line", "line_boundary", "hole"])
def test_a_killed_promotion_loses_nothing_and_corrupts_nothing(tmp_path: Path, cut: str) -> None:
    shared, local = tmp_path / "cache", tmp_path / "local"
    cache = RequestCache(shared, local_dir=str(local), promote_interval_s=3600)
    for i in range(100):
        cache.put(f"k{i}", {"text": f"first {i}"})
    assert cache.promote() > 0
    for i in range(100, 200):
        cache.put(f"k{i}", {"text": f"second {i}"})
    assert cache.shard is not None and cache.local_shard is not None
    # A promotion killed mid-write leaves part of what it was copying: a prefix, or on NFS
    # after a crash, later pages without earlier ones (a hole of zeros).
    staged = cache.local_shard.read_bytes()
    done = cache.shard.stat().st_size
    pending = staged[done:]
    first = pending.index(b"\n") + 1
    second = pending.index(b"\n", first) + 1
    torn = {"mid_line": pending[:second + 17], "line_boundary": pending[:second],
            "hole": bytes(first) + pending[first:second + 17]}[cut]
    with open(cache.shard, "ab") as fh:
        fh.write(torn)
    meanwhile = _shared_only(shared)  # a reader now skips the torn lines, reads no garbage
    assert meanwhile.torn_lines == {"mid_line": 1, "line_boundary": 0, "hole": 2}[cut]
    assert all(_json_ok(meanwhile, f"k{i}") for i in range(200))
    cache.promote()
    assert cache.shard.read_bytes() == staged  # exactly the staged bytes: no hole, no fusion
    cache.close()
    seen = _shared_only(shared)
    assert len(seen) == 200 and seen.torn_lines == 0
    assert seen.get("k150") == {"text": "second 150"}


def test_a_killed_writer_with_a_killed_promotion_is_promoted_whole(tmp_path: Path) -> None:
    """The orphan path: from the dead writer's mark, over whatever its last promotion left."""
    shared, local = tmp_path / "cache", tmp_path / "local"
    acked = killed_cache_writer(shared, local, 20000, interval=0.01)  # promoted meanwhile
    ns = local_namespace(shared, str(local))
    assert ns is not None
    [orphan] = ns.rglob("*.jsonl")
    [mark] = ns.rglob("*.jsonl.promoted")  # it had promoted before it died
    target = shared / orphan.relative_to(ns)
    staged = orphan.read_bytes()
    marked = int(mark.read_text())
    assert 0 < marked < len(staged)
    with open(target, "r+b") as fh:  # its last promotion was cut short
        fh.truncate(marked)
        fh.seek(marked)
        fh.write(bytes(50) + staged[marked + 50: marked + 300])
    (ns / "gone.jsonl.promoted").write_text("12\n")  # its shard was deleted at a close
    (ns / "w.jsonl.new").write_bytes(b"")  # a writer killed before it locked its shard
    report = promote_orphans(shared, str(local))
    assert (report.shards, report.busy) == (1, 0)
    assert target.read_bytes() == staged
    assert not ns.exists()  # shard, mark and the emptied folder are gone
    seen = _shared_only(shared)
    assert all(f"k{i}" in seen for i in range(acked + 1)) and seen.torn_lines == 0


def test_a_restarted_writer_on_the_same_node_promotes_its_predecessor(tmp_path: Path) -> None:
    """An actor restarted by Ray opens the cache again: dead shards of its node come first."""
    shared, local = tmp_path / "cache", tmp_path / "local"
    acked = killed_cache_writer(shared, local, 200)
    again = RequestCache(shared, local_dir=str(local))
    assert all(f"k{i}" in again for i in range(acked + 1))
    assert not local_namespace(shared, str(local)).exists()  # type: ignore[union-attr]


def test_promote_copies_whole_lines_only(tmp_path: Path) -> None:
    """A writer's line still being written (a partial ``write`` seen by the promoter) waits."""
    src, dst, mark = tmp_path / "local.jsonl", tmp_path / "shared.jsonl", tmp_path / "mark"
    src.write_bytes(b'a\t{"text": "A"}\nb\t{"tex')
    fd = os.open(src, os.O_RDONLY)
    mfd = os.open(mark, os.O_RDWR | os.O_CREAT)
    try:
        assert promote(fd, dst, mfd) == len(b'a\t{"text": "A"}\n')
        assert dst.read_bytes() == b'a\t{"text": "A"}\n'
        with open(src, "ab") as fh:
            fh.write(b't": "B"}\n')
        assert promote(fd, dst, mfd) == len(b'b\t{"text": "B"}\n')
        assert promote(fd, dst, mfd) == 0
    finally:
        os.close(fd)
        os.close(mfd)
    assert dst.read_bytes() == src.read_bytes()
