"""Which model is down and for how long, shown while the run waits for it.

The outage itself lives in each caption actor's HTTP client (``llm.client``), where requests
wait for an endpoint to answer. The driver only asks the actors about it, at most once a
second and without blocking its scheduling loop, and says it: one line when a model goes down
and when it answers again, and a live line under the progress bars while it is down.
"""

from __future__ import annotations

import time
from typing import Any

import ray
from ray.exceptions import RayError
from rich.console import Console
from rich.progress import Progress, TaskID

from refsav_pipeline.llm.client import Outage


class ModelHealthLine:
    """Polls the caption actors' ``outages()`` and shows them."""

    def __init__(self, actors: list[Any], bar: Progress, console: Console | None,
                 every_s: float = 1.0) -> None:
        self.actors = actors
        self.bar = bar
        self.console = console or Console(stderr=True)
        self.every_s = every_s
        self.task: TaskID = bar.add_task("", total=None, visible=False)
        self.down: dict[str, Outage] = {}
        self._pending: list[ray.ObjectRef] = []
        self._asked_at = 0.0

    def poll(self) -> None:
        """Collect the last answers if all are in; ask again when due. Never blocks."""
        if self._pending:
            ready, _ = ray.wait(self._pending, num_returns=len(self._pending), timeout=0)
            if len(ready) < len(self._pending):
                return
            try:
                answers: list[list[Outage]] = ray.get(self._pending)
            except RayError:  # an actor being restarted: ask again next time
                answers = []
            self._pending = []
            self._show([o for per_actor in answers for o in per_actor])
        if time.monotonic() - self._asked_at >= self.every_s:
            self._asked_at = time.monotonic()
            self._pending = [a.outages.remote() for a in self.actors]

    def _show(self, outages: list[Outage]) -> None:
        now: dict[str, Outage] = {}
        for o in outages:  # every actor has its own client: the longest view wins
            if o.model not in now or o.down_s > now[o.model].down_s:
                now[o.model] = o
        for model, o in now.items():
            if model not in self.down:
                self.console.print(f"[yellow]model {model} is down[/yellow] ({o.last_error}); "
                                   "its masklets wait, probing with backoff", soft_wrap=True)
        for model, o in self.down.items():
            if model not in now:
                self.console.print(f"[green]model {model} answers again[/green] "
                                   f"after about {o.down_s:.0f} s", soft_wrap=True)
        self.down = now
        text = "; ".join(f"{m} down {o.down_s:.0f} s, waiting" for m, o in now.items())
        self.bar.update(self.task, description=f"[yellow]{text}[/yellow]", visible=bool(now))
