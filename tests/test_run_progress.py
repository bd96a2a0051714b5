"""The progress bars as a person sees them: every line renders, the endpoints' GPU line too
(the tests' runs pass --no-progress, so only this test draws the bars)."""

from __future__ import annotations

import io

from rich.console import Console

from refsav_pipeline.llm.telemetry import EndpointFigures
from refsav_pipeline.pipeline.run_progress import RunProgress


def test_bars_render_with_in_flight_and_endpoint_lines() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=160)
    endpoint = EndpointFigures(model="m", endpoint="http://127.0.0.1:8000/v1", up=True,
                               in_flight=3, limit=16, adaptive=True, step="hold")
    with RunProgress(console, True, videos=2, shards=1) as progress:
        progress.video_done(jobs=3, failed=0)
        progress.in_flight([{"captioner": 2}, {"captioner": 1, "judge": 1}], [endpoint])
        progress.bar.refresh()  # renders here, not on rich's thread: an error fails the test
        drawn = out.getvalue()
        assert "in flight: captioner 3, judge 1" in drawn
        assert "127.0.0.1:8000 in flight 3/16 (no vLLM metrics)" in drawn
    assert progress.peak_in_flight == {"captioner": 3, "judge": 1}
    last = out.getvalue().rsplit("videos", 1)[-1]  # the final drawing: nothing in flight
    assert "in flight" not in last
