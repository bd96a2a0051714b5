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
    assert "unknown key `bogus` (known keys here: client, decode," in line
    assert "pydantic" not in line and "http" not in line and "[type=" not in line


def test_no_endpoint_advice_starts_from_what_the_user_passed(synth_root: Path,
                                                             tmp_path: Path) -> None:
    """Nothing listens on port 9 of loopback: the advice names the config the user gave,
    and never tells them to pass a config they already passed."""
    cfg = tmp_path / "mine.yaml"
    cfg.write_text("models:\n  captioner:\n    model: m\n    endpoints: ['http://127.0.0.1:9/v1']\n"
                   "  judge:\n    model: j\n    endpoints: ['http://127.0.0.1:9/v1']\n"
                   "client:\n  health_timeout_s: 1\n")
    res = CliRunner().invoke(app, ["run", "--sav-root", str(synth_root), "--out",
                                   str(tmp_path / "run"), "--config", str(cfg), "--no-progress"])
    assert res.exit_code == 2
    assert "no endpoint of the" in res.output and "127.0.0.1:9" in res.output
    assert f"refsav serve reference --config {cfg}" in res.output
    assert "pass --config configs/local-reference.yaml" not in res.output
    assert not (tmp_path / "run").exists()
