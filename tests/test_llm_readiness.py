"""One wait for every server the project starts: until ``GET /v1/models`` answers (with the
model, if named), failing at once when the server's process is gone."""

from __future__ import annotations

import pytest
from pipeline_helpers import closed_port_url

from refsav_pipeline.config import PipelineConfig
from refsav_pipeline.pipeline.cli import free_port, reference_server
from refsav_pipeline.serve.readiness import ServerExited, wait_healthy


def test_waits_for_the_named_model_not_just_any_answer() -> None:
    name = PipelineConfig().models.captioner.name
    with reference_server(free_port()) as url:
        wait_healthy(url, name, timeout_s=10, poll_s=0.1)
        wait_healthy(url, None, timeout_s=10, poll_s=0.1)
        with pytest.raises(TimeoutError, match="not healthy after"):
            wait_healthy(url, "a-model-it-does-not-serve", timeout_s=0.5, poll_s=0.1)


def test_a_dead_process_ends_the_wait_at_once() -> None:
    url = closed_port_url()
    with pytest.raises(ServerExited, match=f"server for m at {url} exited"):
        wait_healthy(url, "m", timeout_s=600, alive=lambda: False, poll_s=60)


def test_the_reference_server_that_cannot_start_says_why() -> None:
    with pytest.raises(ServerExited) as exc, reference_server(free_port(), "--no-such-flag"):
        pass
    assert "reference server at" in str(exc.value) and "no-such-flag" in str(exc.value)
