"""Request-cache writes with node-local staging vs straight to the shared folder.

Why: on a cluster ``<out>/cache/`` is on shared storage (NFS, Lustre), where one small write
per answer costs a round trip to the file server. Staging keeps ``put`` on node-local disk and
moves the answers in one large append + fsync per promotion interval. This times ``put`` for
``--answers`` answers of about 1 KB (the size of a caption record) both ways, on the caller's
thread, and then one promotion of everything put. The honest baseline is the previous design
(``cache_local_dir: ""``): the same ``put`` into a shard in the shared folder.

By default both folders are under the temp dir (one local disk): the ratio then shows what
staging costs on the hot path, not what it saves. ``--shared DIR`` puts the shared folder on
the storage you want to compare against (e.g. an NFS mount).

    .venv/bin/python benchmarks/cache_staging.py [--answers 50000] [--repeat 3]
        [--shared DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from refsav_pipeline.llm.cache import RequestCache, cache_key

RECORD = {"text": "a red car parked on the left side of the street, " * 12,
          "usage": {"prompt_tokens": 1800, "completion_tokens": 120, "total_tokens": 1920},
          "latency_s": 1.234567, "attempts": 1, "endpoint": "http://10.0.0.1:8000/v1",
          "model": "OpenGVLab/InternVL2-Llama3-76B", "prompt": "object_caption_crop@v1"}


def time_puts(shared: Path, local_dir: str, n: int) -> tuple[float, float, int]:
    """(µs per put, seconds of the final promotion + close, bytes written) for one writer."""
    keys = [cache_key({"i": i}) for i in range(n)]
    cache = RequestCache(shared, local_dir=local_dir, promote_interval_s=3600)
    t0 = time.perf_counter()
    for k in keys:
        cache.put(k, RECORD)
    put_s = time.perf_counter() - t0
    size = (cache.local_shard or cache.shard).stat().st_size  # type: ignore[union-attr]
    t0 = time.perf_counter()
    cache.close()
    close_s = time.perf_counter() - t0
    assert len(RequestCache(shared, local_dir="")) == n
    return put_s / n * 1e6, close_s, size


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--answers", type=int, default=50_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--shared", type=Path, default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="refsav-cache-bench-"))
    shared_root = args.shared or base / "shared"
    runs: dict[str, list[tuple[float, float, int]]] = {"direct": [], "staged": []}
    try:
        for r in range(args.repeat):
            for mode in ("direct", "staged"):
                shared = shared_root / f"{mode}-{r}" / "cache"
                local = "" if mode == "direct" else str(base / "local")
                runs[mode].append(time_puts(shared, local, args.answers))
                shutil.rmtree(shared.parent, ignore_errors=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    put = {m: statistics.median(x[0] for x in v) for m, v in runs.items()}
    close = {m: statistics.median(x[1] for x in v) for m, v in runs.items()}
    mb = runs["staged"][0][2] / 1e6
    out = {"answers": args.answers, "mb": round(mb, 1), "loadavg": os.getloadavg(),
           "put_us": put, "close_s": close, "promote_mb_per_s": mb / close["staged"],
           "staged_over_direct_put": put["staged"] / put["direct"]}
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"{args.answers} answers, {mb:.1f} MB per writer, median of {args.repeat}; "
          f"loadavg {out['loadavg'][0]:.2f}")
    print(f"{'':8} {'put (µs)':>10} {'close (s)':>10}")
    for m in ("direct", "staged"):
        print(f"{m:8} {put[m]:>10.2f} {close[m]:>10.3f}")
    print(f"RESULT put staged/direct {out['staged_over_direct_put']:.2f}x; one promotion of "
          f"everything: {out['promote_mb_per_s']:.0f} MB/s (close, incl. fsync)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
