"""Whole-pipeline throughput with 1 vs 2 CPU-stage workers, next to the CPU stage alone.

Why: the CPU stage (read JSON, choose frames from RLE, decode the needed frames once per video,
render, JPEG) is what ``run.cpu_workers`` scales; the model stage only waits on servers. For
each worker count this first runs the CPU stage alone (the pipeline's own Ray task over every
video, at most that many at once, results fetched to the driver, no model stage), then the
whole pipeline: ``prepare_output`` + ``execute`` (local Ray, progress off) on the same
SA-V-shaped sample against the reference server with no added latency and images sent at
``--max-side 96`` (the server's pixel "vision" is NumPy on the same cores: at 1024 it is a
large part of the run), each worker count in a fresh output dir with a fresh request cache and
its own Ray instance (started here with ``execute``'s settings, its ``cpu_workers`` worker
processes warmed up first so no run pays for Python imports mid-way; the driver's one-time
pyarrow→pandas import is paid before the first run too). Reports wall time (``run_shards``,
i.e. after Ray is up), masklets/s and how busy the machine's cores were (``/proc/stat``, all
processes). The reference server, the caption actor (a fresh Ray worker process per run: its
start-up is inside the wall time), the driver and Ray's own processes share the cores with the
CPU stage, so once the cores are full the whole pipeline cannot scale like the stage alone.

    .venv/bin/python benchmarks/scaling.py [--videos 8 --workers 1,2 --latency 0] [--json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import ray
from _procs import cpu_of, machine_busy, server_pid
from _sample import add_sample_args, sample, spec_from_args
from rich.console import Console

from refsav_pipeline.config import PipelineConfig
from refsav_pipeline.llm.config import ClientConfig
from refsav_pipeline.pipeline.actors import prepare_remote
from refsav_pipeline.pipeline.cli import free_port, reference_server, with_endpoints
from refsav_pipeline.pipeline.driver import execute, prepare_output
from refsav_pipeline.pipeline.shards import parquet_bytes
from refsav_pipeline.sav.index import index_sav_root


def config(url: str, workers: int, max_side: int) -> PipelineConfig:
    """Defaults pointed at ``url`` (as ``tests/pipeline_helpers.config_for``), ``workers``
    CPU-stage tasks at once, one video per shard so shards never serialise the work."""
    cfg = with_endpoints(PipelineConfig(), url)
    cfg.render.max_side = max_side
    cfg.client = ClientConfig(connect_timeout_s=2.0, request_timeout_s=30.0, max_attempts=6,
                              backoff_base_s=0.01, backoff_max_s=0.05, health_timeout_s=2.0,
                              reprobe_interval_s=0.2)
    cfg.run.cpu_workers = workers
    cfg.run.shard_size = 1
    return cfg


@ray.remote
def _warm() -> int:
    """Occupy one worker process for a moment, with the CPU stage's task module imported."""
    import refsav_pipeline.pipeline.actors  # noqa: F401  (where the CPU-stage task lives)

    time.sleep(0.5)
    return os.getpid()


def cpu_stage_alone(root: Path, cfg: PipelineConfig, workers: int) -> dict[str, Any]:
    """The pipeline's CPU-stage task over every video, ``workers`` at a time, results fetched
    to the driver as ``run_shards`` does; no model stage. Needs Ray up (and warm)."""
    refs = index_sav_root(root)
    fingerprint = cfg.fingerprint()
    prepare = prepare_remote.options(num_cpus=cfg.run.cpus_per_task)
    todo = list(refs)
    running: list[ray.ObjectRef] = []
    jobs = cpu_s = 0.0
    b0 = machine_busy()
    t0 = time.perf_counter()
    while todo or running:
        while todo and len(running) < workers:
            running.append(prepare.remote(str(root), todo.pop(0), cfg, fingerprint, None))
        ready, running = ray.wait(running, num_returns=1)
        pv = ray.get(ready[0])
        jobs += len(pv.jobs)
        cpu_s += pv.cpu_s
    wall = time.perf_counter() - t0
    b1 = machine_busy()
    return {"videos": len(refs), "masklets": int(jobs), "wall_s": wall, "cpu_s": cpu_s,
            "busy": (b1[0] - b0[0]) / max(1, b1[1] - b0[1])}


