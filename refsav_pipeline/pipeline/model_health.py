"""Which model is down and for how long, shown while the run waits for it.

The outage itself lives in each caption actor's HTTP client (``llm.client``), where requests
wait for an endpoint to answer. The driver learns of it from the status every actor reports
once a second (``CaptionActor.status``, with the requests in flight) and says it: one line
when a model goes down and when it answers again, and a live line under the progress bars
while it is down.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import Progress, TaskID

from refsav_pipeline.llm.client import Outage


class ModelHealthLine:
    """Shows the outages the caption actors last reported."""

    def __init__(self, actors: int, bar: Progress, console: Console | None) -> None:
        self.bar = bar
        self.console = console or Console(stderr=True)
        self.task: TaskID = bar.add_task("", total=None, visible=False)
        self.down: dict[str, Outage] = {}
        self._reported: list[list[Outage]] = [[] for _ in range(actors)]

    def report(self, actor: int, outages: list[Outage]) -> None:
        """One actor's latest outages; the line shows every actor's."""
        self._reported[actor] = outages
        self._show([o for per_actor in self._reported for o in per_actor])

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
