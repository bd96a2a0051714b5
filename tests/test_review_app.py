"""The review app in a real browser: log in, decide by keyboard, edit, conflict, reload, a
second reviewer; fast keys never decide an unseen object; true colours; validation notices
that hide nothing; layout and accessibility (axe-core). Decisions land in SQLite."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from factories import write_fake_run
from playwright.sync_api import Browser, Page, expect, sync_playwright

from refsav_pipeline.render import decode_jpeg
from refsav_pipeline.review.app import REJECT_REASONS, ReviewApp, wait_until_up
from refsav_pipeline.review.media import MediaCache, _display_size
from refsav_pipeline.review.paths import decisions_path
from refsav_pipeline.review.select import load_benchmark, select_and_write, write_selection
from refsav_pipeline.review.store import DecisionStore, NewDecision
from refsav_pipeline.review.users import add_user
from refsav_pipeline.sav.decode import decode_frames
from refsav_pipeline.sav.frames import decode_mask
from refsav_pipeline.sav.masklets import load_annotation, masklets_of

pytestmark = pytest.mark.browser

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
SCREENSHOT_ENV = "REFSAV_REVIEW_SCREENSHOT"  # set to docs/review-app.png to refresh it
ROOT = Path(__file__).resolve().parents[1]
AXE = ROOT / ".cache" / "axe" / "node_modules" / "axe-core" / "axe.min.js"
USERS = ("alice", "bob", "carol", "dave", "erin", "frank", "gina", "hank")


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
    for name in USERS:
        add_user(users, name, f"{name}-pw", iterations=1000)
    port = free_port()
    demo = ReviewApp(out, users).launch("127.0.0.1", port, prevent_thread_lock=True, quiet=True)
    url = f"http://127.0.0.1:{port}/"
    wait_until_up(url)
    try:
        yield url, out
    finally:
        demo.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                               args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def rows(out: Path) -> list[dict]:
    conn = sqlite3.connect(decisions_path(out))
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM decisions ORDER BY seq")]
    finally:
        conn.close()


def login(page: Page, url: str, name: str, state: str = "visible") -> None:
    """Log in; wait for the main image (``attached``: its element, loaded or not)."""
    page.goto(url)
    page.locator("input[type=text]").fill(name)
    page.locator("input[type=password]").fill(f"{name}-pw")
    page.get_by_role("button", name="Login").click()
    page.wait_for_selector("#rv-frame img", timeout=30_000, state=state)


def shown_key(page: Page) -> tuple[str, str, int]:
    text = page.locator("#rv-banner").inner_text()
    m = re.search(r"(\S+) · (manual|auto) masklet (\d+)", text)
    assert m, text
    return m.group(1), m.group(2), int(m.group(3))


def wait_notice(page: Page, pattern: str) -> str:
    notice = page.locator("#rv-notice")
    expect(notice).to_contain_text(re.compile(pattern), timeout=20_000)
    return notice.inner_text()


def press(page: Page, key: str) -> None:
    page.locator("h1").click()  # focus outside every text input
    page.keyboard.press(key)


def settle(page: Page, loaded: bool = True) -> None:
    """Wait until no action is pending and the page shows a sample or an empty queue (and,
    if ``loaded``, until the sample's images have loaded: decisions wait for them)."""
    page.wait_for_function("() => !window.rvBusy()", timeout=30_000)
    page.wait_for_timeout(400)
    page.wait_for_function("() => !window.rvBusy()", timeout=30_000)
    if loaded:
        page.wait_for_function("() => window.rvMissing().length === 0", timeout=30_000)


def choose_filter(page: Page, name: str) -> None:
    page.locator("#rv-filter input").click()
    page.get_by_role("option", name=name, exact=True).click()
    expect(page.locator("#rv-filter input")).to_have_value(name)


@contextlib.contextmanager
def reviewer_page(browser: Browser, url: str, name: str) -> Iterator[Page]:
    """A page logged in as ``name`` with every sample in its queue, settled; closed after."""
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    try:
        login(page, url, name)
        choose_filter(page, "all")
        settle(page)
        yield page
    finally:
        page.close()


def test_review_in_browser(served: tuple[str, Path], browser: Browser, tmp_path: Path) -> None:
    url, out = served
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    login(page, url, "alice")

    # the outlined frame and the 9-frame strip are real, loaded images
    size = page.evaluate("() => { const i = document.querySelector('#rv-frame img');"
                         " return [i.complete, i.naturalWidth, i.naturalHeight]; }")
    assert size[0] and size[1] > 0 and size[2] > 0
    expect(page.locator("#rv-strip img")).to_have_count(9)
    src = page.locator("#rv-frame img").get_attribute("src")
    press(page, ".")  # one annotated frame forward
    expect(page.locator("#rv-frame img")).not_to_have_attribute("src", src)
    assert "review/media" in (page.locator("#rv-frame img").get_attribute("src") or "")
    expect(page.locator("#rv-progress")).to_contain_text("0 decided")

    # 1: accept with the keyboard
    first = shown_key(page)
    press(page, "a")
    wait_notice(page, r"Saved: accept #\d+")
    log = [r for r in rows(out) if r["reviewer"] == "alice"]
    assert [r["action"] for r in log] == ["accept"]
    assert (log[0]["video_id"], log[0]["masklet_type"], log[0]["masklet_id"]) == first

    # 2: letters typed in text boxes are text, not shortcuts; edit + Ctrl+Enter
    second = shown_key(page)
    assert second != first
    page.locator("#rv-short textarea, #rv-short input").first.click()
    page.keyboard.type("a red box")
    page.wait_for_timeout(300)
    assert len([r for r in rows(out) if r["reviewer"] == "alice"]) == 1
    edited = "A cyan box that slides to the left <b>not bold</b>."
    page.locator("#rv-video textarea").fill(edited)
    page.keyboard.press("Control+Enter")
    wait_notice(page, r"Saved: edit & accept")
    second_row = rows(out)[-1]
    assert second_row["action"] == "edit_accept"
    assert second_row["edited_video_caption"] == edited
    assert second_row["edited_object_caption"] is None
    assert second_row["short_expression"] == "a red box"

    # 3: reject with a reason chosen by number key
    press(page, "2")
    press(page, "r")
    wait_notice(page, r"Saved: reject")
    assert rows(out)[-1]["reason"] == REJECT_REASONS[1]

    # 4: someone else decides while alice looks: her decision is kept and flagged
    fourth = shown_key(page)
    s4 = next(s for s in DecisionStore.for_run(out).states() if s.key == fourth)
    DecisionStore.for_run(out).record(NewDecision(
        video_id=fourth[0], masklet_type=fourth[1], masklet_id=fourth[2],
        sample_version=s4.sample_version, reviewer="bob", action="reject", reason="other"))
    press(page, "a")
    assert "bob" in wait_notice(page, r"Conflict")
    last = rows(out)[-1]
    assert (last["reviewer"], last["conflict"], last["conflicts_with"]) == (
        "alice", 1, rows(out)[-2]["seq"])

    # reload: the session is new, the decisions are not
    held = shown_key(page)
    page.reload()
    page.wait_for_selector("#rv-frame img", timeout=30_000)
    expect(page.locator("#rv-progress")).to_contain_text("4 decided")
    assert shown_key(page) == held  # alice's lease brings her back to it

    # a second reviewer is handed a sample nobody holds
    bob = browser.new_page(viewport={"width": 1400, "height": 1000})
    login(bob, url, "bob")
    assert shown_key(bob) not in {held, first, second, fourth}
    expect(bob.locator("#rv-progress")).to_contain_text("Me (bob)")
    bob.close()

    # a revisit shows the text that will be exported, with alice's own edit marked
    choose_filter(page, "accepted")
    expect(page.locator("#rv-banner")).to_contain_text("Status: accepted")
    assert shown_key(page) == first
    expect(page.locator("#rv-history")).to_contain_text("alice")
    page.locator("#rv-next").click()
    expect(page.locator("#rv-video textarea")).to_have_value(edited, timeout=15_000)
    expect(page.locator("#rv-video")).to_contain_text("your edit (will be exported)")
    expect(page.locator("#rv-mine")).to_contain_text("You decided")
    assert page.locator("#rv-video b").count() == 0
    page.close()


# key -> the actions it may record
KEY_ACTIONS = {"a": {"accept"}, "e": {"accept", "edit_accept"}, "s": {"skip"},
               "r": {"reject"}}
PRESS_JS = """async ([keys, delay]) => {
  const shown = () => {
    const e = document.getElementById("rv-shown");
    return e ? e.getAttribute("data-shown") : "";
  };
  const log = [];
  for (const k of keys) {
    log.push([k, shown()]);  // what is on screen at the very moment of the key press
    document.body.dispatchEvent(new KeyboardEvent("keydown", {key: k, bubbles: true}));
    await new Promise((r) => setTimeout(r, delay));
  }
  return log;
}"""


def token(row: dict) -> str:
    return f"{row['video_id']}|{row['masklet_type']}|{row['masklet_id']}|{row['sample_version']}"


@pytest.mark.parametrize("delay", [10, 50, 100])
def test_fast_keys_decide_only_what_was_on_screen(served: tuple[str, Path], browser: Browser,
                                                  delay: int) -> None:
    url, out = served
    name = {10: "carol", 50: "dave", 100: "erin"}[delay]
    # many rounds on 11 samples: the "all" filter, so the queue does not run out
    with reviewer_page(browser, url, name) as page:
        _press_rounds(page, out, name, delay)


def _press_rounds(page: Page, out: Path, name: str, delay: int) -> None:
    for keys in (["a", "a"], ["a", "s"], ["a", "5", "r"], ["e", "a"]):
        settle(page)
        before = len(rows(out))
        presses = page.evaluate(PRESS_JS, [keys, delay])
        settle(page)
        new = [r for r in rows(out)[before:] if r["reviewer"] == name]
        assert new, f"{keys}: the first key recorded nothing"
        assert len(new) <= sum(k in KEY_ACTIONS for k in keys)
        for r in new:
            seen = {shown for k, shown in presses if r["action"] in KEY_ACTIONS.get(k, ())}
            assert token(r) in seen, (keys, delay, r, presses)
        # the first key decided the object on screen when it was pressed
        assert token(new[0]) == presses[0][1]


def test_server_refuses_what_the_page_did_not_show(served: tuple[str, Path],
                                                   browser: Browser) -> None:
    url, out = served
    with reviewer_page(browser, url, "frank") as page:
        # two buttons clicked 10 ms apart, past the key guard: the second names the object on
        # screen too, so it is refused (or dropped by the page): never a decision on the next one
        before = len(rows(out))
        shown = page.evaluate("""async () => {
          const s = document.getElementById("rv-shown").getAttribute("data-shown");
          document.getElementById("rv-accept").click();
          await new Promise((r) => setTimeout(r, 10));
          document.getElementById("rv-skip").click();
          return s;
        }""")
        settle(page)
        page.wait_for_timeout(1000)
        new = rows(out)[before:]
        assert [(r["action"], token(r)) for r in new] == [("accept", shown)]
        # a version the server does not have open: refused, visibly, nothing recorded
        settle(page)
        page.evaluate("""() => { const e = document.getElementById("rv-shown");
          e.setAttribute("data-shown", e.getAttribute("data-shown").replace(/\\|[^|]*$/, "|old"));
        }""")
        before = len(rows(out))
        page.locator("#rv-accept").click()
        text = wait_notice(page, r"Not recorded: the key was pressed on")
        assert "moved on to" in text
        page.wait_for_timeout(500)
        assert len(rows(out)) == before
        expect(page.locator("#rv-notice")).to_be_visible()


def test_reject_without_reason_hides_nothing(served: tuple[str, Path],
                                             browser: Browser) -> None:
    url, out = served
    with reviewer_page(browser, url, "alice") as page:
        key = shown_key(page)
        src = page.locator("#rv-frame img").get_attribute("src")
        text = page.locator("#rv-video textarea").input_value()
        before = len(rows(out))
        press(page, "r")
        notice = page.locator("#rv-notice")
        expect(notice).to_contain_text("Choose a reject reason first")
        # the notice sits beside the buttons; image, captions and reasons stay as they were
        box = notice.bounding_box()
        accept = page.locator("#rv-accept").bounding_box()
        assert box and accept and abs(box["y"] - accept["y"]) < accept["height"]
        for sel in ("#rv-frame img", "#rv-video textarea", "#rv-reason"):
            other = page.locator(sel).bounding_box()
            assert other and (box["y"] + box["height"] <= other["y"]
                              or other["y"] + other["height"] <= box["y"]), sel
        assert page.locator("#rv-frame img").get_attribute("src") == src
        assert page.locator("#rv-video textarea").input_value() == text
        assert shown_key(page) == key and len(rows(out)) == before
        expect(page.locator(".toast-wrap .toast-body, .error")).to_have_count(0)
        page.locator("#rv-reason label").nth(2).click()  # nothing intercepts the click
        press(page, "r")
        wait_notice(page, r"Saved: reject")
        assert rows(out)[-1]["reason"] == REJECT_REASONS[2]


def _source_view(sav_root: Path, out: Path, key: tuple[str, str, int]
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The source frame at the sample's max-area frame, at display size, and its mask."""
    s = next(x for x in load_benchmark(out) if x.key == key)
    ann = load_annotation(sav_root / s.anno_path, s.video_id)
    m = next(m for m in masklets_of(ann, s.masklet_type) if m.masklet_id == s.masklet_id)
    frame = decode_frames(sav_root / s.video_path, [s.max_area_frame],
                          video_id=s.video_id).frames[s.max_area_frame]
    size = _display_size(s.width, s.height)
    frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
    mask = cv2.resize(decode_mask(m, s.max_area_frame).astype(np.uint8), size,
                      interpolation=cv2.INTER_NEAREST)
    return frame, mask.astype(bool)


def test_main_view_shows_true_colours(served: tuple[str, Path], browser: Browser,
                                      synth_root: Path) -> None:
    url, out = served
    with reviewer_page(browser, url, "bob") as page:
        key = shown_key(page)
        frame, mask = _source_view(synth_root, out, key)
        inside = cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        assert inside.sum() > 50

        def shown_pixels() -> np.ndarray:
            src = page.locator("#rv-frame img").get_attribute("src")
            body = page.request.get(url + src).body()  # the bytes the browser displays
            image = decode_jpeg(body)
            assert image.shape == frame.shape
            return image

        diff = np.abs(shown_pixels()[inside].astype(int) - frame[inside].astype(int)).mean()
        assert diff < 6, f"object pixels differ from the source frame by {diff:.1f} on average"
        assert not page.locator("#rv-tint input").is_checked()  # the tint is off by default
        src = page.locator("#rv-frame img").get_attribute("src")
        page.locator("#rv-tint input").check()
        expect(page.locator("#rv-frame img")).not_to_have_attribute("src", src)
        tinted = np.abs(shown_pixels()[inside].astype(int) - frame[inside].astype(int)).mean()
        assert tinted > 3 * max(diff, 2.0)  # the check above would catch a tint
        page.locator("#rv-tint input").uncheck()
        expect(page.locator("#rv-frame img")).to_have_attribute("src", src)


def _axe_path() -> Path:
    """axe-core from the npm registry, installed by scripts/setup-axe (run here if needed)."""
    if not AXE.is_file():
        done = subprocess.run(["bash", str(ROOT / "scripts" / "setup-axe")],
                              capture_output=True, text=True)
        assert done.returncode == 0, f"scripts/setup-axe failed: {done.stderr[-2000:]}"
    assert AXE.is_file(), f"axe-core missing at {AXE} (scripts/setup-axe)"
    return AXE


def test_layout_and_accessibility(served: tuple[str, Path], browser: Browser,
                                  tmp_path: Path) -> None:
    url, out = served
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    login(page, url, "carol")
    settle(page)
    expect(page.locator("h1")).to_have_count(1)
    missing_alt = page.evaluate("() => [...document.images].filter(i => !i.alt).length")
    assert missing_alt == 0
    # all 9 thumbnails (max-area + 8 sampled) inside 1280 px, each label under its image
    thumbs = page.locator("#rv-strip figure")
    expect(thumbs).to_have_count(9)
    for i in range(9):
        img = thumbs.nth(i).locator("img").bounding_box()
        cap = thumbs.nth(i).locator("figcaption").bounding_box()
        assert img and cap and img["width"] > 60
        assert img["x"] >= 0 and img["x"] + img["width"] <= 1280
        assert cap["y"] >= img["y"] + img["height"] - 0.5  # beside, not over, the image
    # Accept within a few Tab stops from the top of the page
    page.locator("h1").click()
    stops = []
    while len(stops) < 3 and (not stops or stops[-1] != "rv-accept"):
        page.keyboard.press("Tab")
        stops.append(page.evaluate("() => document.activeElement && document.activeElement.id"))
    assert stops[-1] == "rv-accept", f"Accept not reached within 3 Tab stops: {stops}"
    # axe-core: no critical or serious violations
    page.add_script_tag(path=str(_axe_path()))
    result = page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
    bad = [(v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3])
           for v in result["violations"] if v["impact"] in ("critical", "serious")]
    assert not bad, bad
    shot = tmp_path / "review-app.png"
    page.screenshot(path=str(shot), full_page=True)
    assert 20_000 < shot.stat().st_size < 1_500_000
    if os.environ.get(SCREENSHOT_ENV):
        shutil.copyfile(shot, os.environ[SCREENSHOT_ENV])
    page.close()


def test_adjudicator_sees_both_decisions_side_by_side(synth_root: Path, browser: Browser,
                                                      tmp_path: Path) -> None:
    out = tmp_path / "run"
    write_fake_run(synth_root, out)
    samples = select_and_write(out, count=50, seed=0, double_review=0.0)
    samples = [s.model_copy(update={"double_review": i < 2}) for i, s in enumerate(samples)]
    write_selection(out, samples, seed=0, count=50, force=True)
    s0 = load_benchmark(out)[0]
    where = dict(video_id=s0.video_id, masklet_type=s0.masklet_type, masklet_id=s0.masklet_id,
                 sample_version=s0.sample_version)
    store = DecisionStore.for_run(out)
    store.record(NewDecision(**where, reviewer="alice", action="edit_accept",
                             edited_video_caption="Alice <i>says</i> it moves left."))
    store.record(NewDecision(**where, reviewer="bob", action="reject",
                             reason=REJECT_REASONS[2], note="it moves right"))
    users = out / "users.txt"
    add_user(users, "judy", "judy-pw", iterations=1000, role="adjudicator")
    port = free_port()
    demo = ReviewApp(out, users).launch("127.0.0.1", port, prevent_thread_lock=True, quiet=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_up(url)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        login(page, url, "judy")
        choose_filter(page, "adjudication (my queue)")
        sides = page.locator("#rv-compare .rv-side")
        expect(sides).to_have_count(2, timeout=20_000)
        left, right = sides.nth(0), sides.nth(1)
        expect(left).to_contain_text("Alice <i>says</i> it moves left.")  # as text
        expect(right).to_contain_text("it moves right")
        expect(right).to_contain_text(REJECT_REASONS[2])
        a, b = left.bounding_box(), right.bounding_box()
        assert a and b and abs(a["y"] - b["y"]) < 2 and a["x"] + a["width"] <= b["x"]
        assert shown_key(page) == s0.key
        press(page, "a")
        wait_notice(page, r"\(adjudication\)")
        last = store.decisions(s0.key)[-1]
        assert (last.reviewer, last.action, last.adjudicates) == ("judy", "accept", True)
        page.close()
    finally:
        demo.close()


def test_nothing_is_decided_before_the_sample_has_loaded(served: tuple[str, Path],
                                                         browser: Browser) -> None:
    """Images held back by the network (a route that answers only when released): keys and
    buttons do nothing but say so; once everything has loaded they decide; the next sample's
    images were requested while the reviewer looked at this one."""
    url, out = served
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    held: list = []
    requested: list[str] = []
    hold = [True]

    def media(route) -> None:
        requested.append(route.request.url)
        if hold[0]:
            held.append(route)
        else:
            route.continue_()

    samples = load_benchmark(out)
    cache = MediaCache(out)
    for s in samples:  # rendered ahead, as after the first pass over each video
        cache.get(s, [x for x in samples if x.video_id == s.video_id])
    try:
        page.route("**/review/media/**", media)
        login(page, url, "gina", state="attached")
        settle(page, loaded=False)
        first = shown_key(page)
        assert page.evaluate("() => window.rvMissing()")  # text is there, images are not
        before = len(rows(out))
        press(page, "a")
        expect(page.locator("#rv-hint")).to_contain_text("still loading")
        page.locator("#rv-accept").click()
        page.keyboard.press("Control+Enter")
        page.wait_for_timeout(700)
        assert len(rows(out)) == before and shown_key(page) == first
        hold[0] = False
        for route in held:
            route.continue_()
        page.wait_for_function("() => window.rvMissing().length === 0", timeout=30_000)
        expect(page.locator("#rv-hint")).to_have_text("")
        nxt_images = page.locator("#rv-shown").get_attribute("data-prefetch") or ""
        assert nxt_images, "no images of the next sample named for preloading"
        page.wait_for_timeout(500)
        seen_before = list(requested)
        press(page, "a")
        wait_notice(page, r"Saved: accept")
        assert [r["action"] for r in rows(out)[before:]] == ["accept"]
        # the next sample's main image and thumbnails were fetched before the key was pressed
        main = page.locator("#rv-frame img").get_attribute("src") or ""
        assert main.split("file=")[-1] in " ".join(seen_before)
        for src in nxt_images.split(" "):
            assert any(r.endswith(src.split("file=")[-1]) for r in seen_before), src
    finally:
        page.close()


def test_an_ended_session_says_so_and_keeps_the_text(served: tuple[str, Path],
                                                      browser: Browser) -> None:
    """Logging out in one tab ends the other tab's session: its next key records nothing, and
    it says so, with a login link, keeping the typed text; after logging in again (in a new
    tab, or in this one after a reload) the text is there and the decision is saved."""
    url, out = served
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    try:
        first = context.new_page()
        login(first, url, "hank")
        settle(first)
        tab = context.new_page()
        tab.goto(url)
        tab.wait_for_selector("#rv-frame img", timeout=30_000)
        settle(tab)
        tab.wait_for_function("() => window.rvMissing().length === 0", timeout=30_000)
        first.goto(url + "logout")  # ends every session of hank, as Gradio does
        text = "Hank's text, typed before he noticed."
        tab.locator("#rv-video textarea").fill(text)
        before = len(rows(out))
        tab.keyboard.press("Control+Enter")
        expect(tab.locator("#rv-session")).to_contain_text("NOT saved", timeout=20_000)
        assert len(rows(out)) == before
        assert tab.locator("#rv-video textarea").input_value() == text
        # log in again in the same tab: the text comes back after the reload
        tab.reload()
        login_again = tab
        login_again.locator("input[type=text]").fill("hank")
        login_again.locator("input[type=password]").fill("hank-pw")
        login_again.get_by_role("button", name="Login").click()
        expect(tab.locator("#rv-video textarea")).to_have_value(text, timeout=30_000)
        expect(tab.locator("#rv-hint")).to_contain_text("unsaved text")
        tab.wait_for_function("() => window.rvMissing().length === 0", timeout=30_000)
        tab.locator("#rv-video textarea").click()
        tab.keyboard.press("Control+Enter")
        wait_notice(tab, r"Saved: edit & accept")
        assert rows(out)[-1]["edited_video_caption"] == text
    finally:
        context.close()


def _axe_serious(page: Page) -> list:
    page.add_script_tag(path=str(_axe_path()))
    result = page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
    return [(v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3])
            for v in result["violations"] if v["impact"] in ("critical", "serious")]


def test_one_screen_layout_queue_keys_and_unmarked_gold(synth_root: Path, browser: Browser,
                                                        tmp_path: Path) -> None:
    """At 1280x720 the decision buttons, the image and the three captions are on screen
    without scrolling; at 420 px the captions follow the image; axe finds nothing serious at
    either. J/K move in the reviewer's own queue. A gold sample mixed into the queue looks
    like any undecided sample."""
    out = tmp_path / "run"
    write_fake_run(synth_root, out)
    samples = select_and_write(out, count=50, seed=0, double_review=0.0)
    gold = samples[-1]
    store = DecisionStore.for_run(out)
    store.record(NewDecision(video_id=gold.video_id, masklet_type=gold.masklet_type,
                             masklet_id=gold.masklet_id, sample_version=gold.sample_version,
                             reviewer="judy", action="reject", reason=REJECT_REASONS[1]))
    store.mark_gold(gold.key, gold.sample_version, "judy")
    users = out / "users.txt"
    add_user(users, "ivy", "ivy-pw", iterations=1000)
    port = free_port()
    demo = ReviewApp(out, users, gold_rate=1.0).launch("127.0.0.1", port,
                                                       prevent_thread_lock=True, quiet=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_up(url)
        page = browser.new_page(viewport={"width": 1280, "height": 720})
        login(page, url, "ivy")
        settle(page)
        assert page.evaluate("() => window.scrollY") == 0
        for sel in ("#rv-accept", "#rv-edit", "#rv-reject", "#rv-skip", "#rv-frame img",
                    "#rv-object textarea", "#rv-scene textarea", "#rv-video textarea"):
            box = page.locator(sel).bounding_box()
            assert box and box["height"] > 10, sel
            assert box["y"] >= 0 and box["y"] + box["height"] <= 720, (sel, box)
            assert box["x"] >= 0 and box["x"] + box["width"] <= 1280, (sel, box)
        assert not _axe_serious(page)
        # J / K in "pending (my queue)"
        first = shown_key(page)
        press(page, "j")
        expect(page.locator("#rv-banner")).not_to_contain_text(f"{first[0]} · {first[1]} "
                                                               f"masklet {first[2]}")
        second = shown_key(page)
        assert second != first and store.lease_holder(second) == "ivy"
        settle(page)
        press(page, "k")
        expect(page.locator("#rv-banner")).to_contain_text(f"masklet {first[2]}")
        assert shown_key(page) == first and store.lease_holder(first) == "ivy"
        settle(page)
        # a decision in the queue; at rate 1 the next sample is the gold one, unmarked
        press(page, "a")
        wait_notice(page, r"Saved: accept")
        assert shown_key(page) == gold.key
        expect(page.locator("#rv-banner")).to_contain_text("Status: pending (decided by "
                                                           "nobody yet)")
        for sel in ("#rv-banner", "#rv-history", "#rv-mine"):
            text = page.locator(sel).inner_text()
            assert "gold" not in text.lower() and "judy" not in text, (sel, text)
        expect(page.locator("#rv-gold")).to_have_count(0)
        page.close()

        narrow = browser.new_page(viewport={"width": 420, "height": 800})
        login(narrow, url, "ivy")
        settle(narrow)
        image = narrow.locator("#rv-frame img").bounding_box()
        caption = narrow.locator("#rv-object textarea").bounding_box()
        assert image and caption and image["x"] + image["width"] <= 420
        gap = caption["y"] - (image["y"] + image["height"])
        assert 0 <= gap < 80, f"the first caption starts {gap:.0f} px below the image"
        assert not _axe_serious(narrow)
        narrow.close()
    finally:
        demo.close()


def test_two_reviewers_in_two_tabs_race_and_disagree(synth_root: Path, browser: Browser,
                                                     tmp_path: Path) -> None:
    """Two reviewers, two real pages: on a single-review sample the later decision counts
    and the earlier reviewer is told on their next action; on a double-review sample they
    disagree, and both are told that an adjudicator decides."""
    out = tmp_path / "run"
    write_fake_run(synth_root, out)
    samples = select_and_write(out, count=50, seed=0, double_review=0.0)
    samples = [s.model_copy(update={"double_review": i == 1}) for i, s in enumerate(samples)]
    write_selection(out, samples, seed=0, count=50, force=True)
    s0, s1 = load_benchmark(out)[:2]
    users = out / "users.txt"
    for name in ("alice", "bob"):
        add_user(users, name, f"{name}-pw", iterations=1000)
    port = free_port()
    demo = ReviewApp(out, users).launch("127.0.0.1", port, prevent_thread_lock=True, quiet=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_up(url)
        with reviewer_page(browser, url, "alice") as alice, \
                reviewer_page(browser, url, "bob") as bob:
            assert shown_key(alice) == shown_key(bob) == s0.key  # both opened s0
            press(alice, "a")
            wait_notice(alice, r"Saved: accept")
            settle(bob)
            press(bob, "2")
            press(bob, "r")
            assert "Yours is the latest and counts" in wait_notice(bob, r"Conflict")
            # alice hears of it with her next action, on s1 (double review)
            settle(alice)
            assert shown_key(alice) == s1.key
            press(alice, "a")
            told = wait_notice(alice, r"Meanwhile")
            assert "bob's later reject" in told and "theirs counts" in told
            settle(bob)
            assert shown_key(bob) == s1.key
            press(bob, "2")
            press(bob, "r")
            assert "waits for an adjudicator" in wait_notice(bob, r"adjudicator")
            settle(alice)
            press(alice, "k")
            told = wait_notice(alice, r"an adjudicator decides")
            assert "bob decided" in told and "differently from your accept" in told
    finally:
        demo.close()
