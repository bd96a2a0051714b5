"""The Gradio review app: the layout (``build``) and the glue from events to ``ReviewActions``.

What is shown is decided in ``view`` (pure), what a button does in ``actions`` (the store);
this module only wires them to components. Session state lives server-side in
``ReviewActions`` keyed by Gradio's session, so two quick events of one page never see two
copies of it. The reviewer is ``gr.Request.username`` when logins are on, never a form field.
Captions only ever go into text boxes; every HTML component gets escaped text from ``view``.
"""

from __future__ import annotations

import getpass
import os
import time
from pathlib import Path
from typing import Any

import gradio as gr
from starlette.middleware import Middleware

from refsav_pipeline.review.actions import (
    FILTERS,
    QUEUE,
    REJECT_REASONS,
    Form,
    Refusal,
    ReviewActions,
    Screen,
)
from refsav_pipeline.review.limits import MAX_CHARS
from refsav_pipeline.review.login_guard import (
    ClientAddress,
    LoginThrottle,
    throttled_auth,
    trusted_proxies,
)
from refsav_pipeline.review.paths import decisions_path, media_dir
from refsav_pipeline.review.sessions import SessionTable
from refsav_pipeline.review.store import LEASE_SECONDS
from refsav_pipeline.review.users import make_auth
from refsav_pipeline.review.view import (
    FIELD_LABELS,
    empty_banner,
    frame_alt,
    main_frame_html,
    notice_html,
)

__all__ = ["REJECT_REASONS", "ReviewApp", "serve", "wait_until_up"]

CRITERIA = """\
**Accept only if all hold** (otherwise fix the text and *Edit & accept*, or *Reject*):
1. **The text identifies exactly this object**: someone reading it could find the outlined
   object, and no other, in the video.
2. **No wrong attribute**: colour, shape, parts, position and relations are right (the main
   view and the clip show the object's true colours; the tint is off unless you switch it on).
3. **Motion matches the video**: what the video caption says happens, happens (scrub or play).
4. Nothing is described that is not visible.

*Short expression* (optional): a few words that alone pick out the object
(the benchmark's short type), e.g. "the red car turning left".
"""

SHORTCUTS = ("**Keys**: `A` accept · `E` or `Ctrl+Enter` edit & accept · `R` reject · "
             "`1`–`7` reason · `S` skip · `→`/`J` next · `←`/`K` previous · "
             "`,` `.` frame back/forward. Keys typed in text boxes are ignored, and so are "
             "keys pressed while a decision is being saved.")

