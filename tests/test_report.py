"""``refsav report``: built from a fake run, opened in headless Chromium from disk."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from factories import FINGERPRINT, write_fake_run
from playwright.sync_api import sync_playwright
from typer.testing import CliRunner

from refsav_pipeline.cli import app
from refsav_pipeline.export.report import (
    REFSAV_MEAN_WORDS,
    latency_table,
    load_frame,
    pick_gallery,
    words,
)
from refsav_pipeline.pipeline.plan import load_plan
from refsav_pipeline.pipeline.shards import write_shard

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
HOSTILE = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2"> & "q"'
GALLERY = 6


@pytest.fixture(scope="module")
def run(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("report") / "out"
    rows = write_fake_run(synth_root, out, fail_every=3)
    # A caption that would run script if it were not escaped, in the first (gallery) row.
    plan = load_plan(out)
    first = {v.video_id for v in plan.shards[0].videos}
    shard0 = [r for r in rows if r.video_id in first]
    target = next(r for r in shard0 if r.status == "ok")
    target.video_caption = f"{target.video_caption} {HOSTILE}"
    write_shard(out, 0, shard0, FINGERPRINT)
    res = CliRunner().invoke(app, ["report", "--out", str(out), "--gallery", str(GALLERY)])
    assert res.exit_code == 0, res.output
    return {"out": out, "rows": rows, "html": out / "report" / "index.html"}


def test_report_files(run: dict) -> None:
    html = run["html"].read_text()
    assert str(REFSAV_MEAN_WORDS) in html
    assert "<script>window.pwned" not in html and "&lt;script&gt;window.pwned" in html
    img = run["html"].parent / "img"
    for name in ("status.png", "lengths.png", "masklets.png", "latency.png"):
        assert (img / name).stat().st_size > 5000
    summary = json.loads((run["html"].parent / "summary.json").read_text())
    statuses = [r.status for r in run["rows"]]
    assert summary["rows"] == len(statuses)
    assert summary["by_status"] == {s: statuses.count(s) for s in set(statuses)}
    assert summary["by_kind"] == {"failed: server_error": statuses.count("failed")}
    assert summary["gallery"] == GALLERY


def test_tokens_per_stage(run: dict) -> None:
    ok = [r for r in run["rows"] if r.status == "ok"]
    stages = {r["stage"]: r for r in latency_table(load_frame(run["out"]))}
    for call in ("object_crop", "object_masked", "judge", "scene", "video"):
        assert stages[call]["prompt_tokens"] == sum(
            getattr(r.prompt_tokens_by_call, call) for r in ok)
        assert stages[call]["completion_tokens"] == sum(
            getattr(r.completion_tokens_by_call, call) for r in ok)
    assert f"{stages['video']['prompt_tokens']:,}" in run["html"].read_text()


@pytest.mark.browser
def test_report_renders_in_chromium(run: dict, tmp_path: Path) -> None:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                    args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(run["html"].resolve().as_uri())
            page.wait_for_load_state("load")
            images = page.eval_on_selector_all(
                "img", "els => els.map(e => [e.getAttribute('src'), e.complete, e.naturalWidth])")
            text = page.inner_text("body")
            pwned = page.evaluate("window.pwned")
            shot = page.screenshot(full_page=False)
        finally:
            browser.close()
    srcs = [s for s, _, _ in images]
    assert all(complete and width > 0 for _, complete, width in images), images
    for plot in ("status.png", "lengths.png", "masklets.png", "latency.png"):
        assert f"img/{plot}" in srcs
    assert sum("gallery/" in s for s in srcs) == 3 * GALLERY  # crop, contour, strip each
    assert pwned is None
    assert HOSTILE in text  # shown as text, literally
    assert "Ref-SAV run report" in text and "failed: server_error" in text
    pixels = cv2.imdecode(np.frombuffer(shot, np.uint8), cv2.IMREAD_COLOR)
    assert pixels.shape[:2] == (900, 1280)
    assert pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200


@pytest.mark.browser
def test_gallery_items_in_chromium(run: dict) -> None:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                    args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(run["html"].resolve().as_uri())
            items = page.locator("#gallery .item")
            n = items.count()
            first_caption = items.first.locator("dd").nth(2).inner_text()
        finally:
            browser.close()
    assert n == GALLERY
    assert "Over the video it moves" in first_caption


def test_gallery_is_round_robin_over_videos(run: dict) -> None:
    df = load_frame(run["out"])
    picked = pick_gallery(df, 4)
    assert len({r["video_id"] for r in picked}) == 4
    assert all(r["status"] == "ok" for r in pick_gallery(df, 100))
    assert words(None) == 0 and words("a  b\nc") == 3
