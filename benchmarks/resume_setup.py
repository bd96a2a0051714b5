"""Resume set-up time against the number of shards: is it linear?

Why: a resume first works out which shards are done (markers), then clears the leftovers of the
others (temp files, unvouched Parquet files) before redoing them. At SA-V scale with small
shards there are tens of thousands of shards. This plans N cheap videos (one per shard), marks
half of the shards done (a real Parquet file and marker each) and leaves torn leftovers in some
others. Then a fresh Python process does the set-up as ``driver.execute`` does it, each phase
timed in CPU and wall time: load ``plan.json``, take the plan out of the GC's reach, list the
folder once for the states and the clean-up (``shards_left``), build the ``ShardBook``.

Every measurement has its own folder and its own process, so no import, allocator or GC state
carries over from one size to the next; sizes are interleaved (2K, 8K, 2K, 8K, ...) so that a
change in the shared machine's load hits both. The ratio is given for the medians, the minima,
and as the spread over the repeats (the i-th run of one size against the i-th of the other).
Each folder is written back to disk (``sync``) before its set-up starts, so the kernel's
writeback does not overlap it. The page cache stays warm: a resume on cold shared storage
waits longer for the listing and the marker reads, in proportion to the shards as well.

With ``--baseline``, the previous set-up, once per size (hash every finished file, two globs
of the folder per pending shard; minutes at 8K). Target: 8K/2K <= 5x (4x the shards).

    .venv/bin/python benchmarks/resume_setup.py [--sizes 2000,8000] [--repeat 5] [--baseline]
        [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

TORN_EVERY = 10  # one pending shard in ten has leftovers
PHASES = ("load_plan", "plan_outside_gc", "shards_left", "ShardBook")


def make_run(out: Path, n: int) -> None:
    """A saved plan of ``n`` one-video shards; the first half done, some of the rest torn."""
    from refsav_pipeline.pipeline.plan import make_plan, save_plan
    from refsav_pipeline.pipeline.shards import shard_path, write_shard
    from refsav_pipeline.records import marker_path
    from refsav_pipeline.sav.index import SavVideoRef

    videos = [SavVideoRef(video_id=f"v{i:06d}", video_path=f"v{i:06d}.mp4",
                          manual_path=f"v{i:06d}_manual.json") for i in range(n)]
    plan = make_plan(out / "sav", videos, 1, "fp")
    save_plan(out, plan)
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


def setup_now(out: Path) -> dict:
    """The set-up as ``driver.execute`` does it, phase by phase: {phase: [CPU s, wall s]}."""
    from refsav_pipeline.pipeline.driver import plan_outside_gc
    from refsav_pipeline.pipeline.plan import load_plan
    from refsav_pipeline.pipeline.shard_book import RunStats, ShardBook
    from refsav_pipeline.pipeline.shards import parquet_bytes, shards_left

    parquet_bytes([])  # what execute pays before the set-up (pyarrow's pandas import)
    full_collections = [0]
    gc.callbacks.append(lambda phase, info: full_collections.__setitem__(
        0, full_collections[0] + (phase == "start" and info["generation"] == 2)))
    times: dict[str, list[float]] = {}
    state: dict = {}

    def timed(name: str, fn: Callable[[], object]) -> object:
        c0, t0 = time.process_time(), time.perf_counter()
        result = fn()
        times[name] = [time.process_time() - c0, time.perf_counter() - t0]
        return result

    state["plan"] = timed("load_plan", lambda: load_plan(out))
    timed("plan_outside_gc", plan_outside_gc)
    state["left"] = timed("shards_left", lambda: shards_left(out, state["plan"]))
    book = timed("ShardBook", lambda: ShardBook(out, state["plan"], state["left"], None,
                                                RunStats()))
    return {"phases": times, "videos": len(book.videos),  # type: ignore[attr-defined]
            "full_collections": full_collections[0]}


def setup_calls(out: Path) -> dict:
    """The same set-up once more, counting its Python and C function calls: its work, in a
    unit the machine's load does not move (the timings above it does)."""
    import refsav_pipeline.pipeline.driver  # noqa: F401  (imports are not the set-up's work)
    from refsav_pipeline.pipeline.shards import parquet_bytes

    parquet_bytes([])
    calls = 0

    def profile(frame: object, event: str, arg: object) -> None:
        nonlocal calls
        calls += event in ("call", "c_call")

    sys.setprofile(profile)
    try:
        res = setup_now(out)
    finally:
        sys.setprofile(None)
    return {**res, "calls": calls}


