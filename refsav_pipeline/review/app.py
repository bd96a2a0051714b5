"""The Gradio review app: one benchmark object at a time, decisions straight into SQLite.

Session state holds only what the open view needs (sample key, version, the latest decision
seen, the navigation history); every decision goes to the database at once, so a reload or a
crash loses nothing. The reviewer is ``gr.Request.username`` when logins are on, never a form
field. Caption text is only ever put in Textboxes or Dataframes; the one HTML component (the
status banner and progress) escapes everything it shows.
"""

from __future__ import annotations

import getpass
import html
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import gradio as gr

from refsav_pipeline.errors import RecordError
from refsav_pipeline.records import SampleKey
from refsav_pipeline.review.media import MediaCache, SampleMedia
from refsav_pipeline.review.paths import media_dir
from refsav_pipeline.review.select import BenchmarkSample, load_benchmark
from refsav_pipeline.review.store import LEASE_SECONDS, DecisionStore, NewDecision
from refsav_pipeline.review.users import make_auth

REJECT_REASONS = (
    "wrong object / not identifying",
    "wrong attribute (colour, shape, part)",
    "wrong motion or action",
    "ambiguous: fits several objects",
    "hallucinated content",
    "bad mask or unusable video",
    "other",
)

CRITERIA = """\
**Accept only if all hold** (otherwise fix the text and *Edit & accept*, or *Reject*):
1. **The text identifies exactly this object**: someone reading it could find the highlighted
   object, and no other, in the video.
2. **No wrong attribute**: colour, shape, parts, position and relations are right.
3. **Motion matches the video**: what the video caption says happens, happens (scrub or play).
4. Nothing is described that is not visible.

*Short expression* (optional): a few words that alone pick out the object
(the benchmark's short type), e.g. "the red car turning left".
"""

SHORTCUTS = ("**Keys**: `A` accept · `E` or `Ctrl+Enter` edit & accept · `R` reject · "
             "`1`–`7` reason · `S` skip · `→`/`J` next · `←`/`K` previous · "
             "`,` `.` frame back/forward (keys typed in text boxes are ignored)")

FILTERS = ("pending (my queue)", "accepted", "rejected", "conflicts", "all")
REVIEWER_FILTER = "decided by: "

# Keypress listener (Gradio has no hotkeys): clicks the button with the mapped elem_id.
HEAD = """
<script>
(() => {
  const KEYS = {a: "rv-accept", e: "rv-edit", r: "rv-reject", s: "rv-skip", j: "rv-next",
                k: "rv-prev", ArrowRight: "rv-next", ArrowLeft: "rv-prev",
                ",": "rv-frame-prev", ".": "rv-frame-next"};
  const NOT_TEXT = ["radio", "checkbox", "range", "button", "submit"];
  const click = (id) => {
    const el = document.getElementById(id);
    const btn = el && (el.tagName === "BUTTON" ? el : el.querySelector("button"));
    if (btn) btn.click();
  };
  document.addEventListener("keydown", (ev) => {
    if ((ev.ctrlKey || ev.metaKey) && ev.key === "Enter") {
      ev.preventDefault(); click("rv-edit"); return;
    }
    if (ev.ctrlKey || ev.metaKey || ev.altKey || ev.repeat) return;
    const t = ev.target;
    const tag = t && t.tagName;
    if (tag === "TEXTAREA" || tag === "SELECT" || (t && t.isContentEditable)) return;
    if (tag === "INPUT" && !NOT_TEXT.includes((t.type || "").toLowerCase())) return;
    if (tag === "INPUT" && t.type === "range" && ev.key.startsWith("Arrow")) return;
    if (/^[1-9]$/.test(ev.key)) {
      const radios = document.querySelectorAll("#rv-reason input[type=radio]");
      const r = radios[Number(ev.key) - 1];
      if (r) { r.click(); ev.preventDefault(); }
      return;
    }
    const id = KEYS[ev.key] || KEYS[ev.key.toLowerCase()];
    if (id) { ev.preventDefault(); click(id); }
  });
})();
</script>
"""

