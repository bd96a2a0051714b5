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
