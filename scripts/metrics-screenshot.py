"""Renders docs/metrics-prometheus.png: Prometheus' graph page over a test run (docs/metrics.md).

A synthetic SA-V sample, the reference server with ``--kv-capacity 4``, ``refsav run
--metrics-port`` and a Prometheus scraping both (all on loopback, as in
tests/test_metrics_prometheus.py); once the run is done, headless Chromium screenshots the graph
page with the dashboard's key queries (Playwright driving Debian's /usr/bin/chromium). Grafana
cannot be installed here (not in Debian, PyPI or npm). Needs scripts/setup-prometheus.

    .venv/bin/python scripts/metrics-screenshot.py [--out docs/metrics-prometheus.png]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from pipeline_helpers import config_for, finish_cli, refsav_argv, start_cli, write_config  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402
from prometheus_helpers import prometheus  # noqa: E402

from refsav_pipeline.pipeline.cli import free_port, reference_server  # noqa: E402
from refsav_pipeline.sav.synth import synth_sav  # noqa: E402

QUERIES = [
    "refsav_vllm_num_requests_running",
    "refsav_vllm_num_requests_waiting",
    "refsav_requests_in_flight",
    "refsav_concurrency_limit",
    'sum by (model) (rate(refsav_requests_total{outcome="ok"}[30s]))',
    "histogram_quantile(0.9, sum by (le, call) (rate(refsav_request_seconds_bucket[30s])))",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "metrics-prometheus.png")
    ap.add_argument("--videos", type=int, default=16)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="refsav-metrics-shot-") as tmp_s:
        tmp = Path(tmp_s)
        synth_sav(tmp / "sav", videos=args.videos, seed=0)
        port, ref_port = free_port(), free_port()
        with reference_server(ref_port, "--latency", "1.0", "--kv-capacity", "4") as url, \
                prometheus(tmp / "prom", {"refsav": f"127.0.0.1:{port}",
                                          "vllm": f"127.0.0.1:{ref_port}"}) as prom:
            cfg = config_for(url)
            cfg.run.max_inflight_masklets = 16
            proc = start_cli(refsav_argv("run", "--sav-root", str(tmp / "sav"), "--out",
                                         str(tmp / "out"), "--config",
                                         str(write_config(cfg, tmp / "cfg.yaml")),
                                         "--no-progress", "--metrics-port", str(port)))
            t0 = time.time()
            finish_cli(proc, timeout=600)
            time.sleep(2)
            span = max(60, int(time.time() - t0) + 10)
            params: dict[str, str] = {}
            for i, q in enumerate(QUERIES):
                params.update({f"g{i}.expr": q, f"g{i}.tab": "0", f"g{i}.range_input": f"{span}s",
                               f"g{i}.stacked": "0", f"g{i}.show_exemplars": "0"})
            page = f"{prom.url}/graph?{urlencode(params)}"
            args.out.parent.mkdir(parents=True, exist_ok=True)
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path="/usr/bin/chromium",
                                             args=["--no-sandbox"])
                tab = browser.new_page(viewport={"width": 1300, "height": 900})
                tab.goto(page, wait_until="networkidle")
                tab.wait_for_timeout(5000)  # the graphs draw after their queries answer
                tab.evaluate("window.scrollTo(0, 0)")
                tab.screenshot(path=str(args.out), full_page=True)
                browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