# Keypress listener (Gradio has no hotkeys): clicks the button with the mapped elem_id. While
# an action is pending (the notice beside the buttons has not been re-rendered yet) every key
# is ignored, so a key always applies to the sample on screen when it was pressed. Accept, edit
# and reject (keys and buttons) stay inert until the sample's main image, its 9 thumbnails and
# its clip have loaded, with a visible hint: nobody decides on what they have not seen. The
# next sample's images (named by the server in data-prefetch) are loaded meanwhile.
HEAD = """
<script>
(() => {
  const KEYS = {a: "rv-accept", e: "rv-edit", r: "rv-reject", s: "rv-skip", j: "rv-next",
                k: "rv-prev", ArrowRight: "rv-next", ArrowLeft: "rv-prev",
                ",": "rv-frame-prev", ".": "rv-frame-next"};
  const PENDING = new Set(["rv-accept", "rv-edit", "rv-reject", "rv-skip", "rv-next",
                           "rv-prev"]);
  const SEEN = new Set(["rv-accept", "rv-edit", "rv-reject"]);  // need the media loaded
  const NOT_TEXT = ["radio", "checkbox", "range", "button", "submit"];
  const MAX_WAIT_MS = 20000;
  let pending = null;  // {token, since}: the notice render seen when the action was sent
  const token = () => {
    const n = document.querySelector("#rv-notice-box [data-render]");
    return n ? n.getAttribute("data-render") : "";
  };
  const busy = () => pending !== null && token() === pending.token
                     && Date.now() - pending.since < MAX_WAIT_MS;
  window.rvBusy = busy;
  const loaded = (img) => img.complete && img.naturalWidth > 0;
  // what of the sample on screen has not arrived yet ([] when everything has)
  const missing = () => {
    const shown = document.getElementById("rv-shown");
    if (!shown || !shown.getAttribute("data-shown")) return [];
    const out = [];
    const main = document.querySelector("#rv-frame img.rv-main");
    if (!main || !loaded(main)) out.push("the main image");
    const thumbs = [...document.querySelectorAll("#rv-strip img")];
    const n = thumbs.filter(loaded).length;
    if (thumbs.length === 0 || n < thumbs.length) out.push(`frames (${n} of ${thumbs.length})`);
    const clip = document.querySelector("#rv-clip video");
    if (clip && !clip.error && clip.readyState < 3) out.push("the clip");
    return out;
  };
  window.rvMissing = missing;
  const hint = (text) => {
    const h = document.getElementById("rv-hint");
    if (h) h.textContent = text;
  };
  const unseen = (id) => {
    if (!SEEN.has(id)) return false;
    const m = missing();
    if (m.length === 0) return false;
    hint(`Not yet: ${m.join(", ")} still loading. Look at the sample, then decide.`);
    return true;
  };
  const click = (id) => {
    const el = document.getElementById(id);
    const btn = el && (el.tagName === "BUTTON" ? el : el.querySelector("button"));
    if (!btn || unseen(id)) return;
    if (PENDING.has(id)) pending = {token: token(), since: Date.now()};
    btn.click();
  };
  // mouse clicks on the decision buttons: inert until the sample has loaded
  document.addEventListener("click", (ev) => {
    const btn = ev.target && ev.target.closest && ev.target.closest("button");
    const id = btn && (btn.id || (btn.parentElement && btn.parentElement.id));
    if (id && unseen(id)) { ev.preventDefault(); ev.stopPropagation(); }
  }, true);
  document.addEventListener("keydown", (ev) => {
    if ((ev.ctrlKey || ev.metaKey) && ev.key === "Enter") {
      ev.preventDefault(); if (!busy()) click("rv-edit"); return;
    }
    if (ev.ctrlKey || ev.metaKey || ev.altKey || ev.repeat) return;
    const t = ev.target;
    const tag = t && t.tagName;
    if (tag === "TEXTAREA" || tag === "SELECT" || (t && t.isContentEditable)) return;
    if (tag === "INPUT" && !NOT_TEXT.includes((t.type || "").toLowerCase())) return;
    if (tag === "INPUT" && t.type === "range" && ev.key.startsWith("Arrow")) return;
    const digit = /^[1-9]$/.test(ev.key);
    const id = digit ? null : (KEYS[ev.key] || KEYS[ev.key.toLowerCase()]);
    if (!digit && !id) return;
    ev.preventDefault();
    if (busy()) return;
    if (digit) {
      const radios = document.querySelectorAll("#rv-reason input[type=radio]");
      const r = radios[Number(ev.key) - 1];
      if (r) r.click();
      return;
    }
    click(id);
  });
  // A session that ended (logged out elsewhere, expired): the server answers 401. Say so with
  // a login link (a new tab, so this page and its typed text stay), keep the text in
  // localStorage too (restored after a login in this tab), and never leave a key pending.
  const DRAFT = "refsav-review-draft";
  const FIELDS = ["rv-object", "rv-scene", "rv-video", "rv-short", "rv-note"];
  const box = (id) => document.querySelector(`#${id} textarea, #${id} input`);
  const ended = () => {
    pending = null;
    const shown = document.getElementById("rv-shown");
    const draft = {shown: shown ? shown.getAttribute("data-shown") : "", texts: {}};
    for (const id of FIELDS) { const b = box(id); if (b) draft.texts[id] = b.value; }
    try { localStorage.setItem(DRAFT, JSON.stringify(draft)); } catch (e) { /* full */ }
    let n = document.getElementById("rv-session");
    if (!n) {
      n = document.createElement("div");
      n.id = "rv-session"; n.className = "rv-session"; n.setAttribute("role", "alert");
      document.body.prepend(n);
    }
    n.innerHTML = "";
    n.append("Your session has ended (logged out, expired or not recognised): your last " +
             "action was NOT saved. Your text is kept on this page. ");
    const a = document.createElement("a");
    a.href = "./"; a.target = "_blank"; a.rel = "opener"; a.textContent = "Log in again";
    n.append(a, " (new tab), then come back here and decide again.");
  };
  const realFetch = window.fetch.bind(window);
  window.fetch = async (...args) => {
    const r = await realFetch(...args);
    const u = String(args[0] && args[0].url ? args[0].url : args[0]);
    if (r.status === 401 && u.includes("/gradio_api/") && !u.includes("login")) ended();
    if (r.ok && u.includes("/queue/join")) {  // logged in again: this page kept its text
      const n = document.getElementById("rv-session");
      if (n) { n.remove(); localStorage.removeItem(DRAFT); }
    }
    return r;
  };
  const restore = () => {
    let draft = null;
    try { draft = JSON.parse(localStorage.getItem(DRAFT) || "null"); } catch (e) { return; }
    const shown = document.getElementById("rv-shown");
    if (!draft || !shown || shown.getAttribute("data-shown") !== draft.shown) return;
    localStorage.removeItem(DRAFT);
    for (const [id, value] of Object.entries(draft.texts)) {
      const b = box(id);
      if (b && b.value !== value) {
        b.value = value; b.dispatchEvent(new Event("input", {bubbles: true}));
      }
    }
    hint("Your unsaved text from before the session ended is back: check it and decide.");
  };
  // the hint goes once the sample has loaded; the next sample's images load meanwhile
  let prefetched = "";
  const keep = [];
  setInterval(() => {
    const h = document.getElementById("rv-hint");
    if (h && h.textContent.startsWith("Not yet") && missing().length === 0) h.textContent = "";
    if (!document.getElementById("rv-session")) restore();
    const shown = document.getElementById("rv-shown");
    const urls = shown ? (shown.getAttribute("data-prefetch") || "") : "";
    if (urls && urls !== prefetched) {
      prefetched = urls;
      keep.length = 0;
      for (const u of urls.split(" ")) { const i = new Image(); i.src = u; keep.push(i); }
    }
  }, 250);
})();
</script>
"""

