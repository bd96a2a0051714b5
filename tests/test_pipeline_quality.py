"""Trust no answer, end to end: a run against a reference server that answers badly on purpose
(every bad kind, real HTTP, real Ray, real Parquet) keeps no defect in an ok row, and once the
server is healthy ``--retry-failed`` heals every row."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from pipeline_helpers import config_for, content, write_config
from typer.testing import CliRunner

from refsav_pipeline.cli import app
from refsav_pipeline.export.report import build_report
from refsav_pipeline.llm.answer_checks import DEFECT_KINDS, AnswerChecker
from refsav_pipeline.pipeline.cli import free_port, reference_server
from refsav_pipeline.pipeline.driver import execute, load_run_config, prepare_output
from refsav_pipeline.pipeline.status import run_status
from refsav_pipeline.pipeline.uniqueness import AMBIGUOUS, similarity
from refsav_pipeline.records import read_rows
from refsav_pipeline.sav.synth import load_truth

pytestmark = pytest.mark.slow
CHECK = AnswerChecker()
CAPTIONS = {"object_caption_crop": "object", "object_caption_masked": "object",
            "object_caption": "judge", "scene_caption": "scene", "video_caption": "video"}


def assert_clean(rows: list[dict]) -> None:
    """No ok row with a defect: every caption passes every check, and no two objects of a
    video share (nearly) one video caption."""
    by_video: dict[str, list[str]] = defaultdict(list)
    for r in rows:
        if r["status"] != "ok":
            continue
        for col, call in CAPTIONS.items():
            assert CHECK.check(call, r[col]) is None, (col, r[col])
        by_video[r["video_id"]].append(r["video_caption"])
    for captions in by_video.values():
        for i, a in enumerate(captions):
            assert all(similarity(a, b) < 0.7 for b in captions[i + 1:]), captions


@pytest.fixture
def healthy() -> Iterator[str]:
    with reference_server(free_port()) as url:
        yield url


def test_every_bad_kind_then_retry_failed_heals(synth_root: Path, local_ray: None,
                                                healthy: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    with reference_server(free_port(), "--bad-answer-rate", "0.45", "--seed", "5") as url:
        cfg = config_for(url)
        prepare_output(synth_root, out, cfg)
        execute(out, cfg, show_progress=False)
    rows = read_rows(out).to_pylist()
    assert len(rows) == len(load_truth(synth_root))
    assert_clean(rows)
    rejected = [r for r in rows if r["status"] == "rejected"]
    assert rejected, "at 45 % bad answers and 3 attempts some calls are rejected"
    assert any(r["status"] == "ok" and r["check_failures"] for r in rows), \
        "some bad first answers were healed by a retry"
    for r in rejected:
        assert r["error_kind"] in (*DEFECT_KINDS, AMBIGUOUS), r
        assert r["video_id"] in r["error"] and r["check_failures"]
        if r["error_kind"] not in ("empty_answer", AMBIGUOUS):
            assert r["rejected_answer"], r
    status = run_status(out)
    assert status.rows_by_status["rejected"] == len(rejected)
    assert sum(status.rejected_by_kind.values()) == len(rejected)
    page = build_report(out, cfg, gallery_size=2).read_text()
    quality = page[page.index('id="quality"'):page.index("Caption lengths")]
    for kind in {r["error_kind"] for r in rejected}:
        assert kind in quality
    summary = json.loads((out / "report" / "summary.json").read_text())["quality"]
    assert sum(summary["rejected_by_kind"].values()) == len(rejected)
    assert summary["healed_rows"] == sum(r["status"] == "ok" and bool(r["check_failures"])
                                         for r in rows)

    execute(out, config_for(healthy), retry_failed=True, show_progress=False)
    rows = read_rows(out).to_pylist()
    assert {r["status"] for r in rows} == {"ok"}
    assert_clean(rows)


def test_same_caption_for_every_object_is_ambiguous_until_healed(
        synth_root: Path, local_ray: None, healthy: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    with reference_server(free_port(), "--bad-answer-rate", "1", "--bad-answers",
                          "same_video_caption") as url:
        cfg = config_for(url)
        prepare_output(synth_root, out, cfg)
        execute(out, cfg, show_progress=False)
    rows = read_rows(out).to_pylist()
    assert {(r["status"], r["error_kind"]) for r in rows} == {("rejected", AMBIGUOUS)}
    assert all(r["first_video_caption"] == r["video_caption"] and r["max_similarity"] == 1.0
               for r in rows)

    execute(out, config_for(healthy), retry_failed=True, show_progress=False)
    rows = read_rows(out).to_pylist()
    assert {r["status"] for r in rows} == {"ok"}
    assert_clean(rows)
    truth = load_truth(synth_root)
    for r in rows:  # the contrastive caption, still about the right object
        assert r["first_video_caption"] and "unlike the other objects" in r["video_caption"]
        assert truth[(r["video_id"], r["masklet_type"], r["masklet_id"])].color in \
            r["video_caption"]
        assert r["prompt_versions"]["video"] == "video_caption_contrastive@v1"
        assert r["check_failures"] == ["video:ambiguous"]


def test_requalify_rejudges_without_models_then_retry_heals_from_cache(
        synth_root: Path, local_ray: None, healthy: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = config_for(healthy)
    prepare_output(synth_root, out, cfg)
    execute(out, cfg, show_progress=False)
    clean = read_rows(out)
    strict = cfg.model_copy(deep=True)
    strict.checks.max_words["video"] = 5
    res = CliRunner().invoke(app, ["requalify", "--out", str(out), "--config",
                                   str(write_config(strict, tmp_path / "strict.yaml"))])
    assert res.exit_code == 0, res.output  # no model server is asked: none is needed
    rows = read_rows(out).to_pylist()
    assert {(r["status"], r["error_kind"]) for r in rows} == {("rejected", "runaway")}
    assert all(r["rejected_answer"] == r["video_caption"] and "requalified" in r["error"]
               for r in rows)
    assert "runaway" in res.output and load_run_config(out).checks.max_words["video"] == 5

    execute(out, cfg, retry_failed=True, show_progress=False)  # the old checks again
    assert content(read_rows(out)) == content(clean)
    assert all(r["cached_calls"] == 5 for r in read_rows(out).to_pylist())
