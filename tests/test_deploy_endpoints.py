"""`refsav deploy endpoints`: how a cluster job points its config at the server it started."""

from __future__ import annotations

from pathlib import Path

from pipeline_helpers import config_for, write_config
from typer.testing import CliRunner

from refsav_pipeline.cli import app
from refsav_pipeline.config import PipelineConfig
from refsav_pipeline.pipeline.cli import free_port, reference_server


def test_writes_the_config_pointed_at_a_healthy_server(tmp_path: Path) -> None:
    cfg = config_for("http://127.0.0.1:9/v1")
    path = write_config(cfg, tmp_path / "cfg.yaml")
    live = tmp_path / "job" / "live.yaml"
    with reference_server(free_port()) as url:
        res = CliRunner().invoke(app, ["deploy", "endpoints", "--config", str(path), "--url",
                                       url + "/", "--write", str(live)])
    assert res.exit_code == 0, res.stderr
    got = PipelineConfig.load(live)
    assert got.models.captioner.endpoints == got.models.judge.endpoints == [url]
    assert got.fingerprint() == cfg.fingerprint()  # `refsav resume --config live.yaml` accepts it


def test_a_server_that_never_answers_fails_with_the_reason(tmp_path: Path) -> None:
    path = write_config(config_for("http://127.0.0.1:9/v1"), tmp_path / "cfg.yaml")
    url = f"http://127.0.0.1:{free_port()}/v1"
    res = CliRunner().invoke(app, ["deploy", "endpoints", "--config", str(path), "--url", url,
                                   "--write", str(tmp_path / "live.yaml"), "--timeout", "1"])
    assert res.exit_code == 1
    assert f"{url} not healthy after 1s" in res.stderr
    assert not (tmp_path / "live.yaml").exists()