# What the page saw: read from the displayed banner at the moment the event fires.
SHOWN_JS = """(...args) => {
  const el = document.getElementById("rv-shown");
  args[0] = el ? (el.getAttribute("data-shown") || "") : "";
  return args;
}"""

CSS = """
#rv-accept, #rv-edit {background: #3730a3 !important; color: #fff !important;}
#rv-reject {background: #b91c1c !important; color: #fff !important;}
[data-testid="block-info"] {color: #1e1b4b !important;}
.min_value, .max_value, footer, footer a, footer button, .show-api, .built-with,
.settings {color: #1f2937 !important;}
.gradio-container {--layout-gap: 8px;}
.rv-top {align-items: center; flex-wrap: wrap;}
.rv-top > .block {flex: 0 1 auto !important; width: auto !important;
                  min-width: 0 !important;}
.rv-top > #rv-progress {flex: 1 1 420px !important;}
h1.rv-title {font-size: 1.25rem; margin: 0; white-space: nowrap;}
.rv-banner {padding: 6px 10px; border-radius: 6px; background: #eef3fb; color: #1a1a1a;
            margin: 0;}
.rv-banner.rv-warn {background: #fff1d6; border: 1px solid #8a5a00;}
.rv-ok {background: #e6f6e6; color: #12391a;}
.rv-notice {padding: 6px 10px; border-radius: 6px; min-height: 1.5em; color: #1a1a1a;}
.rv-notice.rv-warn {background: #fff1d6; border: 1px solid #8a5a00;}
.rv-session {position: sticky; top: 0; z-index: 1000; padding: 8px 12px;
              background: #fde8e8; border: 2px solid #a40000; color: #5c0000;}
.rv-session a {color: #1e1b4b; font-weight: bold;}
.rv-hint {margin: 0; min-height: 1.2em; color: #5c3b00; font-weight: 600;}
.rv-notice.rv-error {background: #fde8e8; border: 1px solid #a40000; color: #5c0000;}
.rv-progress {font-size: 0.85rem; line-height: 1.3;}
.rv-progress progress {width: 120px; height: 12px; vertical-align: middle;}
.rv-progress span {margin-right: 14px;}
/* the image leaves room for the header and buttons above it: one screen at 1280x720 */
img.rv-main {max-width: 100%; height: auto; max-height: max(200px, calc(100vh - 290px));
             object-fit: contain; display: block; margin: 0 auto;}
.rv-strip {display: flex; gap: 6px; width: 100%;}
.rv-thumb {flex: 1 1 0; min-width: 0; margin: 0;}
.rv-thumb img {width: 100%; height: auto; display: block;}
.rv-thumb figcaption {font-size: 0.8rem; line-height: 1.2; color: #1a1a1a; margin-top: 2px;}
video.rv-clip {max-width: 100%; max-height: 280px; display: block;}
.rv-compare .rv-sides {display: flex; gap: 12px;}
.rv-side {flex: 1 1 0; border: 1px solid #555; border-radius: 6px; padding: 6px;}
.rv-side h3 {margin: 0 0 4px 0; font-size: 1rem;}
.rv-side dt {font-weight: bold;}
.rv-side dd {margin: 0 0 4px 0; white-space: pre-wrap;}
.rv-mine {background: #f3f0fa; color: #1a1a1a; padding: 4px 8px; border-radius: 6px;}
table.rv-history {border-collapse: collapse; width: 100%; font-size: 0.85rem;}
table.rv-history th, table.rv-history td {border: 1px solid #888; padding: 2px 4px;
                                          text-align: left;}
"""

