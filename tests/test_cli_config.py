"""A broken config is a clear error before anything is written, in every command that reads one."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from refsav_pipeline.cli import app


@pytest.mark.parametrize("text", ["run:\n  shard_sizee: 3\n", "run: [1, 2", "- a list\n"])
def test_run_refuses_a_broken_config(synth_root: Path, tmp_path: Path, text: str) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(text)
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["run", "--sav-root", str(synth_root), "--out", str(out),
                                   "--config", str(cfg), "--no-progress"])
    assert res.exit_code == 2, res.output
    assert "config" in res.output and not out.exists()


def test_resume_and_report_refuse_a_broken_config(tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("render:\n  jpeg_quality: 1000\n")
    res = CliRunner().invoke(app, ["report", "--out", str(tmp_path), "--config", str(cfg)])
    assert res.exit_code == 2 and "jpeg_quality" in res.output
    res = CliRunner().invoke(app, ["resume", "--out", str(tmp_path / "missing"), "--config",
                                   str(cfg), "--no-progress"])
    assert res.exit_code == 2 and "error:" in res.output


def test_a_typo_gets_a_did_you_mean_and_no_pydantic_dump(synth_root: Path,
                                                         tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("run:\n  shard_sizee: 3\nclient:\n  max_atempts: 2\nrender:\n"
                   "  jpeg_quality: 1000\nbogus: 1\n")
    res = CliRunner().invoke(app, ["run", "--sav-root", str(synth_root), "--out",
                                   str(tmp_path / "run"), "--config", str(cfg), "--no-progress"])
    assert res.exit_code == 2
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: config")
    line = lines[0]
    assert "unknown key `run.shard_sizee` (did you mean `shard_size`?)" in line
    assert "unknown key `client.max_atempts` (did you mean `max_attempts`" in line
    assert "`render.jpeg_quality`:" in line and "(got 1000)" in line
    assert "unknown key `bogus` (known keys here: checks, client, decode," in line
    assert "pydantic" not in line and "http" not in line and "[type=" not in line



def test_server_advice_for_each_way_the_config_came() -> None:
    from refsav_pipeline.pipeline.preflight import _start_servers_advice

    mine = _start_servers_advice(Path("mine.yaml"), None)
    assert "refsav serve reference --config mine.yaml" in mine and "pass --config" not in mine
    resumed = _start_servers_advice(None, Path("runs/a"))
    assert "pass --config with the endpoints" in resumed and "runs/a" in resumed
    default = _start_servers_advice(None, None)
    assert "no --config was given" in default and "configs/local-reference.yaml" in default
