"""The model stage at C requests in flight: achieved vs ideal throughput, CPU per request.

Why: real model servers answer in seconds and stay busy only with hundreds of requests in
flight, so the pipeline must keep C requests in flight at a cost per request that does not grow
with C. This runs the whole pipeline (``prepare_output`` + ``execute`` on local Ray: CPU-stage
tasks, the caption actor, the driver) against a minimal OpenAI-compatible stub server
(``refsav_pipeline.reference.stub_server``, a subprocess: fixed latency L, fixed answers, no pixel
work), for each C in the sweep, each in a fresh output folder with a fresh request cache.

C is the concurrency the servers are sized to: the captioner's endpoint allows 0.8·C and the
judge's 0.2·C requests at once (a masklet makes 4 captioner calls and 1 judge call, all of
length L), and ``run.max_inflight_masklets`` is C, so with enough masklets both limits stay
full and the ideal rate is C/L requests/s. Achieved is measured at the server in steady state:
the answers between the 25th and the 75th percentile answer, over the time between them.

CPU per request (ms) is counted from ``/proc``, split as: the driver (this process, including
Ray's threads in it), the caption actors, Ray (raylet, GCS and its other processes), the CPU
stage (task workers: decode, render, JPEG), and the stub server. "Pipeline" = driver + actors,
the part the model stage owns. It is given in steady state (sampled every 0.25 s, read at the
window's ends) and over the whole run (set-up, ramp and drain included). Bytes through
the driver per masklet are the pickled size of what the driver received and sent.

The sample: many small SA-V-shaped videos (``--width``/``--height``/``--frames``), 8 masklets
each, images sent at ``--max-side``, so the CPU stage keeps up on a small machine.

    .venv/bin/python benchmarks/model_stage.py [--concurrency 64,256,1024 --latency 2
        --seconds 20] [--json]
"""

from __future__ import annotations

import argparse
import bisect
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
import ray
from _procs import cmdline, cpu_of, descendants, loadavg, machine_busy, tree_cpu
from _sample import add_sample_args, sample, spec_from_args
from rich.console import Console

from refsav_pipeline.config import PipelineConfig
from refsav_pipeline.llm.config import ClientConfig
from refsav_pipeline.pipeline.actors import start_actors
from refsav_pipeline.pipeline.cli import free_port
from refsav_pipeline.pipeline.driver import execute, prepare_output
from refsav_pipeline.pipeline.shards import parquet_bytes

CALLS_PER_MASKLET = 5
STEPS_PER_MASKLET = 4  # object x2 (together), judge, scene, video


class Stub:
    """The stub server as a subprocess on loopback."""

    def __init__(self, latency: float, models: list[str]) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "refsav_pipeline.reference.stub_server",
             "--port", str(self.port), "--latency", str(latency), "--models", ",".join(models)],
            stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "stub server at" not in line:
            raise RuntimeError(f"stub server did not start: {line!r}")
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"http://127.0.0.1:{self.port}/stats", timeout=30,
                         trust_env=False).json()

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def config(url: str, c: int, max_side: int, actors: int) -> PipelineConfig:
    cfg = PipelineConfig()
    cap, judge = max(1, round(0.8 * c)), max(1, round(0.2 * c))
    models = cfg.models.model_copy(update={
        "captioner": cfg.models.captioner.model_copy(
            update={"endpoints": [url], "max_concurrency": cap}),
        "judge": cfg.models.judge.model_copy(
            update={"endpoints": [url], "max_concurrency": judge})})
    cfg = cfg.model_copy(update={"models": models})
    cfg.render.max_side = max_side
    cfg.client = ClientConfig(connect_timeout_s=10.0, request_timeout_s=120.0, max_attempts=6,
                              backoff_base_s=0.05, backoff_max_s=1.0, health_timeout_s=10.0,
                              reprobe_interval_s=1.0)
    cfg.run.shard_size = 8
    cfg.run.model_actors = actors
    cfg.run.max_inflight_masklets = c
    cfg.run.max_prepared_videos = max(8, math.ceil(c / 8))
    return cfg


def steady_window(done_at: list[float]) -> tuple[float, float, int]:
    """The window between the 25th and 75th percentile answer: start, end, answers in it."""
    t = sorted(done_at)
    i, j = len(t) // 4, 3 * len(t) // 4
    return t[i], t[j], j - i


