"""What the page shows for one sample and one reviewer: a pure view-model, no Gradio, no store.

Every value inserted into HTML is escaped here; captions themselves only ever go into text
boxes. The ``shown`` token (key and version) is written into the page with the sample, and the
page sends it back with every action: that is how the server knows what the reviewer saw.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel

from refsav_pipeline.records import SampleKey
from refsav_pipeline.review.consensus import CAPTION_FIELDS, Consensus, per_reviewer, texts_of
from refsav_pipeline.review.media import SampleMedia
from refsav_pipeline.review.select import BenchmarkSample
from refsav_pipeline.review.store import Decision, Progress, SampleState

FIELD_LABELS = {"object_caption": "Object caption", "scene_caption": "Scene caption",
                "video_caption": "Video caption (the long expression)"}
HISTORY_HEADERS = ("#", "time (UTC)", "reviewer", "action", "reason", "edited", "short",
                   "conflict", "adjudication", "note")


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def shown_token(key: SampleKey, version: str) -> str:
    """What the page sends back with an action: ``video|type|id|version``."""
    return f"{key[0]}|{key[1]}|{key[2]}|{version}"


def parse_token(token: str | None) -> tuple[SampleKey, str] | None:
    parts = (token or "").split("|")
    if len(parts) != 4:
        return None
    try:
        return (parts[0], parts[1], int(parts[2])), parts[3]
    except ValueError:
        return None


def file_url(path: str | Path) -> str:
    """Gradio's URL for a file under the app's static paths (relative to the page)."""
    return "gradio_api/file=" + quote(str(path))


class SampleView(BaseModel):
    """Everything the page shows for one sample."""

    key: SampleKey
    version: str
    base_seq: int | None
    banner: str  # HTML, includes the shown token
    texts: dict[str, str]  # what the text boxes start with (the current consensus)
    labels: dict[str, str]  # text box labels (marking the reviewer's own edit)
    short: str
    note: str
    mine: str  # HTML: the reviewer's own earlier decision on a revisit
    compare: str  # HTML: both reviewers side by side, for an adjudicator
    adjudicating: bool  # a decision now settles a disagreement
    frames: list[str]
    tinted: list[str]
    start: int
    slider_label: str
    alt_prefix: str
    strip: str  # HTML: max-area frame and the 8 sampled frames, labels beside
    clip: str  # HTML video element or ""
    history: str  # HTML table


def progress_html(p: Progress, reviewer: str, role: str) -> str:
    mine_total = p.mine + p.my_queue
    extra = " (adjudicator)" if role == "adjudicator" else ""
    return (
        '<div class="rv-progress">'
        f'<span>Everyone: <progress value="{p.done}" max="{max(p.total, 1)}" '
        f'aria-label="samples decided by everyone"></progress> '
        f'<b>{p.done}</b> / {p.total} samples decided '
        f'({p.accepted} accepted, {p.rejected} rejected, {p.conflicts} with conflicts; '
        f'{p.reviews_done} / {p.reviews_needed} reviews incl. double review)</span>'
        f'<span>Me ({esc(reviewer)}{extra}): <progress value="{p.mine}" '
        f'max="{max(mine_total, 1)}" aria-label="samples decided by me"></progress> '
        f'<b>{p.mine}</b> decided, {p.my_queue} left for me</span></div>')


def empty_banner(message: str) -> str:
    return f'<div class="rv-banner rv-ok" id="rv-shown" data-shown="">{esc(message)}</div>'


def notice_html(kind: str, message: str, render: int) -> str:
    """The notice beside the buttons; ``render`` changes with every answer, so the page knows
    its action was handled (keys are ignored until then)."""
    cls = {"ok": "rv-ok", "warn": "rv-warn", "error": "rv-error"}.get(kind, "")
    role = "alert" if kind in ("warn", "error") else "status"
    return (f'<div class="rv-notice {cls}" id="rv-notice" role="{role}" '
            f'data-render="{render}">{esc(message)}</div>')


def main_frame_html(path: str | None, alt: str) -> str:
    if not path:
        return '<div class="rv-main rv-empty">no frame</div>'
    return (f'<img class="rv-main" src="{esc(file_url(path))}" alt="{esc(alt)}" '
            f'width="960">')


def strip_html(sample: BenchmarkSample, media: SampleMedia | None) -> str:
    """Thumbnails with their labels under them, never over the image."""
    if media is None:
        return ""
    items = [(media.max_area, f"max-area frame {sample.max_area_frame} (contour)")]
    items += [(path, label) for path, label in media.sampled]
    figures = "".join(
        f'<figure class="rv-thumb"><a href="{esc(file_url(path))}" target="_blank" '
        f'rel="noopener"><img src="{esc(file_url(path))}" alt="{esc(label)}, object boxed" '
        f'loading="lazy"></a><figcaption>{esc(label)}</figcaption></figure>'
        for path, label in items)
    return (f'<div class="rv-strip" role="group" aria-label="Max-area frame and the 8 '
            f'sampled frames (yellow boxes, as the video model saw them)">{figures}</div>')


def clip_html(media: SampleMedia | None) -> str:
    if media is None or not media.clip:
        return ""
    return (f'<video class="rv-clip" src="{esc(file_url(media.clip))}" controls loop muted '
            f'playsinline aria-label="annotated frames at 6 fps, object outlined"></video>')


def history_html(history: list[Decision]) -> str:
    if not history:
        return '<p class="rv-history-empty">No decisions on this sample yet.</p>'
    head = "".join(f'<th scope="col">{esc(h)}</th>' for h in HISTORY_HEADERS)
    rows = []
    for d in history:
        edited = ", ".join(f.split("_")[0] for f in CAPTION_FIELDS
                           if getattr(d, f"edited_{f}") is not None)
        cells = (d.seq, d.decided_at[:19].replace("T", " "), d.reviewer,
                 d.action.replace("_", " & "), d.reason or "", edited,
                 d.short_expression or "", "⚠ yes" if d.conflict else "",
                 "yes" if d.adjudicates else "", d.note or "")
        rows.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>")
    return (f'<table class="rv-history"><caption>Decisions on this sample</caption>'
            f'<thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>')


def compare_html(sample: BenchmarkSample, ds: list[Decision]) -> str:
    """The two reviewers' decisions side by side (their final texts, not just the edits)."""
    firsts = list(per_reviewer(ds).values())[:2]
    if len(firsts) < 2:
        return ""
    cols = []
    for d in firsts:
        texts = texts_of(sample, d)
        rows = [("decision", d.action.replace("_", " & ")), ("reason", d.reason or "")]
        rows += [(FIELD_LABELS[f], texts[f] if d.action != "reject" else "—")
                 for f in CAPTION_FIELDS]
        rows += [("short expression", d.short_expression or ""), ("note", d.note or "")]
        body = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in rows)
        cols.append(f'<section class="rv-side"><h3>{esc(d.reviewer)} (#{d.seq})</h3>'
                    f"<dl>{body}</dl></section>")
    return ('<div class="rv-compare"><h2>Disagreement: decide as adjudicator</h2>'
            f'<div class="rv-sides">{"".join(cols)}</div></div>')


