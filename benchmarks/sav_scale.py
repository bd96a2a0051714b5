"""All of SA-V, simulated: does each process's memory and start-up follow its work, not the
dataset or the request cache?

Why: the project exists to run all of SA-V (about 51K videos in 56 chunks, 642K masklets, 5
model calls each: 3.2M cached answers) on a cluster, and no run went past ~100 videos. This
builds SA-V-shaped inputs at 1x, 4x and 16x of a base size and measures, each in a fresh
process (wall, CPU, peak RSS):

- dataset axis (videos 1x/4x/16x): ``plan`` (index the root, make and save the plan),
  ``status`` (the real command, interpreter start included), ``resume`` set-up (as
  ``driver.execute`` does it: plan, shard states, clean-up, the work list; half the shards
  done) and ``report`` (``refsav report`` without its gallery, on real Parquet rows);
- cache axis (answers 1x/4x/16x): a caption actor's cache start-up and peak memory (open the
  cache, load the partitions of the 16 videos it works on, look answers up), against the
  previous design, which read every answer into memory (``scan_cache``, the same reading
  code);
- a run of ``--run-videos`` (>= 2K) tiny videos with SA-V's masklet counts against the stub
  server at latency 0 on local Ray, with the biggest cache in place: masklets/s and the
  driver's and caption actor's RSS over time.

The SA-V root: ``sav_train/sav_000 … sav_055``, ids ``sav_000000…``, masklets per video drawn
to match SA-V's published totals (190.9K manual and 451.7K auto masklets over 50.9K videos;
the per-video distribution is not published, a geometric one with those means is used).
Files of the dataset axis are hard links to one tiny mp4 and one JSON each (planning lists
files, it reads none). The run's videos are tiny (64x48, 9 frames) with their own JSONs.

Sizes: the base is 1/16 of SA-V (3.2K videos) and ``--answers`` answers (default 50K:
16x = 800K); ``--full`` makes the cache base 200K (16x = 3.2M answers, ~1.5 GB on disk, a
longer run); ``--quick`` a small base for development.

    .venv/bin/python benchmarks/sav_scale.py [--quick | --full] [--run-videos 2000]
        [--no-run] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

SAV_VIDEOS = 50_900
SAV_MANUAL, SAV_AUTO = 190_900, 451_700
CHUNKS = 56
CALLS_PER_MASKLET = 5
SHARD_SIZE = 10
ACTOR_VIDEOS = 16  # partitions a caption actor holds at once in the measurement
ANSWERS_PER_VIDEO = (SAV_MANUAL + SAV_AUTO) * CALLS_PER_MASKLET // SAV_VIDEOS  # 63
HERE = Path(__file__).resolve().parent
RECORD = {"text": "a red car parked on the left side of the street, " * 8,
          "usage": {"prompt_tokens": 1800, "completion_tokens": 120, "total_tokens": 1920},
          "latency_s": 1.234567, "attempts": 1, "endpoint": "http://10.0.0.1:8000/v1",
          "model": "OpenGVLab/InternVL2-Llama3-76B", "prompt": "object_caption_crop@v1"}


def masklet_counts(n: int, seed: int = 0) -> list[tuple[int, int]]:
    """(manual, auto) masklets per video: 1 + geometric manual, geometric auto, with SA-V's
    published means (3.75 and 8.87 per video)."""
    rng = random.Random(seed)

    def geometric(mean: float) -> int:  # on 0, 1, 2, ... with this mean
        return int(math.log(1.0 - rng.random()) / math.log(mean / (1.0 + mean)))

    return [(1 + geometric(SAV_MANUAL / SAV_VIDEOS - 1), geometric(SAV_AUTO / SAV_VIDEOS))
            for _ in range(n)]


def video_id(i: int) -> str:
    return f"sav_{i:06d}"


def chunk_dir(root: Path, i: int, n: int) -> Path:
    return root / "sav_train" / f"sav_{i * CHUNKS // n:03d}"


# -- building inputs ---------------------------------------------------------------------------


def make_listing_root(root: Path, n: int, template: Path) -> None:
    """``n`` videos over 56 chunks: hard links to one mp4 and one JSON per chunk (planning
    reads none; one pair per chunk keeps each under the file system's link limit)."""
    counts = masklet_counts(n)
    for i in range(n):
        folder = chunk_dir(root, i, n)
        mp4, js = folder / ".t.mp4", folder / ".t.json"
        if not mp4.exists():
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(template / "t.mp4", mp4)
            shutil.copy(template / "t.json", js)
        vid = video_id(i)
        os.link(mp4, folder / f"{vid}.mp4")
        os.link(js, folder / f"{vid}_manual.json")
        if counts[i][1]:
            os.link(js, folder / f"{vid}_auto.json")


def mark_half_done(out: Path) -> int:
    """Half the shards done: a real Parquet file of SA-V-like rows and a marker each."""
    from refsav_pipeline.pipeline.plan import load_plan
    from refsav_pipeline.pipeline.shards import shard_path, write_shard
    from refsav_pipeline.records import RefSavRow, marker_path

    plan = load_plan(out)
    counts = masklet_counts(plan.num_videos)
    per_shard = sum(sum(c) for c in counts[:SHARD_SIZE])
    rows = [RefSavRow(video_id=video_id(0), masklet_id=k, masklet_type="manual",
                      masklet_index=k, video_path="v.mp4", anno_path="v_manual.json",
                      height=1080, width=1920, video_frame_count=481, status="ok",
                      object_caption="a red car " * 10, scene_caption="a street scene " * 15,
                      video_caption="the car drives to the left " * 12,
                      pipeline_version="bench", config_fingerprint=plan.config_fingerprint)
            for k in range(per_shard)]
    template = write_shard(out, 0, rows, plan.config_fingerprint)
    data = shard_path(out, 0).read_bytes()
    done = plan.shards[: len(plan.shards) // 2]
    for shard in done[1:]:
        path = shard_path(out, shard)
        path.write_bytes(data)
        st = path.stat()
        marker_path(path).write_text(template.model_copy(update={
            "shard_id": shard.shard_id, "size": st.st_size,
            "mtime_ns": st.st_mtime_ns}).model_dump_json())
    return len(done)


def make_cache(shared: Path, answers: int, videos: int) -> None:
    """``answers`` answers over ``videos`` partitions, as caption actors write them."""
    from refsav_pipeline.llm.cache import RequestCache, cache_key, working_on

    per_video = max(1, answers // videos)
    cache = RequestCache(shared, local_dir="")
    for v in range(videos):
        vid = video_id(v)
        cache.acquire(vid)
        with working_on(vid):
            for k in range(per_video):
                cache.put(cache_key({"v": v, "k": k}), RECORD)
        cache.release(vid)
    cache.close()


# -- measurements, each in a fresh process ---------------------------------------------------


def _vm_mb(field: str) -> float:
    """``VmRSS`` or ``VmHWM`` (peak) of this process, MB. Not ``ru_maxrss``: Linux keeps that
    across ``exec``, so a child would report its parent's peak."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise OSError(f"no {field} in /proc/self/status")


def child(task: str, args: dict[str, Any]) -> dict[str, Any]:
    """Run one measurement here; returns its figures with wall, CPU, peak RSS (MB) and the
    RSS its work added (peak minus RSS after the imports)."""
    sys.path.insert(0, str(HERE))
    c0, t0 = time.process_time(), time.perf_counter()
    out: dict[str, Any] = {}
    if task == "plan":
        from refsav_pipeline.config import PipelineConfig
        from refsav_pipeline.pipeline.driver import prepare_output

        cfg = PipelineConfig()
        cfg.run.shard_size = SHARD_SIZE
        out["rss_at_start_mb"] = _vm_mb("VmRSS")
        c0, t0 = time.process_time(), time.perf_counter()  # imports are not the plan's work
        prepare_output(args["root"], args["out"], cfg)
    elif task == "resume":
        from resume_setup import setup_now

        import refsav_pipeline.pipeline.driver  # noqa: F401
        out["rss_at_start_mb"] = _vm_mb("VmRSS")
        c0, t0 = time.process_time(), time.perf_counter()
        out["videos"] = setup_now(Path(args["out"]))["videos"]
    elif task == "report":
        from refsav_pipeline.export.report import build_report

        out["rss_at_start_mb"] = _vm_mb("VmRSS")
        c0, t0 = time.process_time(), time.perf_counter()
        build_report(args["out"], gallery_size=0)
    elif task in ("actor", "whole_cache"):
        from refsav_pipeline.llm.cache import RequestCache, cache_key, scan_cache, working_on

        out["rss_at_start_mb"] = _vm_mb("VmRSS")
        c0, t0 = time.process_time(), time.perf_counter()
        if task == "whole_cache":  # the previous design: every answer in memory at start
            out["answers_in_memory"] = len(scan_cache(args["shared"]))
        else:
            cache = RequestCache(args["shared"], local_dir=args["local"])
            vids = [video_id(v) for v in range(0, args["videos"], args["videos"] //
                                                 ACTOR_VIDEOS)][:ACTOR_VIDEOS]
            cache.acquire(*vids)
            hits = 0
            for v in vids:
                with working_on(v):
                    hits += cache.get(cache_key({"v": int(v[4:]), "k": 0})) is not None
            out["hits"] = hits
            out["answers_in_memory"] = sum(len(cache._parts[v].index) for v in vids)
            cache.release(*vids)
            cache.close()
    else:
        raise ValueError(task)
    out.update(wall_s=time.perf_counter() - t0, cpu_s=time.process_time() - c0,
               peak_rss_mb=_vm_mb("VmHWM"), work_mb=_vm_mb("VmHWM") - out["rss_at_start_mb"])
    return out


def measure(task: str, **args: Any) -> dict[str, Any]:
    done = subprocess.run([sys.executable, __file__, "--child", task, json.dumps(args)],
                          capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{task} failed: {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def status_wall(out: Path, repeat: int = 3) -> dict[str, Any]:
    """``refsav status --out OUT --json`` as a user runs it (interpreter start included),
    fastest of ``repeat``."""
    walls = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "refsav_pipeline.cli", "status", "--out",
                               str(out), "--json"], capture_output=True, text=True, check=True)
        walls.append(time.perf_counter() - t0)
    st = json.loads(done.stdout)
    return {"wall_s": min(walls), "walls_s": walls, "shards_done": st["shards"]["done"],
            "videos": st["videos_total"]}


# -- the run -----------------------------------------------------------------------------------


def make_run_root(root: Path, n: int, types: tuple[str, ...]) -> int:
    """``n`` tiny videos with SA-V's masklet counts; returns the masklets to caption."""
    import numpy as np
    from _sample import SampleSpec, write_video

    counts = masklet_counts(n, seed=1)
    templates: dict[tuple[int, int], Path] = {}
    made = 0
    tdir = root / "templates"
    for i, (manual, auto) in enumerate(counts):
        if (manual, auto) not in templates:
            spec = SampleSpec(videos=1, width=64, height=48, frames=9, objects=manual + auto,
                              gop=24)
            where = tdir / f"{manual}-{auto}"
            write_video(where, "t", spec, np.random.default_rng(i), manual=manual)
            templates[manual, auto] = where
        folder = chunk_dir(root, i, n)
        folder.mkdir(parents=True, exist_ok=True)
        vid = video_id(i)
        os.link(templates[manual, auto] / "t.mp4", folder / f"{vid}.mp4")
        for kind in ("manual", "auto"):
            src = templates[manual, auto] / f"t_{kind}.json"
            if src.exists():
                ann = json.loads(src.read_text())
                ann["video_id"] = vid
                (folder / f"{vid}_{kind}.json").write_text(json.dumps(ann))
                if kind in types:
                    made += ann["masklet_num"]
    shutil.rmtree(tdir)
    return made


class RssSampler(threading.Thread):
    """RSS (MB) of the driver and of each caption actor every ``period`` s."""

    def __init__(self, period: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.period = period
        self.samples: list[dict[str, float]] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        from _procs import cmdline, descendants

        t0 = time.monotonic()
        while not self._stop_event.wait(self.period):
            actors = []
            for pid in descendants(os.getpid()):
                try:
                    if "CaptionActor" in cmdline(pid):
                        actors.append(_rss_mb(pid))
                except OSError:
                    continue
            self.samples.append({"t": round(time.monotonic() - t0, 1),
                                 "driver_mb": _rss_mb(os.getpid()),
                                 "actor_mb": max(actors, default=0.0)})

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_point(base: Path, n: int, cache: Path | None, types: tuple[str, ...]) -> dict[str, Any]:
    import logging

    import ray
    from model_stage import Stub, config
    from rich.console import Console

    from refsav_pipeline.config import PipelineConfig
    from refsav_pipeline.pipeline.driver import execute, prepare_output

    root, out = base / "run-sav", base / "run-out"
    masklets = make_run_root(root, n, types)
    models = PipelineConfig().models
    stub = Stub(0.0, [models.captioner.name, models.judge.name])
    cfg = config(stub.url, 64, 64, 1)
    cfg.selection.masklet_types = list(types)
    cfg.run.shard_size = SHARD_SIZE
    if cache is not None:
        cfg.client.cache_path = str(cache)
    ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False,
             object_store_memory=512 * 1024 * 1024, logging_level=logging.WARNING)
    sampler = RssSampler()
    try:
        prepare_output(root, out, cfg)
        sampler.start()
        stats = execute(out, cfg, show_progress=False, console=Console(file=sys.stderr))
    finally:
        sampler.stop()
        ray.shutdown()
    st = stub.stats()
    stub.close()
    done = sorted(st["done_at"])
    window = 10.0
    rates = []
    if done:
        t, k = done[0], 0
        while t < done[-1]:
            j = k
            while j < len(done) and done[j] < t + window:
                j += 1
            rates.append(round((j - k) / window / CALLS_PER_MASKLET, 1))
            k, t = j, t + window
    samples = sampler.samples
    half = len(samples) // 2
    return {"videos": n, "masklets_selected": masklets, "masklet_types": list(types),
            "rows": stats.rows, "by_status": stats.by_status, "requests": st["requests"],
            "wall_s": stats.wall_s, "masklets_per_s": stats.masklets / stats.wall_s,
            "masklets_per_s_by_10s": rates,
            "driver_peak_mb": max((s["driver_mb"] for s in samples), default=0.0),
            "actor_peak_mb": max((s["actor_mb"] for s in samples), default=0.0),
            "actor_mb_first_half_peak": max((s["actor_mb"] for s in samples[:half]),
                                            default=0.0),
            "actor_mb_second_half_peak": max((s["actor_mb"] for s in samples[half:]),
                                             default=0.0),
            "rss_over_time": samples[:: max(1, len(samples) // 30)]}


# -- main --------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--base-videos", type=int, default=SAV_VIDEOS // 16)
    ap.add_argument("--answers", type=int, default=50_000, help="cache answers at 1x")
    ap.add_argument("--sizes", default="1,4,16")
    ap.add_argument("--run-videos", type=int, default=2000)
    ap.add_argument("--run-types", default="manual",
                    help="masklet types the run captions (manual: 3.75 per video)")
    ap.add_argument("--no-run", action="store_true")
    ap.add_argument("--quick", action="store_true", help="base 200 videos, 5K answers, run 200")
    ap.add_argument("--full", action="store_true", help="cache base 200K (16x = 3.2M answers)")
    ap.add_argument("--dir", default=None, help="work folder (default: a temp dir, removed)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], json.loads(args.child[1]))))
        return
    sys.path.insert(0, str(HERE))
    from _procs import loadavg

    if args.quick:
        args.base_videos, args.answers, args.run_videos = 200, 5_000, 200
    if args.full:
        args.answers = SAV_VIDEOS * 63 // 16  # 16x: SA-V's 3.2M answers
    sizes = [int(s) for s in args.sizes.split(",")]
    base = Path(args.dir or tempfile.mkdtemp(prefix="refsav-scale-"))
    base.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"cores": os.cpu_count(), "loadavg_before": loadavg(),
                           "base_videos": args.base_videos, "base_answers": args.answers,
                           "sizes": sizes}
    try:
        template = base / "template"
        template.mkdir(exist_ok=True)
        (template / "t.mp4").write_bytes(b"\0" * 1024)
        (template / "t.json").write_text("{}")
        data: list[dict[str, Any]] = []
        for s in sizes:
            n = args.base_videos * s
            root, out = base / f"sav-{s}", base / f"out-{s}"
            t0 = time.perf_counter()
            make_listing_root(root, n, template)
            built = time.perf_counter() - t0
            p = {"size": s, "videos": n, "root_built_s": built,
                 "plan": measure("plan", root=str(root), out=str(out))}
            p["shards"] = math.ceil(n / SHARD_SIZE)
            p["shards_done"] = mark_half_done(out)
            p["status"] = status_wall(out)
            p["resume"] = measure("resume", out=str(out))
            p["report"] = measure("report", out=str(out))
            data.append(p)
            shutil.rmtree(root)
            shutil.rmtree(out)
            print(f"# dataset {s}x: {n} videos done ({loadavg()})", file=sys.stderr)
        res["dataset"] = data
        caches: list[dict[str, Any]] = []
        for s in sizes:  # a bigger cache: more videos done, SA-V's ~63 answers each
            shared = base / f"cache-{s}"
            videos = max(ACTOR_VIDEOS, args.answers * s // ANSWERS_PER_VIDEO)
            t0 = time.perf_counter()
            make_cache(shared, args.answers * s, videos)
            built = time.perf_counter() - t0
            caches.append({
                "size": s, "answers": args.answers * s, "partitions": videos,
                "built_s": built,
                "actor": measure("actor", shared=str(shared), local=str(base / "local"),
                                 videos=videos),
                "whole_cache": measure("whole_cache", shared=str(shared))})
            if s != max(sizes):
                shutil.rmtree(shared)
            print(f"# cache {s}x: {args.answers * s} answers done ({loadavg()})",
                  file=sys.stderr)
        res["cache"] = caches
        if not args.no_run:
            biggest = base / f"cache-{max(sizes)}"
            res["run"] = run_point(base, args.run_videos, biggest,
                                   tuple(args.run_types.split(",")))
    finally:
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)
    res["loadavg_after"] = loadavg()
    d, c = res["dataset"], res["cache"]

    def r(points: list[dict[str, Any]], *path: str) -> float:
        a, b = points[0], points[-1]
        for k in path:
            a, b = a[k], b[k]
        return b / max(1e-9, a)

    res["ratios"] = {
        "data_x": sizes[-1] / sizes[0],
        "plan_wall": r(d, "plan", "wall_s"), "plan_rss": r(d, "plan", "peak_rss_mb"),
        "status_wall": r(d, "status", "wall_s"), "resume_wall": r(d, "resume", "wall_s"),
        "resume_rss": r(d, "resume", "peak_rss_mb"), "report_wall": r(d, "report", "wall_s"),
        "report_rss": r(d, "report", "peak_rss_mb"),
        "actor_startup_wall": r(c, "actor", "wall_s"),
        "actor_rss": r(c, "actor", "peak_rss_mb"), "actor_work_mb": r(c, "actor", "work_mb"),
        "whole_cache_wall": r(c, "whole_cache", "wall_s"),
        "whole_cache_rss": r(c, "whole_cache", "peak_rss_mb"),
        "whole_cache_work_mb": r(c, "whole_cache", "work_mb")}
    if args.json:
        print(json.dumps(res, indent=1))
        return
    print_table(res)


def print_table(res: dict[str, Any]) -> None:
    print(f"{'videos':>7} {'shards':>6} {'plan s':>7} {'plan MB':>7} {'status s':>8} "
          f"{'resume s':>8} {'resume MB':>9} {'report s':>8} {'report MB':>9}")
    for p in res["dataset"]:
        print(f"{p['videos']:>7} {p['shards']:>6} {p['plan']['wall_s']:>7.2f} "
              f"{p['plan']['peak_rss_mb']:>7.0f} {p['status']['wall_s']:>8.2f} "
              f"{p['resume']['wall_s']:>8.2f} {p['resume']['peak_rss_mb']:>9.0f} "
              f"{p['report']['wall_s']:>8.2f} {p['report']['peak_rss_mb']:>9.0f}")
    print(f"{'answers':>8} {'actor start s':>13} {'actor MB (work)':>15} {'in memory':>9} "
          f"{'whole-cache s':>13} {'whole-cache MB (work)':>21}")
    for c in res["cache"]:
        a, w = c["actor"], c["whole_cache"]
        print(f"{c['answers']:>8} {a['wall_s']:>13.3f} "
              f"{a['peak_rss_mb']:>8.0f} ({a['work_mb']:>4.0f}) {a['answers_in_memory']:>9} "
              f"{w['wall_s']:>13.2f} {w['peak_rss_mb']:>13.0f} ({w['work_mb']:>5.0f})")
    if "run" in res:
        u = res["run"]
        print(f"run: {u['videos']} videos, {u['rows']} rows ({u['masklet_types']}), "
              f"{u['requests']} requests in {u['wall_s']:.0f} s: {u['masklets_per_s']:.1f} "
              f"masklets/s (per 10 s: {u['masklets_per_s_by_10s']}); driver peak "
              f"{u['driver_peak_mb']:.0f} MB, caption actor peak {u['actor_peak_mb']:.0f} MB "
              f"(first half {u['actor_mb_first_half_peak']:.0f}, second half "
              f"{u['actor_mb_second_half_peak']:.0f})")
    q = res["ratios"]
    print(f"(loadavg before {res['loadavg_before']}, after {res['loadavg_after']}; "
          f"{res['cores']} cores)")
    print(f"RESULT {q['data_x']:.0f}x the videos: plan {q['plan_wall']:.2f}x time "
          f"{q['plan_rss']:.2f}x memory, status {q['status_wall']:.2f}x, resume set-up "
          f"{q['resume_wall']:.2f}x time {q['resume_rss']:.2f}x memory, report "
          f"{q['report_wall']:.2f}x time {q['report_rss']:.2f}x memory | {q['data_x']:.0f}x the "
          f"cache: actor start-up {q['actor_startup_wall']:.2f}x, memory {q['actor_rss']:.2f}x "
          f"(its work's {q['actor_work_mb']:.2f}x) (previous design, every answer loaded: "
          f"{q['whole_cache_wall']:.2f}x time, {q['whole_cache_rss']:.2f}x memory, its work's "
          f"{q['whole_cache_work_mb']:.2f}x)")


if __name__ == "__main__":
    main()
