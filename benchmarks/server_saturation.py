"""Does the real client + reference server reach the ideal throughput C/L of a fixed-latency server?

Why: the model stage waits on servers that take L seconds per request and serve many at once;
with C requests in flight the best possible rate is C/L, and anything lower is overhead of
ours: the client (prompt rendering, base64, JSON, httpx, balancing) or the reference server
(uvicorn/FastAPI, JPEG decoding and its pixel "vision"). This starts ``refsav serve reference
--latency L`` as a real subprocess on loopback and drives it through the real client
(``ModelSession`` + ``describe_scene``, request cache off, a distinct image per request) with C
closed-loop callers. Their first calls are spread over ``--ramp`` seconds (default L; a real
pipeline's requests do not arrive in lockstep), and the rate is measured in steady state: over
N completions after the first C and before the last C. Reports achieved / ideal (target >=
0.95), latency p50/p95, and the CPU ms per request in this process (client) and in the server.

    .venv/bin/python benchmarks/server_saturation.py [--latency 0.2 --concurrency 32
        --requests 640 --image 64x48 --ramp 0.2] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from refsav_pipeline.colors import OBJECT_PALETTE
from refsav_pipeline.llm.calls import describe_scene
from refsav_pipeline.llm.session import ModelSession
from refsav_pipeline.llm.testing import (
    background,
    blob_mask,
    contour_frame,
    fast_client,
    models_at,
    to_jpeg,
)
from refsav_pipeline.pipeline.cli import free_port, reference_server


def scene_images(width: int, height: int, count: int, seed: int = 0) -> list[bytes]:
    """``count`` distinct scene-call JPEGs like the pipeline's: an object outlined in yellow."""
    rng = np.random.default_rng(seed)
    bg = background(height, width, seed)
    colors = list(OBJECT_PALETTE.values())
    out = []
    r = max(6, min(width, height) // 6)
    for i in range(count):
        cx = int(rng.integers(r + 2, max(r + 3, width - r - 2)))
        cy = int(rng.integers(r + 2, max(r + 3, height - r - 2)))
        frame, mask = bg.copy(), blob_mask(height, width, cx, cy, r)
        frame[mask] = colors[i % len(colors)]
        out.append(to_jpeg(contour_frame(frame, mask)))
    return out


def cpu_of(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_pid() -> int:
    """The reference server: our child process running ``serve reference``."""
    me = os.getpid()
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = Path(f"/proc/{d}/cmdline").read_text()
        except OSError:
            continue
        if ppid == me and "reference" in cmd:
            return int(d)
    raise RuntimeError("reference server process not found")


async def drive(url: str, server: int, images: list[bytes], concurrency: int, n: int,
                ramp_s: float) -> dict[str, Any]:
    """``n + 2C`` scene calls by C closed-loop callers; steady-state stats of the middle n."""
    session = ModelSession(models_at(url, max_concurrency=concurrency),
                           fast_client(cache=False, request_timeout_s=60.0))
    total = n + 2 * concurrency
    done: list[float] = []
    latency: list[float] = []
    cpu: dict[int, tuple[float, float]] = {}
    counter = iter(range(total))

    async def caller(k: int) -> None:
        await asyncio.sleep(ramp_s * k / concurrency)
        for i in counter:
            t0 = time.perf_counter()
            await describe_scene(session, images[i], f"A coloured object, request {i}.")
            done.append(time.perf_counter())
            latency.append(done[-1] - t0)
            if len(done) in (concurrency, concurrency + n):
                cpu[len(done)] = (cpu_of(os.getpid()), cpu_of(server))

    async with session:
        await asyncio.gather(*(caller(k) for k in range(concurrency)))
        eps = session.stats()["endpoints"]
    a, b = concurrency, concurrency + n
    wall = done[b - 1] - done[a - 1]
    lat = latency[a:b]
    (c0, s0), (c1, s1) = cpu[a], cpu[b]
    return {"wall_s": wall, "rps": n / wall, "p50_s": float(np.percentile(lat, 50)),
            "p95_s": float(np.percentile(lat, 95)), "max_s": max(lat),
            "client_cpu_ms_per_req": 1000 * (c1 - c0) / n,
            "server_cpu_ms_per_req": 1000 * (s1 - s0) / n,
            "failed_attempts": sum(e["failures"] for role in eps.values() for e in role)}


def run(latency: float, concurrency: int, n: int, width: int, height: int,
        ramp_s: float) -> dict[str, Any]:
    images = scene_images(width, height, n + 2 * concurrency)
    with reference_server(free_port(), "--latency", str(latency)) as url:
        res = asyncio.run(drive(url, server_pid(), images, concurrency, n, ramp_s))
    ideal = concurrency / latency
    return {"latency_s": latency, "concurrency": concurrency, "requests": n, "ramp_s": ramp_s,
            "image": f"{width}x{height}",
            "image_bytes": int(np.mean([len(i) for i in images])), "ideal_rps": ideal,
            **res, "ratio": res["rps"] / ideal}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency", type=float, default=0.2, help="server latency L, s")
    ap.add_argument("--concurrency", type=int, default=32, help="requests in flight C")
    ap.add_argument("--requests", type=int, default=640, help="timed (steady-state) requests N")
    ap.add_argument("--image", default="64x48", help="WxH of the scene images (default small, "
                    "so the server's pixel work stays out of the transport measurement)")
    ap.add_argument("--ramp", type=float, default=None,
                    help="seconds over which the callers start (default L; 0: in lockstep)")
    ap.add_argument("--json", action="store_true", help="print JSON results only")
    args = ap.parse_args()
    w, h = (int(v) for v in args.image.lower().split("x"))
    ramp = args.latency if args.ramp is None else args.ramp
    r = run(args.latency, args.concurrency, args.requests, w, h, ramp)
    if args.json:
        json.dump(r, sys.stdout, indent=1)
        print()
        return
    rows = [("server latency L", f"{r['latency_s']:.3f} s"),
            ("concurrency C", str(r["concurrency"])),
            ("requests N (steady state)", str(r["requests"])),
            ("callers start over", f"{r['ramp_s']:.3f} s"),
            ("images", f"{r['image']} JPEG, ~{r['image_bytes']} B, one per request"),
            ("wall", f"{r['wall_s']:.2f} s"),
            ("ideal C/L", f"{r['ideal_rps']:.1f} req/s"),
            ("achieved", f"{r['rps']:.1f} req/s"),
            ("latency p50 / p95 / max",
             f"{r['p50_s']:.3f} / {r['p95_s']:.3f} / {r['max_s']:.3f} s"),
            ("client CPU per request", f"{r['client_cpu_ms_per_req']:.2f} ms"),
            ("server CPU per request", f"{r['server_cpu_ms_per_req']:.2f} ms"),
            ("failed attempts", str(r["failed_attempts"]))]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k.ljust(width)}  {v}")
    print(f"RESULT achieved/ideal = {r['rps']:.1f}/{r['ideal_rps']:.1f} req/s = "
          f"{r['ratio']:.3f} (target >= 0.95)")


if __name__ == "__main__":
    main()
