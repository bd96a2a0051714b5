"""The run's progress bars: videos, masklets, shards, and the requests each model has in flight."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Column

from refsav_pipeline.llm.telemetry import EndpointFigures
from refsav_pipeline.pipeline.metrics import gpu_line

NOTE_SPARE = 66
"""Columns the names, bar, counts and times take: the note gets the rest of the line."""


class RunProgress:
    """Bars for videos, masklets and shards, and the requests each model has in flight."""

    def __init__(self, console: Console | None, enabled: bool, videos: int, shards: int) -> None:
        # names and counts keep their width; a long note (the endpoints' line) is cut, not
        # the names ("vid…") nor wrapped over several lines
        self.bar = Progress(TextColumn("{task.description:<10}",
                                       table_column=Column(min_width=10, no_wrap=True)),
                            BarColumn(bar_width=24), MofNCompleteColumn(), TimeElapsedColumn(),
                            TimeRemainingColumn(),
                            TextColumn("{task.fields[note]}", table_column=Column(
                                no_wrap=True, overflow="ellipsis",
                                max_width=max(16, (console or Console()).width - NOTE_SPARE))),
                            console=console, disable=not enabled, transient=False)
        self.videos = self.bar.add_task("videos", total=videos, note="")
        self.masklets = self.bar.add_task("masklets", total=0, note="")
        self.shards = self.bar.add_task("shards", total=shards, note="")
        self.gpu = self.bar.add_task("endpoints", total=None, visible=False, note="")
        self.peak_in_flight: dict[str, int] = {}

    def __enter__(self) -> RunProgress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        # however the run ended, nothing is in flight any more: the last lines say so
        self.bar.update(self.masklets, note="")
        self.bar.update(self.gpu, visible=False)
        self.bar.__exit__(None, None, None)

    def video_done(self, jobs: int, failed: int) -> None:
        total = self.bar.tasks[self.masklets].total or 0
        self.bar.update(self.masklets, total=total + jobs + failed, advance=failed)
        self.bar.advance(self.videos)

    def masklet_done(self) -> None:
        self.bar.advance(self.masklets)

    def shard_done(self) -> None:
        self.bar.advance(self.shards)

    def in_flight(self, per_actor: list[dict[str, int]],
                  endpoints: list[EndpointFigures] | None = None) -> None:
        """Requests in flight per model, and per endpoint the limit and vLLM's own figures
        (running, waiting, KV use)."""
        total: dict[str, int] = {}
        for part in per_actor:
            for role, n in part.items():
                total[role] = total.get(role, 0) + n
        for role, n in total.items():
            self.peak_in_flight[role] = max(self.peak_in_flight.get(role, 0), n)
        note = "in flight: " + ", ".join(f"{r} {n}" for r, n in total.items())
        self.bar.update(self.masklets, note=note)
        if endpoints:
            gpu = "; ".join(gpu_line(e) for e in endpoints)
            self.bar.update(self.gpu, note=gpu, visible=True)