TEXT_FIELDS = ("object_caption", "scene_caption", "video_caption")


def default_reviewer() -> str:
    """Without logins the reviewer is the OS user running the app (or "anonymous")."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = ""
    return name.replace(",", "_").strip() or "anonymous"


class ReviewApp:
    """The page for ``ReviewActions``: layout, and events turned into its calls."""

    def __init__(self, out_dir: str | Path, users_file: str | Path | None = None,
                 sav_root: str | Path | None = None, lease_seconds: float = LEASE_SECONDS,
                 gold_rate: float = 0.0) -> None:
        self.actions = ReviewActions(out_dir, users_file, sav_root, lease_seconds, gold_rate)
        self.out_dir = Path(out_dir)
        self.users_file = self.actions.users_file
        self.fallback_reviewer = default_reviewer()
        self.throttle = LoginThrottle()

    def reviewer(self, request: gr.Request | None) -> str:
        if self.users_file is not None:
            name = getattr(request, "username", None) if request is not None else None
            if not name:
                raise gr.Error("not logged in")
            return str(name)
        return self.fallback_reviewer

    @staticmethod
    def _sid(request: gr.Request | None) -> str:
        return str(getattr(request, "session_hash", None) or "local")

    # -- answers to Gradio outputs ---------------------------------------------------------

    def _outputs(self, answer: Screen | Refusal) -> tuple:
        """One value per component of ``self.outputs`` (skip: leave it as it is)."""
        if isinstance(answer, Refusal):
            return (*(gr.skip() for _ in range(17)),
                    notice_html(answer.kind, answer.message, answer.render))
        flt = gr.update(choices=answer.filters, value=answer.flt)
        gold = gr.update(visible=answer.gold_button is not None,
                         value=answer.gold_button or "Mark as gold")
        notice = notice_html(*(answer.notice or ("none", "")), answer.render)
        v = answer.view
        if v is None:
            return (empty_banner(answer.empty_message), answer.progress, flt,
                    main_frame_html(None, ""), gr.update(value=0, maximum=1), "", "",
                    *(gr.update(value="", label=FIELD_LABELS[f]) for f in TEXT_FIELDS), "", "",
                    gr.update(value=None), "", "", "", gold, notice)
        count = len(v.frames)
        main = main_frame_html(v.frames[v.start] if v.frames else None,
                               frame_alt(v.alt_prefix, v.start, count, False))
        slider = gr.update(value=v.start, maximum=max(count - 1, 1), label=v.slider_label)
        return (v.banner, answer.progress, flt, main, slider, v.clip, v.strip,
                *(gr.update(value=v.texts[f], label=v.labels[f]) for f in TEXT_FIELDS),
                v.short, v.note, gr.update(value=None), v.mine, v.compare, v.history, gold,
                notice)

    # -- events --------------------------------------------------------------------------

    def on_load(self, flt: str, request: gr.Request) -> tuple:
        return self._outputs(self.actions.open(self._sid(request), self.reviewer(request),
                                               QUEUE))

    def on_filter(self, flt: str, request: gr.Request) -> tuple:
        return self._outputs(self.actions.open(self._sid(request), self.reviewer(request),
                                               flt or QUEUE))

    def on_next(self, request: gr.Request) -> tuple:
        return self._outputs(self.actions.move(self._sid(request), self.reviewer(request), +1))

    def on_prev(self, request: gr.Request) -> tuple:
        return self._outputs(self.actions.move(self._sid(request), self.reviewer(request), -1))

    def on_gold(self, request: gr.Request) -> tuple:
        return self._outputs(self.actions.mark_gold(self._sid(request),
                                                    self.reviewer(request)))

    def decide(self, action: str, shown: str, obj: str, scene: str, video: str, short: str,
               note: str, reason: str | None, request: gr.Request) -> tuple:
        form = Form(object_caption=obj or "", scene_caption=scene or "",
                    video_caption=video or "", short=short or "", note=note or "",
                    reason=reason or None)
        return self._outputs(self.actions.decide(self._sid(request), self.reviewer(request),
                                                 action, shown, form))

    def on_frame(self, index: float, tint: bool, request: gr.Request, step: int = 0
                 ) -> tuple[Any, str]:
        sid = self._sid(request)
        i, path, alt = self.actions.frame(sid, (index or 0) + step, tint)
        view = self.actions.session(sid).view
        count = len(view.frames) if view else 0
        return i, main_frame_html(path, frame_alt(alt, i, count, bool(tint)))

    def on_frame_prev(self, index: float, tint: bool, request: gr.Request) -> tuple[Any, str]:
        return self.on_frame(index, tint, request, -1)

    def on_frame_next(self, index: float, tint: bool, request: gr.Request) -> tuple[Any, str]:
        return self.on_frame(index, tint, request, +1)

    def on_unload(self, request: gr.Request) -> None:
        self.actions.forget(self._sid(request))

    # -- layout --------------------------------------------------------------------------

    def build(self) -> gr.Blocks:
        gr.set_static_paths(paths=[str(media_dir(self.out_dir).resolve())])
        with gr.Blocks(title="Ref-SAV benchmark review") as demo:
            # Top to bottom: what is judged and the decision (buttons, image, the three
            # captions: one screen at 1280x720), then the tools to judge it. Narrow screens
            # stack the columns: the captions come right after the image.
            with gr.Row(elem_classes="rv-top"):
                gr.HTML('<h1 class="rv-title">Ref-SAV benchmark review</h1>', padding=False)
                progress = gr.HTML(elem_id="rv-progress", padding=False)
            banner = gr.HTML(elem_id="rv-banner", padding=False)
            shown = gr.Textbox(visible=False, elem_id="rv-shown-input")
            with gr.Row(equal_height=False, elem_classes="rv-buttons"):
                accept = gr.Button("Accept (A)", variant="primary", elem_id="rv-accept",
                                   scale=0, min_width=110, size="md")
                edit = gr.Button("Edit & accept (E)", variant="primary", elem_id="rv-edit",
                                 scale=0, min_width=150, size="md")
                reject = gr.Button("Reject (R)", variant="stop", elem_id="rv-reject", scale=0,
                                   min_width=110, size="md")
                skip = gr.Button("Skip (S)", elem_id="rv-skip", scale=0, min_width=90,
                                 size="md")
                prev = gr.Button("← Previous (K)", elem_id="rv-prev", scale=0, min_width=130,
                                 size="md")
                nxt = gr.Button("Next (J) →", elem_id="rv-next", scale=0, min_width=110,
                                size="md")
                gold = gr.Button("Mark as gold", elem_id="rv-gold", scale=0, min_width=120,
                                 size="md", visible=False)
                notice = gr.HTML(elem_id="rv-notice-box", padding=False)
            gr.HTML('<p id="rv-hint" class="rv-hint" role="status" aria-live="polite"></p>',
                    padding=False)
            with gr.Row(equal_height=False, elem_classes="rv-judge"):
                with gr.Column(scale=3, min_width=320):
                    main = gr.HTML(elem_id="rv-frame", padding=False)
                with gr.Column(scale=2, min_width=320, elem_classes="rv-captions"):
                    obj = gr.Textbox(label=FIELD_LABELS["object_caption"], lines=2,
                                     max_lines=6, elem_id="rv-object")
                    scene = gr.Textbox(label=FIELD_LABELS["scene_caption"], lines=3,
                                       max_lines=8, elem_id="rv-scene")
                    video = gr.Textbox(label=FIELD_LABELS["video_caption"], lines=3,
                                       max_lines=10, elem_id="rv-video")
            with gr.Row(equal_height=False):
                with gr.Column(scale=3, min_width=320):
                    with gr.Row():
                        frame_prev = gr.Button("◀ frame", elem_id="rv-frame-prev", scale=0,
                                               size="sm")
                        slider = gr.Slider(0, 1, value=0, step=1, label="Annotated frame",
                                           elem_id="rv-scrub", scale=5)
                        frame_next = gr.Button("frame ▶", elem_id="rv-frame-next", scale=0,
                                               size="sm")
                    tint = gr.Checkbox(False, label="Tint the object (changes its colour on "
                                                    "screen; off shows true colours)",
                                       elem_id="rv-tint")
                    clip = gr.HTML(elem_id="rv-clip", padding=False)
                with gr.Column(scale=2, min_width=320):
                    mine = gr.HTML(elem_id="rv-mine", padding=False)
                    compare = gr.HTML(elem_id="rv-compare", padding=False)
                    short = gr.Textbox(label="Short expression (optional, yours)",
                                       placeholder="e.g. the red ball rolling left",
                                       elem_id="rv-short",
                                       max_length=MAX_CHARS["short_expression"])
                    note = gr.Textbox(label="Note (optional)", elem_id="rv-note",
                                      max_length=MAX_CHARS["note"])
                    reason = gr.Radio(list(REJECT_REASONS), label="Reject reason",
                                      elem_id="rv-reason")
                    flt = gr.Dropdown(list(FILTERS), value=QUEUE, label="Show",
                                      elem_id="rv-filter")
                    gr.Markdown(SHORTCUTS)
                    gr.Markdown(CRITERIA)
            strip = gr.HTML(elem_id="rv-strip", padding=False)
            history = gr.HTML(elem_id="rv-history")

            outputs = [banner, progress, flt, main, slider, clip, strip, obj, scene, video,
                       short, note, reason, mine, compare, history, gold, notice]
            demo.load(self.on_load, [flt], outputs, api_name="load")
            demo.unload(self.on_unload)
            common = dict(show_progress="hidden", concurrency_limit=None)
            nxt.click(self.on_next, None, outputs, api_name="next", **common)
            prev.click(self.on_prev, None, outputs, api_name="prev", **common)
            gold.click(self.on_gold, None, outputs, api_name="gold", **common)
            flt.input(self.on_filter, [flt], outputs, api_name="filter", **common)
            form = [shown, obj, scene, video, short, note, reason]
            for button, action in ((accept, "accept"), (edit, "edit_accept"),
                                   (reject, "reject"), (skip, "skip")):
                button.click(_bind_action(self.decide, action), form, outputs,
                             api_name=action, js=SHOWN_JS, **common)
            slider.release(self.on_frame, [slider, tint], [slider, main], api_name="scrub",
                           show_progress="hidden")
            slider.input(self.on_frame, [slider, tint], [slider, main], show_progress="hidden",
                         api_visibility="private", trigger_mode="always_last")
            tint.change(self.on_frame, [slider, tint], [slider, main], api_name="tint",
                        show_progress="hidden")
            frame_prev.click(self.on_frame_prev, [slider, tint], [slider, main],
                             api_name="frame_prev", show_progress="hidden")
            frame_next.click(self.on_frame_next, [slider, tint], [slider, main],
                             api_name="frame_next", show_progress="hidden")
        return demo

    def launch(self, host: str = "127.0.0.1", port: int | None = None,
               prevent_thread_lock: bool = False, quiet: bool = False,
               forwarded_allow_ips: str = "") -> gr.Blocks:
        """Start the server. ``forwarded_allow_ips``: the proxies whose ``X-Forwarded-For``
        names the client (comma-separated addresses or networks, as uvicorn's option; empty:
        none, every client is the address it connects from). Gradio itself prints nothing;
        unless ``quiet``, one line gives the URL."""
        os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
        demo = self.build()
        demo.queue(default_concurrency_limit=8)
        auth = (throttled_auth(make_auth(self.users_file), self.throttle)
                if self.users_file else None)
        with trusted_proxies(forwarded_allow_ips):
            demo.launch(
                server_name=host, server_port=port, share=False, auth=auth,
                auth_message="Ref-SAV benchmark review: log in with your reviewer account.",
                allowed_paths=[str(media_dir(self.out_dir).resolve())],
                prevent_thread_lock=True, quiet=True, show_error=True,
                head=HEAD, css=CSS, theme=gr.themes.Soft(), ssr_mode=False,
                app_kwargs={"middleware": [Middleware(ClientAddress)]},
            )
        if self.users_file:  # logins outlive a restart (one in the first instant would not)
            sessions = SessionTable(decisions_path(self.out_dir))
            demo.server_app.cookie_id = sessions.cookie_id()
            demo.server_app.tokens = sessions
        if not quiet:  # Gradio's own hints (share=True, ...) are not for our users
            print(f"Review app: {demo.local_url} (Ctrl+C stops it)", flush=True)
        if not prevent_thread_lock:
            demo.block_thread()
        return demo


def _bind_action(decide, action: str):
    """A handler with the action fixed (Gradio passes inputs positionally)."""

    def handler(shown: str, obj: str, scene: str, video: str, short: str, note: str,
                reason: str | None, request: gr.Request) -> tuple:
        return decide(action, shown, obj, scene, video, short, note, reason, request)

    handler.__name__ = f"on_{action}"
    return handler


def serve(out_dir: str | Path, host: str = "127.0.0.1", port: int | None = None,
          users_file: str | Path | None = None, forwarded_allow_ips: str = "",
          gold_rate: float = 0.0) -> None:
    """Blocking: the ``refsav review`` command."""
    ReviewApp(out_dir, users_file, gold_rate=gold_rate).launch(
        host, port, forwarded_allow_ips=forwarded_allow_ips)


def wait_until_up(url: str, timeout: float = 30.0) -> None:
    """For tests and scripts: poll the app until it answers."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=2.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer within {timeout} s")
        time.sleep(0.2)