def _split_cpu(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
               ) -> dict[str, float]:
    """CPU seconds spent between the two snapshots, by kind of Ray process."""
    out = {"ray": 0.0, "cpu_stage": 0.0}
    for pid, (cmd, cpu) in after.items():
        if "CaptionActor" in cmd:
            continue  # counted by the actors themselves (they end with the run)
        spent = cpu - before.get(pid, (cmd, 0.0))[1]
        kind = "cpu_stage" if cmd.startswith("ray::") else "ray"
        out[kind] += spent
    return out


KINDS = ("driver", "actors", "ray", "cpu_stage", "stub_server")


def _kind(pid: int, cmd: str, stub: int) -> str:
    if pid == stub:
        return "stub_server"
    if "CaptionActor" in cmd:
        return "actors"
    return "cpu_stage" if cmd.startswith("ray::") else "ray"


class CpuSampler(threading.Thread):
    """CPU seconds by kind of process, sampled every ``period`` s (monotonic clock, the same
    one the stub stamps answers with), so CPU can be read for any window of the run. Its own
    CPU is taken out of the driver's."""

    def __init__(self, stub_pid: int, period: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.stub_pid, self.period = stub_pid, period
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.own_cpu = 0.0
        self._stop_event = threading.Event()

    def run(self) -> None:
        me = os.getpid()
        pids: dict[int, str] = {}
        refreshed = 0.0
        while not self._stop_event.wait(self.period):
            now = time.monotonic()
            if now - refreshed > 2.0:
                refreshed = now
                for pid in {*descendants(me), *pids}:  # titles change: a worker becomes an actor
                    try:
                        pids[pid] = cmdline(pid)
                    except OSError:
                        pids.pop(pid, None)
            cpu = dict.fromkeys(KINDS, 0.0)
            for pid, cmd in list(pids.items()):
                try:
                    cpu[_kind(pid, cmd, self.stub_pid)] += cpu_of(pid)
                except OSError:
                    pids.pop(pid)  # ended: its CPU stays in earlier samples only
            cpu["driver"] = cpu_of(me) - time.thread_time()
            self.samples.append((now, cpu))
        self.own_cpu = time.thread_time()

    def stop(self) -> None:
        self._stop_event.set()
        self.join()

    def at(self, t: float) -> dict[str, float]:
        """CPU by kind at time ``t`` (linear between samples)."""
        times = [x for x, _ in self.samples]
        k = min(max(1, bisect.bisect_left(times, t)), len(times) - 1)
        (t0, a), (t1, b) = self.samples[k - 1], self.samples[k]
        f = 0.0 if t1 == t0 else min(1.0, max(0.0, (t - t0) / (t1 - t0)))
        return {kind: a[kind] + f * (b[kind] - a[kind]) for kind in KINDS}


@ray.remote
def _warm() -> int:
    import refsav_pipeline.pipeline.actors  # noqa: F401  (the CPU-stage task's module)

    time.sleep(0.5)
    return os.getpid()


def idle_actor_ms_per_s(url: str, max_side: int, seconds: float = 5.0) -> float:
    """CPU ms per second of one caption actor with nothing to do: what every actor costs
    whatever the load (Ray's worker wakes its main thread 100 times a second to check for
    signals, ``CoreWorker::RunTaskExecutionLoop``)."""
    with tempfile.TemporaryDirectory(prefix="refsav-idle-actor-") as tmp:
        (actor,) = start_actors(config(url, 64, max_side, 1), Path(tmp))
        ray.get(actor.stats.remote())  # up and set up
        time.sleep(1.0)
        c0 = ray.get(actor.stats.remote())["actor_cpu_s"]
        time.sleep(seconds)
        c1 = ray.get(actor.stats.remote())["actor_cpu_s"]
        ray.get(actor.close.remote())
        ray.kill(actor)
    return 1000.0 * (c1 - c0) / seconds


def fixed_and_marginal(points: list[dict[str, Any]]) -> dict[str, Any]:
    """Pipeline CPU rate (ms/s) in steady state against requests/s, as fixed + marginal.

    CPU per request = marginal + fixed/rate: a fixed cost per second (idle actor and driver
    threads) is shared by fewer requests at small C, so the whole-cost figure falls with C
    even when no request costs more than another. The marginal cost between adjacent points
    is what grows if a request's own cost grows with C (as it did with one big HTTP pool)."""
    xs = [p["steady_rps"] for p in points]
    ys = [p["steady_cpu_ms_per_request"]["pipeline"] * p["steady_rps"] for p in points]
    marginal = [(ys[k + 1] - ys[k]) / (xs[k + 1] - xs[k]) for k in range(len(xs) - 1)
                if xs[k + 1] != xs[k]]
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    return {"pipeline_ms_per_s": ys, "marginal_ms_per_request": marginal,
            "fit_ms_per_request": slope, "fit_fixed_ms_per_s": my - slope * mx}


def run_point(root: Path, stub: Stub, c: int, latency: float, videos: int, max_side: int,
              actors: int) -> dict[str, Any]:
    me = os.getpid()
    stub.stats()  # clears its answer times
    with tempfile.TemporaryDirectory(prefix="refsav-model-stage-") as tmp:
        out = Path(tmp) / "run"
        cfg = config(stub.url, c, max_side, actors)
        prepare_output(root, out, cfg, limit_videos=videos)
        ray_before = tree_cpu(me)
        stub_cpu0, drv0 = cpu_of(stub.proc.pid), time.process_time()
        sampler = CpuSampler(stub.proc.pid)
        sampler.start()
        b0 = machine_busy()
        stats = execute(out, cfg, show_progress=False, console=Console(file=sys.stderr))
        b1 = machine_busy()
        sampler.stop()
        drv = time.process_time() - drv0 - sampler.own_cpu
        stub_cpu = cpu_of(stub.proc.pid) - stub_cpu0
        ray_cpu = _split_cpu(ray_before, tree_cpu(me))
    st = stub.stats()
    t0, t1, answers = steady_window(st["done_at"])
    rate = answers / (t1 - t0)
    window = t1 - t0
    c0, c1 = sampler.at(t0), sampler.at(t1)
    steady_ms = {k: 1000.0 * (c1[k] - c0[k]) / answers for k in KINDS}
    steady_ms["pipeline"] = steady_ms["driver"] + steady_ms["actors"]
    requests = st["requests"]
    actor_cpu = float(stats.model.get("actor_cpu_s", 0.0))
    ideal = c / latency
    ms = 1000.0 / max(1, requests)
    return {
        "concurrency": c, "latency_s": latency, "videos": videos, "masklets": stats.masklets,
        "rows": stats.rows, "by_status": stats.by_status, "requests": requests,
        "peak_in_flight_server": st["peak_in_flight"],
        "peak_in_flight_pipeline": stats.model.get("peak_in_flight", {}),
        "wall_s": stats.wall_s, "ideal_rps": ideal, "steady_rps": rate, "window_s": window,
        "achieved_over_ideal": rate / ideal, "overall_rps": requests / stats.wall_s,
        "steady_cpu_ms_per_request": steady_ms,
        "cpu_ms_per_request": {
            "driver": drv * ms, "actors": actor_cpu * ms, "pipeline": (drv + actor_cpu) * ms,
            "ray": ray_cpu["ray"] * ms, "cpu_stage": ray_cpu["cpu_stage"] * ms,
            "stub_server": stub_cpu * ms},
        "driver_bytes_per_masklet": stats.driver_bytes / max(1, stats.masklets),
        "cores_busy": (b1[0] - b0[0]) / max(1, b1[1] - b0[1]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_sample_args(ap, videos=0, width=128, height=96, frames=33, objects=8, gop=24)
    ap.add_argument("--concurrency", default="64,256,1024", help="C values, comma-separated")
    ap.add_argument("--latency", type=float, default=2.0, help="stub server latency L, s")
    ap.add_argument("--seconds", type=float, default=20.0,
                    help="steady-state seconds wanted per point (sets the masklets used)")
    ap.add_argument("--max-side", type=int, default=128, help="render.max_side of the images")
    ap.add_argument("--actors", type=int, default=1, help="run.model_actors")
    ap.add_argument("--json", action="store_true", help="print JSON results only")
    args = ap.parse_args()
    logging.getLogger("ray").setLevel(logging.WARNING)
    cs = [int(c) for c in args.concurrency.split(",")]
    # masklets/s at the ideal rate is C/(5L); the run needs the ramp (one masklet's 4 steps
    # of L and the queueing behind them) plus the steady seconds wanted.
    need = {c: math.ceil(c / (CALLS_PER_MASKLET * args.latency)
                         * (args.seconds + 2 * STEPS_PER_MASKLET * args.latency)) for c in cs}
    per_video = args.objects
    videos = {c: math.ceil(n / per_video) for c, n in need.items()}
    spec = spec_from_args(args)
    spec = type(spec)(**{**asdict(spec), "videos": args.videos or max(videos.values())})
    load_before = loadavg()
    parquet_bytes([])  # the first shard write imports pandas (via pyarrow): not in any run
    models = PipelineConfig().models
    with sample(spec, args.sample_dir) as root:
        stub = Stub(args.latency, [models.captioner.name, models.judge.name])
        ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False,
                 object_store_memory=512 * 1024 * 1024, logging_level=logging.WARNING)
        try:
            ray.get([_warm.remote() for _ in range(os.cpu_count() or 1)])
            idle_actor = idle_actor_ms_per_s(stub.url, args.max_side)
            points = [run_point(root, stub, c, args.latency, min(videos[c], spec.videos),
                                args.max_side, args.actors) for c in cs]
        finally:
            ray.shutdown()
            stub.close()
    res = {"sample": asdict(spec), "latency_s": args.latency, "max_side": args.max_side,
           "actors": args.actors, "cores": os.cpu_count(), "loadavg_before": load_before,
           "loadavg_after": loadavg(), "points": points, "idle_actor_ms_per_s": idle_actor,
           "fixed_and_marginal": fixed_and_marginal(points) if len(points) > 1 else None}
    if args.json:
        json.dump(res, sys.stdout, indent=1)
        print()
        return
    head = ["C", "masklets", "requests", "ideal/s", "steady/s", "achieved/ideal",
            "server peak", "driver ms", "actors ms", "pipeline ms", "Ray ms", "CPU stage ms",
            "stub ms", "whole-run pipeline ms", "driver B/masklet", "cores busy"]
    rows = [head]
    for p in points:
        cpu = p["steady_cpu_ms_per_request"]
        rows.append([str(p["concurrency"]), str(p["masklets"]), str(p["requests"]),
                     f"{p['ideal_rps']:.0f}", f"{p['steady_rps']:.1f}",
                     f"{p['achieved_over_ideal']:.2f}", str(p["peak_in_flight_server"]),
                     f"{cpu['driver']:.2f}", f"{cpu['actors']:.2f}", f"{cpu['pipeline']:.2f}",
                     f"{cpu['ray']:.2f}", f"{cpu['cpu_stage']:.2f}", f"{cpu['stub_server']:.2f}",
                     f"{p['cpu_ms_per_request']['pipeline']:.2f}",
                     f"{p['driver_bytes_per_masklet']:.0f}", f"{p['cores_busy']:.0%}"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    for k, r in enumerate(rows):
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
        if k == 0:
            print("  ".join("-" * w for w in widths))
    print("(steady = between the 25th and 75th percentile answer; ms = CPU ms per request "
          "in that window; whole-run = from execute() start to end, set-up and ramp included)")
    print(f"(L = {args.latency} s; {spec.width}x{spec.height} videos of {spec.frames} frames, "
          f"{spec.objects} masklets each, images at max side {args.max_side}; "
          f"{args.actors} caption actor(s); ms = CPU ms per request; {os.cpu_count()} cores; "
          f"/proc/loadavg before: {load_before}; after: {res['loadavg_after']})")
    pipe = [p["steady_cpu_ms_per_request"]["pipeline"] for p in points]
    fm = res["fixed_and_marginal"]
    flat = ""
    if fm is not None:
        marg = fm["marginal_ms_per_request"]
        print(f"(pipeline CPU in steady state = fixed + marginal x requests/s: fit "
              f"{fm['fit_fixed_ms_per_s']:.1f} ms/s + {fm['fit_ms_per_request']:.2f} ms per "
              f"request; marginal between adjacent C: "
              + ", ".join(f"{m:.2f}" for m in marg)
              + f" ms/request; one idle caption actor alone: {idle_actor:.1f} ms/s)")
        flat = (f" | marginal pipeline CPU/request {', '.join(f'{m:.2f}' for m in marg)} ms, "
                f"max/min {max(marg) / max(1e-9, min(marg)):.2f}; fixed "
                f"{fm['fit_fixed_ms_per_s']:.1f} ms/s (idle actor {idle_actor:.1f} ms/s)")
    print("RESULT " + " | ".join(
        f"C={p['concurrency']}: {p['achieved_over_ideal']:.2f} of ideal "
        f"({p['steady_rps']:.0f}/{p['ideal_rps']:.0f} req/s), pipeline "
        f"{p['steady_cpu_ms_per_request']['pipeline']:.2f} ms/req steady "
        f"({p['cpu_ms_per_request']['pipeline']:.2f} whole run), "
        f"{p['driver_bytes_per_masklet']:.0f} B/masklet via driver" for p in points)
        + f" | steady pipeline CPU/request max/min {max(pipe) / max(1e-9, min(pipe)):.2f}"
        + flat)


if __name__ == "__main__":
    main()
