"""Resume set-up time against the number of shards: is it linear?

Why: a resume first works out which shards are done (markers), then clears the leftovers of the
others (temp files, unvouched Parquet files) before redoing them. At SA-V scale with small
shards there are tens of thousands of shards. This plans N cheap videos (one per shard), marks
half of the shards done (a real Parquet file and marker each), leaves torn leftovers in some
others, and times the set-up of a run (the plan taken out of the GC's reach,
``shard_states``, ``ShardBook``), for N = 2K
and 8K (median of ``--repeat`` runs, each on a fresh folder). With ``--baseline``, side by
side, the same set-up done the previous way (hash every finished file, two globs of the folder
per pending shard; minutes at 8K). Target: 8K/2K <= 5x (4x the shards).

    .venv/bin/python benchmarks/resume_setup.py [--sizes 2000,8000] [--repeat 3] [--baseline]
        [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from refsav_pipeline.pipeline.driver import plan_outside_gc
from refsav_pipeline.pipeline.plan import Plan, make_plan
from refsav_pipeline.pipeline.runner import RunStats, ShardBook
from refsav_pipeline.pipeline.shards import ShardState, shard_path, shard_states, write_shard
from refsav_pipeline.records import ShardMarker, file_sha256, marker_path
from refsav_pipeline.sav.index import SavVideoRef

TORN_EVERY = 10  # one pending shard in ten has leftovers


def make_run(out: Path, n: int) -> Plan:
    """A plan of ``n`` one-video shards; the first half done, some of the rest torn."""
    videos = [SavVideoRef(video_id=f"v{i:06d}", video_path=f"v{i:06d}.mp4",
                          manual_path=f"v{i:06d}_manual.json") for i in range(n)]
    plan = make_plan(out / "sav", videos, 1, "fp")
    template = write_shard(out, 0, [], "fp")
    data = shard_path(out, 0).read_bytes()
    for shard in plan.shards[1: n // 2]:
        path = shard_path(out, shard)
        path.write_bytes(data)
        st = path.stat()
        marker = template.model_copy(update={"shard_id": shard.shard_id, "size": st.st_size,
                                             "mtime_ns": st.st_mtime_ns})
        marker_path(path).write_text(marker.model_dump_json())
    for shard in plan.shards[n // 2::TORN_EVERY]:
        path = shard_path(out, shard)
        (path.parent / f".{path.name}.tmp-99").write_bytes(b"half")
        path.write_bytes(b"unvouched")
    return plan


def setup_now(out: Path, plan: Plan) -> int:
    """The set-up as ``driver.execute`` does it."""
    plan_outside_gc()
    states = shard_states(out, plan)
    pending = [s for s in plan.shards if states[s.shard_id][0] is not ShardState.done]
    return len(ShardBook(out, plan, pending, None, RunStats()).videos)


def setup_before(out: Path, plan: Plan) -> int:
    """The previous set-up: every marker checked by hashing its file, every pending shard's
    leftovers found by two globs of the whole folder."""
    pending = []
    for shard in plan.shards:
        path = shard_path(out, shard)
        ok = False
        if marker_path(path).is_file() and path.is_file():
            try:
                m = ShardMarker.model_validate_json(marker_path(path).read_bytes())
                ok = m.sha256 == file_sha256(path)
            except ValueError:
                ok = False
        if not ok:
            pending.append(shard)
    for shard in pending:
        path = shard_path(out, shard)
        for p in (path, marker_path(path), *path.parent.glob(f".{path.name}.tmp-*"),
                  *path.parent.glob(f".{marker_path(path).name}.tmp-*")):
            p.unlink(missing_ok=True)
    return len(pending)


def measure(n: int, fn) -> tuple[float, float]:  # noqa: ANN001
    """(wall s, CPU s) of one set-up on a fresh folder."""
    with tempfile.TemporaryDirectory(prefix="refsav-resume-") as tmp:
        out = Path(tmp)
        plan = make_run(out, n)
        c0, t0 = time.process_time(), time.perf_counter()
        left = fn(out, plan)
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        assert left == n - n // 2, left
    return dt, dc


def median_of(n: int, fn, repeat: int) -> tuple[float, float]:  # noqa: ANN001
    runs = [measure(n, fn) for _ in range(repeat)]
    return statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="2000,8000", help="shard counts, comma-separated")
    ap.add_argument("--repeat", type=int, default=3, help="runs per size (median)")
    ap.add_argument("--baseline", action="store_true",
                    help="also time the previous set-up (once per size; slow)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    now = [median_of(n, setup_now, args.repeat) for n in sizes]
    res: dict = {"sizes": sizes, "now_s": [w for w, _ in now], "now_cpu_s": [c for _, c in now]}
    if args.baseline:
        res["before_s"] = [measure(n, setup_before)[0] for n in sizes]
    grow = sizes[-1] / sizes[0]
    res["now_ratio"] = res["now_s"][-1] / res["now_s"][0]
    res["now_cpu_ratio"] = res["now_cpu_s"][-1] / res["now_cpu_s"][0]
    if "before_s" in res:
        res["before_ratio"] = res["before_s"][-1] / res["before_s"][0]
    if args.json:
        json.dump(res, sys.stdout, indent=1)
        print()
        return
    print("shards   set-up now s   its CPU s" + ("   set-up before s" if "before_s" in res
                                                   else ""))
    for i, n in enumerate(sizes):
        line = f"{n:>6}   {res['now_s'][i]:>12.3f}   {res['now_cpu_s'][i]:>9.3f}"
        if "before_s" in res:
            line += f"   {res['before_s'][i]:>17.3f}"
        print(line)
    print(f"(half the shards done, one pending shard in {TORN_EVERY} with leftovers; "
          f"set-up = shard states + clearing leftovers + the work list)")
    print(f"(median of {args.repeat}; the machine is shared, so CPU time is the steadier "
          f"measure; /proc/loadavg {Path('/proc/loadavg').read_text().strip()})")
    print(f"RESULT {grow:.0f}x shards: set-up {res['now_ratio']:.2f}x wall time, "
          f"{res['now_cpu_ratio']:.2f}x CPU time (target <= 5x)"
          + (f"; previous set-up {res['before_ratio']:.2f}x "
             f"({res['before_s'][-1]:.2f} s vs {res['now_s'][-1]:.2f} s at {sizes[-1]})"
             if "before_s" in res else ""))


if __name__ == "__main__":
    main()
