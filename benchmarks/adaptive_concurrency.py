"""Adaptive concurrency against an engine of N slots: throughput vs N / latency, and the queue.

Why: a vLLM replica is only fast while its continuous batch is full and nothing is preempted;
how many requests that takes depends on hardware and prompts, so ``max_concurrency: auto``
finds it from the server's own metrics (``llm/concurrency.py``). This measures that against the
reference server started with ``--kv-capacity N --latency L`` (a subprocess on loopback: at
most N requests run at once for L seconds each, the rest wait in its queue, which its
``/metrics`` shows as ``vllm:num_requests_waiting``). Its best throughput is N / L.

What the figure includes: the model client alone (``ModelSession`` + ``judge_consistency``,
text-only judge calls, request cache off), driven by 2·N + 64 concurrent callers so demand
always exceeds what the server can run; no Ray, no CPU stage. Per N, side by side:

- **baseline**: today's fixed limit, the KV arithmetic's number for the judge model
  (``serve/capacity.py``, the same number ``auto`` starts from);
- **auto**: ``max_concurrency: auto``, no concurrency configured.

Throughput is measured at the server (its completed requests over the window) in steady state:
the last ``--window`` seconds after ``--warmup`` seconds. The server's running batch and waiting
queue are sampled every 0.25 s: the batch's mean over the window (how full the client keeps
it: what the limit controls), the queue's mean and max over the window, and its max over the
whole run (start-up included, when ``auto`` is still far from N). Req/s also depends on the
machine keeping up with N / L requests a second through both HTTP stacks (client and server
share this machine's cores). "Limit" is the limit the client settled on at the
end; "limit range" its min–max over the window.

    .venv/bin/python benchmarks/adaptive_concurrency.py [--capacities 8,64,512 --latency 2
        --warmup 40 --window 20] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from typing import Any

import httpx

from refsav_pipeline.llm.calls import judge_consistency
from refsav_pipeline.llm.config import ClientConfig, ModelsConfig
from refsav_pipeline.llm.session import ModelSession
from refsav_pipeline.llm.vllm_metrics import metrics_url, parse_vllm_metrics
from refsav_pipeline.pipeline.cli import free_port, reference_server


def _models(url: str, pinned: int | None) -> ModelsConfig:
    m = ModelsConfig()
    upd: dict[str, Any] = {"endpoints": [url]}
    if pinned is not None:
        upd["max_concurrency"] = pinned
    return m.model_copy(update={"judge": m.judge.model_copy(update=upd)})


async def _drive(url: str, n: int, pinned: int | None, warmup: float, window: float
                 ) -> dict[str, Any]:
    models = _models(url, pinned)
    name = models.judge.name
    client = ClientConfig(cache=False, request_timeout_s=300.0, connect_timeout_s=10.0,
                          health_timeout_s=10.0, backoff_base_s=0.05, backoff_max_s=1.0)
    samples: list[tuple[float, float, float, int, int]] = []  # t, running, waiting, limit, ours
    stats_url = url.removesuffix("/v1") + "/stats"
    t0 = time.monotonic()
    end = t0 + warmup + window
    async with ModelSession(models, client, None) as s, httpx.AsyncClient(
            timeout=30, trust_env=False) as http:

        async def caller(k: int) -> None:
            i = 0
            while time.monotonic() < end:
                i += 1
                await judge_consistency(s, f"A red car {k}.{i}.", f"A red car {k}.{i}.")

        async def sampler() -> None:
            while time.monotonic() < end:
                r = await http.get(metrics_url(url))
                v = parse_vllm_metrics(r.text, name)
                ep = next((e for e in s.figures().endpoints if e.model == models.judge.model),
                          None)
                if v is not None and ep is not None:
                    samples.append((time.monotonic() - t0, v.running, v.waiting, ep.limit,
                                    ep.in_flight))
                await asyncio.sleep(0.25)

        async def completions_at(t: float) -> int:
            await asyncio.sleep(max(0.0, t - time.monotonic()))
            r = await http.get(stats_url)
            return int(r.json()["chat_completions"])

        callers = [asyncio.create_task(caller(k)) for k in range(2 * n + 64)]
        sampling = asyncio.create_task(sampler())
        c0 = await completions_at(t0 + warmup)
        c1 = await completions_at(end)
        for t in callers:
            t.cancel()
        await asyncio.gather(*callers, sampling, return_exceptions=True)
    steady = [x for x in samples if x[0] >= warmup]
    waiting = [x[2] for x in steady]
    return {"rps": (c1 - c0) / window, "waiting_mean": statistics.fmean(waiting),
            "waiting_max": max(waiting), "waiting_max_whole_run": max(x[2] for x in samples),
            "running_mean": statistics.fmean(x[1] for x in steady),
            "limit_end": samples[-1][3], "limit_min": min(x[3] for x in steady),
            "limit_max": max(x[3] for x in steady),
            "trace": [(round(t, 2), r, w, lim) for t, r, w, lim, _ in samples[::4]]}


def run_point(n: int, latency: float, warmup: float, window: float) -> dict[str, Any]:
    start = ModelsConfig().judge.start_concurrency
    out: dict[str, Any] = {"capacity": n, "latency_s": latency, "ideal_rps": n / latency,
                           "start_limit": start}
    for mode, pinned in (("baseline", start), ("auto", None)):
        with reference_server(free_port(), "--kv-capacity", str(n), "--latency",
                              str(latency)) as url:
            res = asyncio.run(_drive(url, n, pinned, warmup, window))
        res["ratio"] = res["rps"] / out["ideal_rps"]
        out[mode] = res
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--capacities", default="8,64,512", help="N values, comma-separated")
    ap.add_argument("--latency", type=float, default=2.0, help="seconds per request in a batch")
    ap.add_argument("--warmup", type=float, default=40.0, help="seconds before measuring")
    ap.add_argument("--window", type=float, default=20.0, help="seconds measured")
    ap.add_argument("--json", action="store_true", help="print JSON results only")
    args = ap.parse_args()
    points = [run_point(int(n), args.latency, args.warmup, args.window)
              for n in args.capacities.split(",")]
    if args.json:
        json.dump(points, sys.stdout, indent=1)
        print()
        return
    head = ["N", "ideal/s", "mode", "req/s", "of ideal", "running mean", "limit",
            "limit range", "waiting mean", "waiting max", "waiting max (whole run)"]
    rows = [head]
    for p in points:
        for mode in ("baseline", "auto"):
            r = p[mode]
            rows.append([str(p["capacity"]), f"{p['ideal_rps']:.0f}", mode, f"{r['rps']:.1f}",
                         f"{r['ratio']:.2f}", f"{r['running_mean']:.0f}", str(r["limit_end"]),
                         f"{r['limit_min']}-{r['limit_max']}", f"{r['waiting_mean']:.1f}",
                         f"{r['waiting_max']:.0f}", f"{r['waiting_max_whole_run']:.0f}"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    for k, r in enumerate(rows):
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
        if k == 0:
            print("  ".join("-" * w for w in widths))
    print(f"(L = {args.latency} s per request; steady state = the last {args.window:g} s after "
          f"{args.warmup:g} s; baseline = fixed limit {points[0]['start_limit']} from the KV "
          "arithmetic, which auto starts from; client side only: ModelSession judge calls, "
          "no Ray)")
    print("RESULT " + " | ".join(
        f"N={p['capacity']}: auto {p['auto']['ratio']:.2f} of N/L (baseline "
        f"{p['baseline']['ratio']:.2f}), limit {p['auto']['limit_end']}, waiting max "
        f"{p['auto']['waiting_max']:.0f} (<= N: {p['auto']['waiting_max'] <= p['capacity']})"
        for p in points))


if __name__ == "__main__":
    main()