def setup_before(out: Path) -> dict:
    """The previous set-up: every marker checked by hashing its file, every pending shard's
    leftovers found by two globs of the whole folder."""
    from refsav_pipeline.pipeline.plan import load_plan
    from refsav_pipeline.pipeline.shards import shard_path
    from refsav_pipeline.records import ShardMarker, file_sha256, marker_path

    c0, t0 = time.process_time(), time.perf_counter()
    plan = load_plan(out)
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
    return {"phases": {"total": [time.process_time() - c0, time.perf_counter() - t0]},
            "videos": len(pending), "full_collections": None}


def measure(n: int, how: str) -> dict:
    """One set-up (``how``: now, calls or before) of a fresh ``n``-shard run, in a fresh
    process."""
    with tempfile.TemporaryDirectory(prefix="refsav-resume-") as tmp:
        make_run(Path(tmp), n)
        os.sync()  # the kernel writing those files back must not overlap the timed set-up
        done = subprocess.run([sys.executable, __file__, "--child", how, tmp],
                              capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"set-up of {n} shards failed:\n{done.stderr[-3000:]}")
    res = json.loads(done.stdout)
    if res["videos"] != n - n // 2:
        raise SystemExit(f"{n} shards: {res['videos']} left to do, expected {n - n // 2}")
    res["cpu_s"] = sum(c for c, _ in res["phases"].values())
    res["wall_s"] = sum(w for _, w in res["phases"].values())
    # without the one full collection before the freeze: it walks every object of the
    # process (the imports mostly), so it costs about the same at any size
    res["cpu_nogc_s"] = res["cpu_s"] - res["phases"].get("plan_outside_gc", [0.0])[0]
    res["loadavg"] = float(Path("/proc/loadavg").read_text().split()[0])
    return res


