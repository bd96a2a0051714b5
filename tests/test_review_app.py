"""The review app in a real browser: log in, see the overlay, decide by keyboard, edit,
conflict, reload, a second reviewer gets another sample; decisions land in SQLite."""

from __future__ import annotations

import os
import re
import shutil
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from factories import write_fake_run
from playwright.sync_api import Page, expect, sync_playwright

from refsav_pipeline.review.app import REJECT_REASONS, ReviewApp, wait_until_up
from refsav_pipeline.review.paths import decisions_path
from refsav_pipeline.review.select import select_and_write
from refsav_pipeline.review.store import DecisionStore, NewDecision
from refsav_pipeline.review.users import add_user

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
SCREENSHOT_ENV = "REFSAV_REVIEW_SCREENSHOT"  # set to docs/review-app.png to refresh it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(synth_root: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[str, Path]]:
    out = tmp_path_factory.mktemp("review-run")
    write_fake_run(synth_root, out)
    select_and_write(out, count=50, seed=0, double_review=0.0)
    users = out / "users.txt"
    add_user(users, "alice", "alice-pw", iterations=1000)
    add_user(users, "bob", "bob-pw", iterations=1000)
    port = free_port()
    demo = ReviewApp(out, users).launch("127.0.0.1", port, prevent_thread_lock=True, quiet=True)
    url = f"http://127.0.0.1:{port}/"
    wait_until_up(url)
    try:
        yield url, out
    finally:
        demo.close()


def rows(out: Path) -> list[dict]:
    conn = sqlite3.connect(decisions_path(out))
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM decisions ORDER BY seq")]
    finally:
        conn.close()


def login(page: Page, url: str, name: str, password: str) -> None:
    page.goto(url)
    page.locator("input[type=text]").fill(name)
    page.locator("input[type=password]").fill(password)
    page.get_by_role("button", name="Login").click()
    page.wait_for_selector("#rv-frame img", timeout=20_000)


def shown_key(page: Page) -> tuple[str, str, int]:
    text = page.locator("#rv-banner").inner_text()
    m = re.search(r"(\S+) · (manual|auto) masklet (\d+)", text)
    assert m, text
    return m.group(1), m.group(2), int(m.group(3))


def wait_notice(page: Page, pattern: str) -> str:
    notice = page.locator("#rv-notice")
    expect(notice).to_contain_text(re.compile(pattern), timeout=15_000)
    return notice.inner_text()


def press(page: Page, key: str) -> None:
    page.locator("#rv-banner").click()  # focus outside every text input
    page.keyboard.press(key)


def test_review_in_browser(served: tuple[str, Path], tmp_path: Path) -> None:
    url, out = served
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                     args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            login(page, url, "alice", "alice-pw")

            # the overlay frame and the 9-frame strip are real, loaded images
            size = page.evaluate("() => { const i = document.querySelector('#rv-frame img');"
                                 " return [i.complete, i.naturalWidth, i.naturalHeight]; }")
            assert size[0] and size[1] > 0 and size[2] > 0
            expect(page.locator("#rv-gallery img")).to_have_count(9)
            src = page.locator("#rv-frame img").get_attribute("src")
            press(page, ".")  # one annotated frame forward
            expect(page.locator("#rv-frame img")).not_to_have_attribute("src", src)
            assert "review/media" in (page.locator("#rv-frame img").get_attribute("src") or "")
            expect(page.locator("#rv-progress")).to_contain_text("0 decided")

            # 1: accept with the keyboard
            first = shown_key(page)
            press(page, "a")
            wait_notice(page, r"Saved: accept #1")
            log = rows(out)
            assert [(r["reviewer"], r["action"]) for r in log] == [("alice", "accept")]
            assert (log[0]["video_id"], log[0]["masklet_type"], log[0]["masklet_id"]) == first

            # 2: letters typed in text boxes are text, not shortcuts; edit + Ctrl+Enter
            second = shown_key(page)
            assert second != first
            page.locator("#rv-short textarea, #rv-short input").first.click()
            page.keyboard.type("a red box")
            page.wait_for_timeout(300)
            assert len(rows(out)) == 1
            edited = "A cyan box that slides to the left <b>not bold</b>."
            page.locator("#rv-video textarea").fill(edited)
            page.keyboard.press("Control+Enter")
            wait_notice(page, r"Saved: edit & accept #2")
            second_row = rows(out)[-1]
            assert second_row["action"] == "edit_accept"
            assert second_row["edited_video_caption"] == edited
            assert second_row["edited_object_caption"] is None
            assert second_row["short_expression"] == "a red box"

            # 3: reject with a reason chosen by number key
            press(page, "2")
            press(page, "r")
            wait_notice(page, r"Saved: reject #3")
            assert rows(out)[-1]["reason"] == REJECT_REASONS[1]

            # 4: someone else decides while alice looks: her decision is kept and flagged
            fourth = shown_key(page)
            s4 = next(s for s in DecisionStore.for_run(out).states() if s.key == fourth)
            DecisionStore.for_run(out).record(NewDecision(
                video_id=fourth[0], masklet_type=fourth[1], masklet_id=fourth[2],
                sample_version=s4.sample_version, reviewer="bob", action="reject",
                reason="other"))
            press(page, "a")
            assert "bob" in wait_notice(page, r"Conflict")
            last = rows(out)[-1]
            assert (last["reviewer"], last["conflict"], last["conflicts_with"]) == (
                "alice", 1, rows(out)[-2]["seq"])

            # reload: the session is new, the decisions are not
            held = shown_key(page)
            page.reload()
            page.wait_for_selector("#rv-frame img", timeout=20_000)
            expect(page.locator("#rv-progress")).to_contain_text("4 decided")
            assert shown_key(page) == held  # alice's lease brings her back to it

            # a second reviewer is handed a sample nobody holds
            bob = browser.new_page(viewport={"width": 1400, "height": 1000})
            login(bob, url, "bob", "bob-pw")
            assert shown_key(bob) not in {held, first, second, fourth}
            expect(bob.locator("#rv-progress")).to_contain_text("Me (bob)")

            # the accepted filter shows the persisted decision, texts as plain text
            page.locator("#rv-filter input").click()
            page.get_by_role("option", name="accepted", exact=True).click()
            expect(page.locator("#rv-banner")).to_contain_text("Status: accepted")
            assert shown_key(page) == first
            expect(page.locator("#rv-history")).to_contain_text("alice")
            page.locator("#rv-next").click()
            expect(page.locator("#rv-video textarea")).to_have_value(edited, timeout=10_000)
            assert page.locator("#rv-video b").count() == 0

            shot = tmp_path / "review-app.png"
            page.screenshot(path=str(shot), full_page=True)
            assert 20_000 < shot.stat().st_size < 500_000
            if os.environ.get(SCREENSHOT_ENV):
                shutil.copyfile(shot, os.environ[SCREENSHOT_ENV])
        finally:
            browser.close()