def run_once(root: Path, url: str, workers: int, max_side: int) -> dict[str, Any]:
    server = server_pid()
    with tempfile.TemporaryDirectory(prefix="refsav-scaling-") as tmp:
        out = Path(tmp) / "run"  # fresh output dir, so a fresh request cache in it
        cfg = config(url, workers, max_side)
        t0 = time.perf_counter()
        prepare_output(root, out, cfg)
        ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False,
                 object_store_memory=cfg.run.object_store_memory_mb * 1024 * 1024,
                 logging_level=logging.WARNING)
        try:
            ray.get([_warm.remote() for _ in range(workers)])
            t1 = time.perf_counter()
            alone = cpu_stage_alone(root, cfg, workers)
            server_cpu = cpu_of(server)
            b0 = machine_busy()
            stats = execute(out, cfg, show_progress=False, console=Console(file=sys.stderr))
            b1 = machine_busy()
            server_cpu = cpu_of(server) - server_cpu
        finally:
            ray.shutdown()
        total = time.perf_counter() - t0
        ray_start = t1 - t0
    calls = stats.model.get("calls", {})
    cached = sum(v.get("cached", 0) for v in calls.values())
    return {"cpu_workers": workers, "rows": stats.rows, "by_status": stats.by_status,
            "wall_s": stats.wall_s, "total_s": total, "ray_start_s": ray_start,
            "masklets_per_s": stats.rows / stats.wall_s, "cpu_stage_s": stats.cpu_s,
            "busy": (b1[0] - b0[0]) / max(1, b1[1] - b0[1]), "stage_alone": alone,
            "server_cpu_s": server_cpu,
            "frames_decoded": stats.frames_decoded,
            "model_calls": sum(v.get("calls", 0) for v in calls.values()),
            "cached_calls": cached}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_sample_args(ap, videos=8)
    ap.add_argument("--workers", default="1,2", help="comma-separated cpu_workers values")
    ap.add_argument("--latency", type=float, default=0.0, help="reference server latency, s")
    ap.add_argument("--max-side", type=int, default=96,
                    help="render.max_side: longest side of the images sent (default 96, so "
                    "the reference server's NumPy pixel work, on the same cores, stays small)")
    ap.add_argument("--json", action="store_true", help="print JSON results only")
    args = ap.parse_args()
    logging.getLogger("ray").setLevel(logging.WARNING)
    spec = spec_from_args(args)
    workers = [int(w) for w in args.workers.split(",")]
    load = os.getloadavg()[0]
    parquet_bytes([])  # the first shard write imports pandas (via pyarrow): not in any run
    with sample(spec, args.sample_dir) as root, \
            reference_server(free_port(), "--latency", str(args.latency)) as url:
        runs = [run_once(root, url, w, args.max_side) for w in workers]
    base = runs[0]
    for r in runs:
        r["speedup"] = base["wall_s"] / r["wall_s"]
        r["stage_alone"]["speedup"] = base["stage_alone"]["wall_s"] / r["stage_alone"]["wall_s"]
    res = {"sample": asdict(spec), "server_latency_s": args.latency,
           "max_side": args.max_side, "runs": runs}
    if args.json:
        json.dump(res, sys.stdout, indent=1)
        print()
        return
    head = ["cpu_workers", "masklets", "status", "wall s", "masklets/s", "CPU-stage s",
            "server CPU s", "model calls", "cached", "cores busy", "speedup",
            "stage alone s", "its cores busy", "stage speedup", "Ray start+warm s"]
    rows = [head] + [[str(r["cpu_workers"]), str(r["rows"]),
                      ",".join(f"{k}={v}" for k, v in sorted(r["by_status"].items())),
                      f"{r['wall_s']:.2f}", f"{r['masklets_per_s']:.2f}",
                      f"{r['cpu_stage_s']:.2f}", f"{r['server_cpu_s']:.2f}",
                      str(r["model_calls"]), str(r["cached_calls"]), f"{r['busy']:.0%}",
                      f"{r['speedup']:.2f}x", f"{r['stage_alone']['wall_s']:.2f}",
                      f"{r['stage_alone']['busy']:.0%}", f"{r['stage_alone']['speedup']:.2f}x",
                      f"{r['ray_start_s']:.2f}"] for r in runs]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    for k, row in enumerate(rows):
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
        if k == 0:
            print("  ".join("-" * w for w in widths))
    print(f"({spec.videos} videos {spec.width}x{spec.height}x{spec.frames}, images sent at max "
          f"side {args.max_side}, reference server latency {args.latency} s; wall s = "
          f"run_shards after Ray is up; stage alone = the CPU-stage tasks only; cores busy = "
          f"all processes, {os.cpu_count()} cores; load average before: {load:.1f})")
    print("RESULT " + " | ".join(
        f"{r['cpu_workers']} worker(s): {r['wall_s']:.2f} s, {r['masklets_per_s']:.2f} "
        f"masklets/s" for r in runs) + f" | speedup {runs[-1]['speedup']:.2f}x"
        " | CPU stage alone: " + ", ".join(
            f"{r['cpu_workers']} worker(s) {r['stage_alone']['wall_s']:.2f} s" for r in runs)
        + f", speedup {runs[-1]['stage_alone']['speedup']:.2f}x")


if __name__ == "__main__":
    main()
