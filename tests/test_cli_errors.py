"""One way to report a mistake, in every command: one ``error:`` line with the fix, exit 2 for
usage and input mistakes (before anything is written), exit 1 for failures during the work,
and no traceback unless ``--debug``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from factories import write_fake_run
from pipeline_helpers import closed_port_url, write_config
from typer.testing import CliRunner

from refsav_pipeline.cli import app
from refsav_pipeline.config import PipelineConfig
from refsav_pipeline.pipeline.cli import with_endpoints
from refsav_pipeline.pipeline.driver import prepare_output, save_config
from refsav_pipeline.pipeline.plan import PLAN_FILE

REFSAV = [sys.executable, "-m", "refsav_pipeline.cli"]


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error: ")]


@pytest.fixture
def dead_config(tmp_path: Path) -> tuple[Path, str]:
    url = closed_port_url()
    return write_config(with_endpoints(PipelineConfig(), url), tmp_path / "dead.yaml"), url


def test_run_without_a_model_server_refuses_at_once_with_the_hint(
        synth_root: Path, tmp_path: Path, dead_config: tuple[Path, str]) -> None:
    cfg, url = dead_config
    out = tmp_path / "out"
    res = subprocess.run([*REFSAV, "run", "--sav-root", str(synth_root), "--out", str(out),
                          "--config", str(cfg), "--no-progress"],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 2, res.stderr
    (line,) = _error_lines(res.stderr)
    assert url in line and f"refsav serve reference --config {cfg}" in line
    # the advice starts from the config the user passed, never asks them to pass one
    assert "pass --config" not in line
    assert "Traceback" not in res.stderr and not out.exists()


@pytest.mark.parametrize("make", ["missing", "file", "empty", "json_only"])
def test_run_checks_the_sav_root_before_anything(tmp_path: Path, make: str,
                                                 dead_config: tuple[Path, str],
                                                 real_sav_dir: Path) -> None:
    root = tmp_path / "sav"
    if make == "file":
        root.write_text("not a folder")
    elif make == "empty":
        (root / "sav_train").mkdir(parents=True)
    elif make == "json_only":  # annotations, but no mp4 beside any: every row would fail
        (root / "sav_train" / "sav_000").mkdir(parents=True)
        shutil.copy(real_sav_dir / "sav_000001_manual.json", root / "sav_train" / "sav_000")
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["run", "--sav-root", str(root), "--out", str(out),
                                   "--config", str(dead_config[0]), "--no-progress"])
    assert res.exit_code == 2, res.output
    (line,) = _error_lines(res.output)
    assert str(root) in line and "--sav-root" in line
    if make == "json_only":
        assert "no video: no <video>.mp4 next to any *_manual.json" in line
    assert not out.exists()  # an empty root never ties --out to it


def test_videos_without_their_mp4_are_named_and_stay_in_the_plan(synth_root: Path,
                                                                tmp_path: Path) -> None:
    from refsav_pipeline.pipeline.preflight import check_sav_root
    from refsav_pipeline.sav.index import scan_sav_root

    root = tmp_path / "sav"
    shutil.copytree(synth_root, root)
    gone = scan_sav_root(root).videos[1]
    (root / gone.video_path).unlink()
    index = scan_sav_root(root)
    assert index.without_mp4 == [gone.video_id] and gone in index.videos
    assert len(check_sav_root(root)) == len(index.videos)  # a warning, not a refusal


@pytest.fixture
def not_a_run(tmp_path: Path) -> Path:
    folder = tmp_path / "somewhere"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    return folder


@pytest.mark.parametrize("args", [
    ["benchmark", "select", "--out", "{out}"], ["review", "stats", "--out", "{out}"],
    ["review", "export", "--out", "{out}"], ["review", "serve", "--out", "{out}"],
    ["export", "sa2va", "--out", "{out}", "--to", "{out}"], ["report", "--out", "{out}"],
    ["status", "--out", "{out}"], ["resume", "--out", "{out}", "--no-progress"],
])
def test_commands_on_a_folder_that_is_not_a_run_exit_2_and_write_nothing(
        not_a_run: Path, args: list[str]) -> None:
    before = _tree(not_a_run)
    res = CliRunner().invoke(app, [a.format(out=not_a_run) for a in args])
    assert res.exit_code == 2, res.output
    (line,) = _error_lines(res.output)
    assert f"{not_a_run} is not a run folder" in line and "--out" in line
    assert _tree(not_a_run) == before


@pytest.mark.parametrize("args", [
    ["status", "--out", "{top}"], ["report", "--out", "{top}"],
    ["export", "sa2va", "--out", "{top}", "--to", "{top}/export"],
    ["resume", "--out", "{top}", "--no-progress"], ["benchmark", "select", "--out", "{top}"],
])
def test_the_demo_top_folder_names_the_run_inside_it(synth_root: Path, tmp_path: Path,
                                                     args: list[str]) -> None:
    top = tmp_path / "demo"
    write_fake_run(synth_root, top / "run")
    before = _tree(top)
    res = CliRunner().invoke(app, [a.format(top=top) for a in args])
    assert res.exit_code == 2, res.output
    (line,) = _error_lines(res.output)
    assert f"--out {top / 'run'}" in line
    assert _tree(top) == before


def test_export_checks_for_the_benchmark_before_writing_train(synth_root: Path,
                                                              tmp_path: Path) -> None:
    run = tmp_path / "run"
    write_fake_run(synth_root, run)
    dest = tmp_path / "export"
    res = CliRunner().invoke(app, ["export", "sa2va", "--out", str(run), "--to", str(dest)])
    assert res.exit_code == 2 and "--part train" in _error_lines(res.output)[0]
    assert not dest.exists()
    res = CliRunner().invoke(app, ["export", "sa2va", "--out", str(run), "--to", str(dest),
                                   "--part", "train"])
    assert res.exit_code == 0, res.output
    assert (dest / "Ref-SAV.json").is_file()


def test_failure_during_work_is_one_line_and_exit_1_traceback_only_with_debug(
        tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / PLAN_FILE).write_text('{"sav_root": ')  # torn: a failure, not a user mistake
    res = subprocess.run([*REFSAV, "status", "--out", str(run)], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 1
    assert len(_error_lines(res.stderr)) == 1 and "Traceback" not in res.stderr
    assert "--debug" in res.stderr
    debug = subprocess.run([*REFSAV, "--debug", "status", "--out", str(run)],
                           capture_output=True, text=True, timeout=120)
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_usage_mistakes_in_other_commands(tmp_path: Path, real_sav_dir: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["sav", "inspect", "--sav-root", str(tmp_path / "nope"),
                              "--video", "sav_000001"])
    assert res.exit_code == 2 and "--sav-root" in _error_lines(res.output)[0]
    res = runner.invoke(app, ["sav", "inspect", "--sav-root", str(real_sav_dir),
                              "--video", "sav_999999"])
    assert res.exit_code == 2 and "--video" in _error_lines(res.output)[0]
    res = runner.invoke(app, ["export", "check", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "--to" in _error_lines(res.output)[0]
    res = runner.invoke(app, ["serve", "vllm", "--config", str(tmp_path / "nope.yaml")])
    assert res.exit_code == 2 and "nope.yaml" in _error_lines(res.output)[0]
    (tmp_path / "f").write_text("x")
    res = runner.invoke(app, ["sav", "synth", "--out", str(tmp_path / "f")])
    assert res.exit_code == 2 and "is a file" in _error_lines(res.output)[0]


def test_rerun_with_nothing_to_do_starts_nothing(synth_root: Path, tmp_path: Path,
                                                 dead_config: tuple[Path, str]) -> None:
    """All shards done: "0 of N shards to do" with no Ray and no model server (the config
    points at a dead one, so a probe would refuse)."""
    out = tmp_path / "run"
    write_fake_run(synth_root, out)
    save_config(out, PipelineConfig.load(dead_config[0]))
    res = subprocess.run([*REFSAV, "resume", "--out", str(out), "--no-progress"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "0 of 2 shards to do" in res.stderr and "Ray" not in res.stderr


def test_existing_run_says_which_flags_it_ignores(synth_root: Path, tmp_path: Path,
                                                  dead_config: tuple[Path, str]) -> None:
    cfg_path, _ = dead_config
    out = tmp_path / "run"
    prepare_output(synth_root, out, PipelineConfig.load(cfg_path))
    plan = (out / PLAN_FILE).read_bytes()
    res = CliRunner().invoke(app, ["run", "--sav-root", str(synth_root), "--out", str(out),
                                   "--config", str(cfg_path), "--shard-size", "3",
                                   "--limit-videos", "1", "--no-progress"])
    text = " ".join(res.output.split())
    assert "--shard-size 3 ignored" in text and "--limit-videos 1 ignored" in text
    assert res.exit_code == 2 and "refsav serve reference" in _error_lines(res.output)[0]
    assert (out / PLAN_FILE).read_bytes() == plan
    assert json.loads(plan)["shards"][0]["videos"][1]  # still the plan's 2 videos per shard


def test_click_usage_errors_are_one_line_too(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["status", "--out", str(tmp_path), "--bogus"])
    assert res.exit_code == 2
    (line,) = _error_lines(res.output)
    assert "--bogus" in line and "status --help" in line and "Usage:" not in res.output
    res = CliRunner().invoke(app, ["run"])
    assert res.exit_code == 2 and "--sav-root" in _error_lines(res.output)[0]
    assert CliRunner().invoke(app, ["run", "--help"]).exit_code == 0


@pytest.mark.parametrize("args", [["review", "export"], ["review", "stats"],
                                  ["review", "serve"]])
def test_review_before_benchmark_select_refuses_and_writes_nothing(
        synth_root: Path, tmp_path: Path, args: list[str]) -> None:
    out = tmp_path / "run"
    write_fake_run(synth_root, out)
    before = _tree(out)
    res = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert res.exit_code == 2
    (line,) = _error_lines(res.output)
    assert f"refsav benchmark select --out {out}" in line
    assert _tree(out) == before  # no review/decisions.sqlite


def test_an_unexpected_failure_never_shows_a_class_name(tmp_path: Path) -> None:
    """A file where the plan should be: the reading fails, and the line says what, not how."""
    out = tmp_path / "run"
    out.mkdir()
    (out / PLAN_FILE).write_text("{")
    res = CliRunner().invoke(app, ["status", "--out", str(out)])
    assert res.exit_code == 1
    (line,) = _error_lines(res.output)
    assert "Error" not in line and "--debug" in line, line