def summary(runs: dict[int, list[dict]], small: int, big: int) -> dict:
    """Per size min and median; the big/small ratio of medians, minima and paired runs."""
    out: dict = {"per_size": {}, "ratio": {}}
    for n, rs in runs.items():
        out["per_size"][n] = {
            f"{kind}_{stat}": fn(r[f"{kind}_s"] for r in rs)
            for kind in ("cpu", "wall", "cpu_nogc") for stat, fn in (("min", min),
                                                       ("median", statistics.median))}
        out["per_size"][n]["phase_cpu_median"] = {
            p: statistics.median(r["phases"][p][0] for r in rs) for p in rs[0]["phases"]}
        out["per_size"][n]["full_collections"] = [r["full_collections"] for r in rs]
    for kind in ("cpu", "wall", "cpu_nogc"):
        s, b = out["per_size"][small], out["per_size"][big]
        paired = [rb[f"{kind}_s"] / rs[f"{kind}_s"]
                  for rs, rb in zip(runs[small], runs[big], strict=False)]
        out["ratio"][kind] = {"of_medians": b[f"{kind}_median"] / s[f"{kind}_median"],
                              "of_minima": b[f"{kind}_min"] / s[f"{kind}_min"],
                              "paired_min": min(paired), "paired_max": max(paired)}
    s, b = out["per_size"][small], out["per_size"][big]
    out["ratio"]["phase_cpu_of_medians"] = {
        p: b["phase_cpu_median"][p] / max(s["phase_cpu_median"][p], 1e-9)
        for p in s["phase_cpu_median"]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="2000,8000", help="two shard counts, comma-separated")
    ap.add_argument("--repeat", type=int, default=5, help="runs per size, interleaved")
    ap.add_argument("--baseline", action="store_true",
                    help="also time the previous set-up (once per size; slow)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", nargs=2, metavar=("HOW", "DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        how, folder = args.child
        fn = {"now": setup_now, "calls": setup_calls, "before": setup_before}[how]
        json.dump(fn(Path(folder)), sys.stdout)
        return
    small, big = (int(s) for s in args.sizes.split(","))
    load_before = os.getloadavg()
    runs: dict[int, list[dict]] = {small: [], big: []}
    for _ in range(args.repeat):
        for n in (small, big):
            runs[n].append(measure(n, "now"))
    res = summary(runs, small, big)
    res["sizes"] = [small, big]
    res["repeat"] = args.repeat
    res["loadavg_before"] = load_before
    res["loadavg_after"] = os.getloadavg()
    res["loadavg_during"] = [r["loadavg"] for n in (small, big) for r in runs[n]]
    res["calls"] = {n: measure(n, "calls")["calls"] for n in (small, big)}
    if args.baseline:
        res["before_s"] = {n: measure(n, "before")["wall_s"] for n in (small, big)}
    if args.json:
        json.dump(res, sys.stdout, indent=1)
        print()
        return
    print(f"set-up of a resume, {args.repeat} fresh processes per size, interleaved")
    print("shards   CPU s min / median   wall s min / median   median CPU s by phase ("
          + ", ".join(PHASES) + ")")
    for n in (small, big):
        p = res["per_size"][n]
        phases = " ".join(f"{p['phase_cpu_median'][k]:.3f}" for k in PHASES)
        print(f"{n:>6}   {p['cpu_min']:>7.3f} / {p['cpu_median']:<8.3f}   "
              f"{p['wall_min']:>7.3f} / {p['wall_median']:<8.3f}   {phases}")
    print("ratio by phase (medians): " + ", ".join(
        f"{k} {res['ratio']['phase_cpu_of_medians'][k]:.2f}x" for k in PHASES))
    print(f"(half the shards done, one pending shard in {TORN_EVERY} with leftovers; "
          f"full GC collections during a set-up: "
          f"{sorted({c for n in (small, big) for c in res['per_size'][n]['full_collections']})}; "
          f"loadavg {res['loadavg_before'][0]:.2f} before, "
          f"{min(res['loadavg_during']):.2f}-{max(res['loadavg_during']):.2f} during)")
    calls = res["calls"]
    print(f"function calls of one set-up: {small}: {calls[small]:,}, {big}: {calls[big]:,} "
          f"({calls[big] / calls[small]:.3f}x)")
    if args.baseline:
        b = res["before_s"]
        print(f"previous set-up (wall s, one run each): {small}: {b[small]:.2f}, "
              f"{big}: {b[big]:.2f} ({b[big] / b[small]:.2f}x)")
    c, w, g = res["ratio"]["cpu"], res["ratio"]["wall"], res["ratio"]["cpu_nogc"]
    print(f"RESULT {big / small:.0f}x shards: set-up {c['of_medians']:.2f}x CPU time "
          f"(minima {c['of_minima']:.2f}x, paired runs {c['paired_min']:.2f}-"
          f"{c['paired_max']:.2f}x), {w['of_medians']:.2f}x wall time (minima "
          f"{w['of_minima']:.2f}x, paired {w['paired_min']:.2f}-{w['paired_max']:.2f}x); "
          f"without the fixed full collection {g['of_medians']:.2f}x CPU time (paired "
          f"{g['paired_min']:.2f}-{g['paired_max']:.2f}x); target <= 5x")


if __name__ == "__main__":
    main()