CSS = """
.rv-banner {padding: 6px 10px; border-radius: 6px; background: #eef3fb; margin: 0;}
.rv-banner.rv-warn {background: #fff1d6; border: 1px solid #e0a100;}
.rv-banner.rv-ok {background: #e6f6e6;}
.rv-progress progress {width: 220px; height: 14px; vertical-align: middle;}
.rv-progress span {margin-right: 18px;}
"""

_HISTORY_HEADERS = ["#", "time (UTC)", "reviewer", "action", "reason", "edited", "short",
                    "conflict"]


def default_reviewer() -> str:
    """Without logins the reviewer is the OS user running the app (or "anonymous")."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = ""
    return name.replace(",", "_").strip() or "anonymous"


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


class ReviewApp:
    """The review of one run's benchmark selection."""

    def __init__(self, out_dir: str | Path, users_file: str | Path | None = None,
                 sav_root: str | Path | None = None, lease_seconds: float = LEASE_SECONDS
                 ) -> None:
        self.out_dir = Path(out_dir)
        self.users_file = Path(users_file) if users_file else None
        self.samples = load_benchmark(out_dir)
        if not self.samples:
            raise ValueError(f"the benchmark selection of {out_dir} is empty")
        self.by_key: dict[SampleKey, BenchmarkSample] = {s.key: s for s in self.samples}
        self.by_video: dict[str, list[BenchmarkSample]] = defaultdict(list)
        for s in self.samples:
            self.by_video[s.video_id].append(s)
        self.store = DecisionStore.for_run(out_dir)
        self.store.sync_samples(self.samples)
        self.media = MediaCache(out_dir, sav_root)
        self.lease_seconds = lease_seconds
        self.fallback_reviewer = default_reviewer()
        media_dir(out_dir).mkdir(parents=True, exist_ok=True)

    # -- helpers -------------------------------------------------------------------------

    def reviewer(self, request: gr.Request | None) -> str:
        if self.users_file is not None:
            name = getattr(request, "username", None) if request is not None else None
            if not name:
                raise gr.Error("not logged in")
            return str(name)
        return self.fallback_reviewer

    def _filtered(self, flt: str, reviewer: str) -> list[SampleKey]:
        states = self.store.states()
        if flt == "accepted":
            keep = [s for s in states if s.status == "accepted"]
        elif flt == "rejected":
            keep = [s for s in states if s.status == "rejected"]
        elif flt == "conflicts":
            keep = [s for s in states if s.conflict]
        elif flt.startswith(REVIEWER_FILTER):
            who = flt[len(REVIEWER_FILTER):]
            keep = [s for s in states if who in s.reviewers]
        else:
            keep = states
        return [s.key for s in keep]

    def _next_key(self, flt: str, reviewer: str, after: int) -> SampleKey | None:
        """The next sample for this filter after review position ``after`` (wrapping)."""
        if flt == FILTERS[0]:
            return (self.store.claim_next(reviewer, after=after, ttl=self.lease_seconds)
                    or self.store.claim_next(reviewer, ttl=self.lease_seconds))
        keys = self._filtered(flt, reviewer)
        later = [k for k in keys if self.by_key[k].position > after]
        return (later or keys or [None])[0]

    def _progress_html(self, reviewer: str) -> str:
        p = self.store.progress(reviewer)
        mine_total = p.mine + p.my_queue
        return (
            '<div class="rv-progress">'
            f'<span>Everyone: <progress value="{p.done}" max="{max(p.total, 1)}"></progress> '
            f'<b>{p.done}</b> / {p.total} samples decided '
            f'({p.accepted} accepted, {p.rejected} rejected, {p.conflicts} with conflicts; '
            f'{p.reviews_done} / {p.reviews_needed} reviews incl. double review)</span>'
            f'<span>Me ({_esc(reviewer)}): <progress value="{p.mine}" '
            f'max="{max(mine_total, 1)}"></progress> <b>{p.mine}</b> decided, '
            f'{p.my_queue} left for me</span></div>')

    def _filter_choices(self) -> list[str]:
        names = sorted({r for s in self.store.states() for r in s.reviewers})
        return [*FILTERS, *(REVIEWER_FILTER + n for n in names)]

    # -- view ----------------------------------------------------------------------------

    def _show(self, key: SampleKey | None, view: dict, reviewer: str, flt: str,
              notice: tuple[str, str] | None = None) -> tuple:
        """Every output of a navigation or decision event, for sample ``key``."""
        progress = self._progress_html(reviewer)
        filters = gr.update(choices=self._filter_choices(), value=flt)
        if key is None:
            banner = _banner("Nothing here: " + ("your queue is empty, thank you!"
                                                 if flt == FILTERS[0]
                                                 else f"no sample matches '{flt}'."),
                             notice, "rv-ok")
            return (view | {"key": None}, banner, progress, filters, None,
                    gr.update(value=0, maximum=1), None, [], "", "", "", "",
                    gr.update(value=None), [])
        s = self.by_key[key]
        state = self.store.state(key)
        base_seq = self.store.latest_seq(key)
        history = [d for d in self.store.decisions(key) if d.sample_version == s.sample_version]
        mine = [d for d in history if d.reviewer == reviewer and d.action != "skip"]
        texts = {f: s.__getattribute__(f) for f in ("object_caption", "scene_caption",
                                                     "video_caption")}
        short = ""
        if mine:
            for f in texts:
                edit = getattr(mine[-1], f"edited_{f}")
                if edit:
                    texts[f] = edit
            short = mine[-1].short_expression or ""
        try:
            media: SampleMedia | None = self.media.get(s, self.by_video[s.video_id])
            media_error = ""
        except (RecordError, OSError, RuntimeError, ValueError) as exc:
            media, media_error = None, f"media unavailable: {exc}"
        lines = [f"<b>{_esc(s.video_id)}</b> · {_esc(s.masklet_type)} masklet "
                 f"{s.masklet_id} · {_esc(s.stratum)} · sample {s.position + 1} of "
                 f"{len(self.samples)}"
                 + (" · <b>double review</b>" if s.double_review else "")]
        status = state.status if state else "pending"
        who = ", ".join(state.reviewers) if state and state.reviewers else "nobody yet"
        lines.append(f"Status: <b>{_esc(status)}</b> (decided by {_esc(who)})")
        holder = self.store.lease_holder(key)
        css = "rv-banner"
        if holder and holder != reviewer:
            lines.append(f"⚠ {_esc(holder)} is reviewing this sample right now.")
            css += " rv-warn"
        if state and state.conflict:
            lines.append("⚠ This sample has conflicting decisions: see the history below.")
            css += " rv-warn"
        if media_error:
            lines.append(f"⚠ {_esc(media_error)}")
            css += " rv-warn"
        banner = _banner("<br>".join(lines), notice, css, raw=True)
        new_view = view | {"key": list(key), "version": s.sample_version, "base_seq": base_seq,
                           "frames": media.overlays if media else [],
                           "texts": {f: getattr(s, f) for f in texts}}
        if media is not None:
            start = media.frames.index(s.max_area_frame) if s.max_area_frame in media.frames \
                else 0
            frame_img = media.overlays[start] if media.overlays else None
            slider = gr.update(value=start, maximum=max(len(media.overlays) - 1, 1),
                               label=f"Annotated frame ({len(media.overlays)} at 6 fps; "
                                     f"max-area frame {s.max_area_frame} preselected)")
            gallery = [(media.max_area, f"max-area frame {s.max_area_frame} (contour)"),
                       *media.sampled]
            clip = media.clip
        else:
            frame_img, slider, gallery, clip = None, gr.update(value=0, maximum=1), [], None
        rows = [[d.seq, d.decided_at[:19].replace("T", " "), d.reviewer, d.action,
                 d.reason or "", ", ".join(f.split("_")[0] for f in texts
                                           if getattr(d, f"edited_{f}") is not None),
                 d.short_expression or "", "⚠ yes" if d.conflict else ""] for d in history]
        return (new_view, banner, progress, filters, frame_img, slider, clip, gallery,
                texts["object_caption"], texts["scene_caption"], texts["video_caption"], short,
                gr.update(value=None), rows)

    # -- events --------------------------------------------------------------------------

    def on_load(self, view: dict, flt: str, request: gr.Request) -> tuple:
        reviewer = self.reviewer(request)
        flt = flt or FILTERS[0]
        key = self._next_key(flt, reviewer, -1)
        view = {"history": [list(key)] if key else [], "pos": 0}
        return self._show(key, view, reviewer, flt)

    def _move(self, view: dict, flt: str, reviewer: str, step: int,
              notice: tuple[str, str] | None = None, fresh: bool = False) -> tuple:
        history: list[list] = list(view.get("history") or [])
        pos = int(view.get("pos", len(history) - 1))
        if step < 0:
            pos = max(pos - 1, 0)
            key = tuple(history[pos]) if history else None
        elif not fresh and pos + 1 < len(history):
            pos += 1
            key = tuple(history[pos])
        else:
            current = view.get("key")
            after = self.by_key[tuple(current)].position if current and not fresh else -1
            key = self._next_key(flt, reviewer, after)
            if key is not None:
                history = [*history[: pos + 1], list(key)]
                pos = len(history) - 1
        key = (str(key[0]), str(key[1]), int(key[2])) if key else None
        return self._show(key, view | {"history": history, "pos": pos}, reviewer, flt, notice)

    def on_next(self, view: dict, flt: str, request: gr.Request) -> tuple:
        return self._move(view, flt, self.reviewer(request), +1)

    def on_prev(self, view: dict, flt: str, request: gr.Request) -> tuple:
        return self._move(view, flt, self.reviewer(request), -1)

    def on_filter(self, view: dict, flt: str, request: gr.Request) -> tuple:
        reviewer = self.reviewer(request)
        if flt != FILTERS[0]:
            self.store.release(reviewer)
        key = self._next_key(flt, reviewer, -1)
        return self._show(key, {"history": [list(key)] if key else [], "pos": 0}, reviewer,
                          flt)

    def decide(self, action: str, view: dict, flt: str, obj: str, scene: str, video: str,
               short: str, reason: str | None, request: gr.Request) -> tuple:
        reviewer = self.reviewer(request)
        if not view.get("key"):
            raise gr.Error("no sample is open")
        key = (str(view["key"][0]), str(view["key"][1]), int(view["key"][2]))
        if action == "reject" and not reason:
            raise gr.Error("Choose a reject reason first (keys 1–7), then reject.")
        original = view.get("texts") or {}
        given = {"object_caption": obj, "scene_caption": scene, "video_caption": video}
        edits = {f: (v or "").strip() for f, v in given.items()
                 if (v or "").strip() != (original.get(f) or "").strip()}
        if action in ("accept", "edit_accept"):
            if any(not v for v in edits.values()):
                raise gr.Error("A caption is empty: write it, or reject the sample.")
            # text typed and then plain-accepted is still an edit: never drop what was typed
            action = "edit_accept" if edits else "accept"
        keep_edits = action in ("accept", "edit_accept", "reject")
        decision = self.store.record(NewDecision(
            video_id=key[0], masklet_type=key[1], masklet_id=key[2],
            sample_version=str(view.get("version")), reviewer=reviewer, action=action,
            reason=reason if action == "reject" else None,
            edited_object_caption=edits.get("object_caption") if keep_edits else None,
            edited_scene_caption=edits.get("scene_caption") if keep_edits else None,
            edited_video_caption=edits.get("video_caption") if keep_edits else None,
            short_expression=(short or "").strip() or None,
            base_seq=view.get("base_seq")))
        label = f"{decision.action.replace('_', ' & ')} #{decision.seq} on {key[0]} " \
                f"{key[1]} {key[2]}"
        if decision.conflict:
            others = [d for d in self.store.decisions(key)
                      if d.seq == decision.conflicts_with]
            if others:
                o = others[0]
                text = (f"⚠ Conflict: your {label} was recorded, but {o.reviewer} had "
                        f"decided '{o.action}' (#{o.seq}) after you opened it. Both are kept; "
                        "the latest counts. Check the 'conflicts' filter.")
            else:
                text = (f"⚠ Conflict: your {label} was recorded, but the sample changed "
                        "after you opened it (new captions).")
            notice = ("rv-warn", text)
        else:
            notice = ("rv-ok", f"Saved: {label}.")
        return self._move(view, flt, reviewer, +1, notice,
                          fresh=flt == FILTERS[0])

    def on_scrub(self, index: float, view: dict) -> str | None:
        frames = view.get("frames") or []
        if not frames:
            return None
        return frames[min(max(int(index), 0), len(frames) - 1)]

    def on_step(self, index: float, view: dict, step: int) -> tuple:
        frames = view.get("frames") or []
        if not frames:
            return 0, None
        i = min(max(int(index) + step, 0), len(frames) - 1)
        return i, frames[i]

    # -- layout --------------------------------------------------------------------------

    def build(self) -> gr.Blocks:
        gr.set_static_paths(paths=[str(media_dir(self.out_dir).resolve())])
        with gr.Blocks(title="Ref-SAV benchmark review") as demo:
            view = gr.State({})
            with gr.Row():
                gr.Markdown("## Ref-SAV benchmark review")
                flt = gr.Dropdown(list(FILTERS), value=FILTERS[0], label="Show",
                                  elem_id="rv-filter", scale=0, min_width=240)
            progress = gr.HTML(elem_id="rv-progress")
            banner = gr.HTML(elem_id="rv-banner")
            with gr.Row():
                with gr.Column(scale=3):
                    frame = gr.Image(label="Object mask over the frame", type="filepath",
                                     interactive=False, elem_id="rv-frame", height=420,
                                     buttons=["fullscreen"])
                    with gr.Row():
                        frame_prev = gr.Button("◀ frame", elem_id="rv-frame-prev", scale=0,
                                               size="sm")
                        slider = gr.Slider(0, 1, value=0, step=1, label="Annotated frame",
                                           elem_id="rv-scrub", scale=5)
                        frame_next = gr.Button("frame ▶", elem_id="rv-frame-next", scale=0,
                                               size="sm")
                    gallery = gr.Gallery(label="Max-area frame and the 8 sampled frames "
                                               "(yellow boxes, as the video model saw them)",
                                         columns=9, height=150, elem_id="rv-gallery",
                                         object_fit="contain", allow_preview=True)
                    clip = gr.Video(label="Play (annotated frames, 6 fps)", interactive=False,
                                    elem_id="rv-clip", height=260, loop=True)
                with gr.Column(scale=2):
                    obj = gr.Textbox(label="Object caption", lines=2, max_lines=6,
                                     elem_id="rv-object")
                    scene = gr.Textbox(label="Scene caption", lines=3, max_lines=8,
                                       elem_id="rv-scene")
                    video = gr.Textbox(label="Video caption (the long expression)", lines=4,
                                       max_lines=10, elem_id="rv-video")
                    short = gr.Textbox(label="Short expression (optional, yours)",
                                       placeholder="e.g. the red ball rolling left",
                                       elem_id="rv-short", max_length=200)
                    reason = gr.Radio(list(REJECT_REASONS), label="Reject reason",
                                      elem_id="rv-reason")
                    with gr.Row():
                        accept = gr.Button("Accept (A)", variant="primary", elem_id="rv-accept")
                        edit = gr.Button("Edit & accept (E)", variant="primary",
                                         elem_id="rv-edit")
                        reject = gr.Button("Reject (R)", variant="stop", elem_id="rv-reject")
                    with gr.Row():
                        prev = gr.Button("← Previous (K)", elem_id="rv-prev")
                        skip = gr.Button("Skip (S)", elem_id="rv-skip")
                        nxt = gr.Button("Next (J) →", elem_id="rv-next")
                    gr.Markdown(SHORTCUTS)
                    gr.Markdown(CRITERIA)
            history = gr.Dataframe(headers=_HISTORY_HEADERS, label="Decisions on this sample",
                                   interactive=False, elem_id="rv-history", wrap=True)

            outputs = [view, banner, progress, flt, frame, slider, clip, gallery, obj, scene,
                       video, short, reason, history]
            demo.load(self.on_load, [view, flt], outputs, api_name="load")
            nxt.click(self.on_next, [view, flt], outputs, api_name="next")
            prev.click(self.on_prev, [view, flt], outputs, api_name="prev")
            flt.input(self.on_filter, [view, flt], outputs, api_name="filter")
            form = [view, flt, obj, scene, video, short, reason]
            for button, action in ((accept, "accept"), (edit, "edit_accept"),
                                   (reject, "reject"), (skip, "skip")):
                button.click(_bind_action(self.decide, action), form, outputs,
                             api_name=action, concurrency_limit=None)
            slider.release(self.on_scrub, [slider, view], frame, api_name="scrub",
                           show_progress="hidden")
            slider.input(self.on_scrub, [slider, view], frame, show_progress="hidden",
                         api_visibility="private", trigger_mode="always_last")
            frame_prev.click(lambda i, v: self.on_step(i, v, -1), [slider, view],
                             [slider, frame], api_name="frame_prev", show_progress="hidden")
            frame_next.click(lambda i, v: self.on_step(i, v, +1), [slider, view],
                             [slider, frame], api_name="frame_next", show_progress="hidden")
        return demo

    def launch(self, host: str = "127.0.0.1", port: int | None = None,
               prevent_thread_lock: bool = False, quiet: bool = False) -> gr.Blocks:
        os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
        demo = self.build()
        demo.queue(default_concurrency_limit=8)
        demo.launch(
            server_name=host, server_port=port, share=False,
            auth=make_auth(self.users_file) if self.users_file else None,
            auth_message="Ref-SAV benchmark review: log in with your reviewer account.",
            allowed_paths=[str(media_dir(self.out_dir).resolve())],
            prevent_thread_lock=prevent_thread_lock, quiet=quiet, show_error=True,
            head=HEAD, css=CSS, theme=gr.themes.Soft(), ssr_mode=False,
        )
        return demo


def _bind_action(decide, action: str):
    """A handler with the action fixed (Gradio passes inputs positionally)."""

    def handler(view: dict, flt: str, obj: str, scene: str, video: str, short: str,
                reason: str | None, request: gr.Request) -> tuple:
        return decide(action, view, flt, obj, scene, video, short, reason, request)

    handler.__name__ = f"on_{action}"
    return handler


def _banner(body: str, notice: tuple[str, str] | None, css: str, raw: bool = False) -> str:
    """``body`` is escaped unless ``raw`` (then the caller escaped every inserted value)."""
    text = body if raw else _esc(body)
    out = f'<div class="{_esc(css)}">{text}</div>'
    if notice:
        kind, msg = notice
        out = f'<div class="rv-banner {_esc(kind)}" id="rv-notice">{_esc(msg)}</div>' + out
    return out


def serve(out_dir: str | Path, host: str = "127.0.0.1", port: int | None = None,
          users_file: str | Path | None = None) -> None:
    """Blocking: the ``refsav review`` command."""
    ReviewApp(out_dir, users_file).launch(host, port)


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