def sample_view(sample: BenchmarkSample, total: int, state: SampleState | None,
                decisions: list[Decision], consensus: Consensus, reviewer: str, role: str,
                media: SampleMedia | None, media_error: str, lease_holder: str | None,
                base_seq: int | None) -> SampleView:
    """The view of ``sample`` for ``reviewer``: a revisit shows the text that will be exported
    (the consensus) with the reviewer's own edit marked; an adjudicator on a disputed sample
    gets both decisions side by side."""
    history = [d for d in decisions if d.sample_version == sample.sample_version]
    mine = [d for d in history if d.reviewer == reviewer and d.action != "skip"]
    disputed = consensus.status == "disputed"
    adjudicating = disputed and role == "adjudicator"
    lines = [f"<b>{esc(sample.video_id)}</b> · {esc(sample.masklet_type)} masklet "
             f"{sample.masklet_id} · {esc(sample.stratum)} · sample {sample.position + 1} of "
             f"{total}" + (" · <b>double review</b>" if sample.double_review else "")]
    who = ", ".join(state.reviewers) if state and state.reviewers else "nobody yet"
    lines.append(f"Status: <b>{esc(consensus.status)}</b> (decided by {esc(who)})"
                 + (f"; adjudicated by {esc(consensus.adjudicated_by)}"
                    if consensus.adjudicated_by else ""))
    css = "rv-banner"
    if lease_holder and lease_holder != reviewer:
        lines.append(f"⚠ {esc(lease_holder)} is reviewing this sample right now.")
        css += " rv-warn"
    if state and state.conflict:
        lines.append("⚠ This sample has conflicting decisions: see the history below.")
        css += " rv-warn"
    if disputed:
        lines.append("⚠ The two reviewers disagree: an adjudicator decides.")
        css += " rv-warn"
    if media_error:
        lines.append(f"⚠ {esc(media_error)}")
        css += " rv-warn"
    token = shown_token(sample.key, sample.sample_version)
    banner = (f'<div class="{css}" id="rv-shown" data-shown="{esc(token)}">'
              + "<br>".join(lines) + "</div>")

    texts = dict(consensus.texts) if not adjudicating else texts_of(sample, None)
    labels = dict(FIELD_LABELS)
    mine_html = ""
    if mine and not adjudicating:
        last = mine[-1]
        own = texts_of(sample, last)
        notes = []
        for f in CAPTION_FIELDS:
            if getattr(last, f"edited_{f}") is None:
                continue
            if own[f] == texts[f]:
                labels[f] = f"{FIELD_LABELS[f]} · your edit (will be exported)"
            else:
                labels[f] = f"{FIELD_LABELS[f]} · exported text (your edit differs)"
                notes.append(f"<li>your {esc(FIELD_LABELS[f].lower())}: "
                             f"<q>{esc(own[f])}</q></li>")
        mine_html = (f'<div class="rv-mine"><b>You decided:</b> '
                     f'{esc(last.action.replace("_", " & "))} (#{last.seq})'
                     + (f", reason “{esc(last.reason)}”" if last.reason else "")
                     + ". The boxes show the text that will be exported."
                     + (f"<ul>{''.join(notes)}</ul>" if notes else "") + "</div>")
    short = (mine[-1].short_expression or "") if mine else ""
    note = (mine[-1].note or "") if mine else ""

    if media is not None:
        start = (media.frames.index(sample.max_area_frame)
                 if sample.max_area_frame in media.frames else 0)
        frames, tinted = media.overlays, media.tinted or media.overlays
        slider_label = (f"Annotated frame ({len(frames)} at 6 fps; max-area frame "
                        f"{sample.max_area_frame} preselected)")
    else:
        start, frames, tinted, slider_label = 0, [], [], "Annotated frame"
    return SampleView(
        key=sample.key, version=sample.sample_version, base_seq=base_seq, banner=banner,
        texts=texts, labels=labels, short=short, note=note, mine=mine_html,
        compare=compare_html(sample, history) if adjudicating else "",
        adjudicating=adjudicating, frames=frames, tinted=tinted, start=start,
        slider_label=slider_label,
        alt_prefix=(f"{sample.video_id}, {sample.masklet_type} masklet {sample.masklet_id}: "
                    "the object outlined"),
        strip=strip_html(sample, media), clip=clip_html(media), history=history_html(history))


def frame_alt(view_alt: str, index: int, count: int, tinted: bool) -> str:
    return (f"{view_alt}{' and tinted' if tinted else ''}, annotated frame {index + 1} "
            f"of {count}")
