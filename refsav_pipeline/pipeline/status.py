"""``refsav status``: where a run stands, from its plan and shard markers alone.

Parquet files are only stat'ed (size and mtime against the marker), never read, unless
``verify`` asks to re-hash every one. With ``endpoints``, each model endpoint of the run's config
is asked for vLLM's own figures now (running, waiting, KV use), as the progress line shows them.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from pydantic import BaseModel, Field
from rich.console import Console
from rich.table import Table

from refsav_pipeline.config import PipelineConfig
from refsav_pipeline.pipeline.lease import read_lease
from refsav_pipeline.pipeline.metrics import EndpointReading, gpu_line, read_endpoints
from refsav_pipeline.pipeline.plan import CONFIG_FILE, load_plan
from refsav_pipeline.pipeline.shards import ShardState, shard_states


class RunStatus(BaseModel):
    out_dir: str
    sav_root: str
    config_fingerprint: str
    shards_total: int
    shards: dict[str, int]  # done / partial / pending
    videos_total: int
    videos_done: int
    rows: int
    rows_by_status: dict[str, int]
    failures_by_kind: dict[str, int]
    rejected_by_kind: dict[str, int] = {}  # rejected rows: the check their answers failed
    model_calls: int
    cached_calls: int
    prompt_tokens: int
    completion_tokens: int
    rows_per_s: float | None  # over the busiest stretch of finished shards
    videos_per_s: float | None
    running: str | None = None  # who runs it now (from its lease), None if nobody
    eta_s: float | None  # 0 when done; otherwise only while a run is alive
    endpoints: list[EndpointReading] = Field(default_factory=list)  # read now, if asked


def run_status(out_dir: str | Path, *, verify: bool = False,
               endpoints: bool = False) -> RunStatus:
    plan = load_plan(out_dir)
    readings: list[EndpointReading] = []
    config = Path(out_dir) / CONFIG_FILE
    if endpoints and config.is_file():  # a run planned but never started has no config yet
        readings = read_endpoints(PipelineConfig.model_validate_json(config.read_text()))
    states = shard_states(out_dir, plan, verify=verify)
    counts = Counter(state.value for state, _ in states.values())
    markers = [m for _, m in states.values() if m is not None]
    by_status: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    rejected: Counter[str] = Counter()
    for m in markers:
        by_status.update(m.by_status)
        kinds.update(m.by_error_kind)
        rejected.update(m.by_rejected_kind)
    videos = {s.shard_id: len(s.videos) for s in plan.shards}
    done_videos = sum(videos[m.shard_id] for m in markers)
    rows_per_s = videos_per_s = eta = None
    lease = read_lease(out_dir)
    running = lease.describe() if lease is not None and lease.alive() else None
    if markers:
        span = max(m.finished_at for m in markers) - min(m.started_at for m in markers)
        if span > 0:
            rows_per_s = sum(m.rows for m in markers) / span
            videos_per_s = done_videos / span
            if running is not None:
                eta = (plan.num_videos - done_videos) / videos_per_s
    if counts.get(ShardState.done.value, 0) == len(plan.shards):
        eta = 0.0
    return RunStatus(
        out_dir=str(out_dir), sav_root=plan.sav_root, config_fingerprint=plan.config_fingerprint,
        shards_total=len(plan.shards),
        shards={s.value: counts.get(s.value, 0) for s in ShardState},
        videos_total=plan.num_videos, videos_done=done_videos,
        rows=sum(m.rows for m in markers), rows_by_status=dict(sorted(by_status.items())),
        failures_by_kind=dict(kinds.most_common()),
        rejected_by_kind=dict(rejected.most_common()),
        model_calls=sum(m.model_calls for m in markers),
        cached_calls=sum(m.cached_calls for m in markers),
        prompt_tokens=sum(m.prompt_tokens for m in markers),
        completion_tokens=sum(m.completion_tokens for m in markers),
        rows_per_s=rows_per_s, videos_per_s=videos_per_s, running=running, eta_s=eta,
        endpoints=readings,
    )


def print_status(st: RunStatus, console: Console) -> None:
    t = Table(title=f"Ref-SAV run {st.out_dir}", show_header=False)
    t.add_column("what", style="bold")
    t.add_column("value")
    t.add_row("SA-V root", st.sav_root)
    t.add_row("config", st.config_fingerprint)
    done = st.shards["done"] == st.shards_total
    t.add_row("run", f"running: {st.running}" if st.running else
              "finished" if done else "not running (`refsav resume --out "
              f"{st.out_dir}` continues it)")
    t.add_row("shards", f"{st.shards['done']} done / {st.shards['partial']} partial / "
              f"{st.shards['pending']} pending (of {st.shards_total})")
    t.add_row("videos", f"{st.videos_done} / {st.videos_total}")
    t.add_row("rows", f"{st.rows}: " + ", ".join(f"{k} {v}" for k, v in
                                                  st.rows_by_status.items()))
    if st.failures_by_kind:
        t.add_row("failures", ", ".join(f"{k} {v}" for k, v in st.failures_by_kind.items()))
    if st.rejected_by_kind:
        t.add_row("rejected answers", ", ".join(f"{k} {v}" for k, v in
                                                st.rejected_by_kind.items()))
    if st.failures_by_kind or st.rejected_by_kind:
        t.add_row("retry them", f"refsav resume --out {st.out_dir} --retry-failed")
    t.add_row("model calls", f"{st.model_calls} ({st.cached_calls} from cache)")
    t.add_row("tokens", f"{st.prompt_tokens} prompt / {st.completion_tokens} completion")
    if st.rows_per_s is not None:
        t.add_row("throughput", f"{st.rows_per_s:.2f} rows/s, {st.videos_per_s:.2f} videos/s")
    if st.eta_s is not None:
        t.add_row("time left", "done" if st.eta_s == 0 else f"~{st.eta_s:.0f} s")
    for e in st.endpoints:
        t.add_row(f"{e.role} endpoint", gpu_line(e) if e.vllm else f"{e.endpoint}: {e.error}")
    console.print(t)
