"""What the page shows for one sample and one reviewer: a pure view-model, no Gradio, no store.

The HTML is in Jinja2 templates (``templates/``) with autoescape on, so every value inserted
is text, never markup; captions themselves only ever go into text boxes. The ``shown`` token
(key and version) is written into the page with the sample, and the page sends it back with
every action: that is how the server knows what the reviewer saw.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, PackageLoader, StrictUndefined
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


_TEMPLATES = Environment(
    loader=PackageLoader("refsav_pipeline.review", "templates"),
    autoescape=True, undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
    keep_trailing_newline=False)


def render(name: str, **context: Any) -> str:
    """The template ``templates/<name>`` (autoescaped: every value becomes text)."""
    return _TEMPLATES.get_template(name).render(**context).strip()


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


_TEMPLATES.filters["file_url"] = file_url


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
    prefetch: list[str] = []  # images of the likely next sample, for the browser to preload


def progress_html(p: Progress, reviewer: str, role: str) -> str:
    return render("progress.html", p=p, reviewer=reviewer, role=role)


def empty_banner(message: str) -> str:
    return render("empty_banner.html", message=message)


def notice_html(kind: str, message: str, render_id: int) -> str:
    """The notice beside the buttons; ``render`` changes with every answer, so the page knows
    its action was handled (keys are ignored until then)."""
    cls = {"ok": "rv-ok", "warn": "rv-warn", "error": "rv-error"}.get(kind, "")
    role = "alert" if kind in ("warn", "error") else "status"
    return render("notice.html", cls=cls, role=role, message=message, render=render_id)


def main_frame_html(path: str | None, alt: str) -> str:
    return render("main_frame.html", path=path, alt=alt)


def strip_html(sample: BenchmarkSample, media: SampleMedia | None) -> str:
    """Thumbnails with their labels under them, never over the image."""
    if media is None:
        return ""
    items = [(media.max_area, f"max-area frame {sample.max_area_frame} (contour)")]
    items += [(path, label) for path, label in media.sampled]
    return render("strip.html", items=items)


def clip_html(media: SampleMedia | None) -> str:
    if media is None or not media.clip:
        return ""
    return render("clip.html", clip=media.clip)


def history_html(history: list[Decision]) -> str:
    rows = []
    for d in history:
        edited = ", ".join(f.split("_")[0] for f in CAPTION_FIELDS
                           if getattr(d, f"edited_{f}") is not None)
        rows.append((d.seq, d.decided_at[:19].replace("T", " "), d.reviewer,
                     d.action.replace("_", " & "), d.reason or "", edited,
                     d.short_expression or "", "⚠ yes" if d.conflict else "",
                     "yes" if d.adjudicates else "", d.note or ""))
    return render("history.html", headers=HISTORY_HEADERS, rows=rows)


def compare_html(sample: BenchmarkSample, ds: list[Decision]) -> str:
    """The two reviewers' decisions side by side (their final texts, not just the edits)."""
    firsts = list(per_reviewer(ds).values())[:2]
    if len(firsts) < 2:
        return ""
    sides = []
    for d in firsts:
        texts = texts_of(sample, d)
        rows = [("decision", d.action.replace("_", " & ")), ("reason", d.reason or "")]
        rows += [(FIELD_LABELS[f], texts[f] if d.action != "reject" else "—")
                 for f in CAPTION_FIELDS]
        rows += [("short expression", d.short_expression or ""), ("note", d.note or "")]
        sides.append({"reviewer": d.reviewer, "seq": d.seq, "rows": rows})
    return render("compare.html", sides=sides)


def sample_view(sample: BenchmarkSample, total: int, state: SampleState | None,
                decisions: list[Decision], consensus: Consensus, reviewer: str, role: str,
                media: SampleMedia | None, media_error: str, lease_holder: str | None,
                base_seq: int | None, prefetch: list[str] | None = None,
                gold_note: str = "") -> SampleView:
    """The view of ``sample`` for ``reviewer``: a revisit shows the text that will be exported
    (the consensus) with the reviewer's own edit marked; an adjudicator on a disputed sample
    gets both decisions side by side. ``gold_note``: the gold mark, for adjudicators only
    (a reviewer's gold check is shown as an undecided sample, unmarked)."""
    history = [d for d in decisions if d.sample_version == sample.sample_version]
    mine = [d for d in history if d.reviewer == reviewer and d.action != "skip"]
    disputed = consensus.status == "disputed"
    adjudicating = disputed and role == "adjudicator"
    who = ", ".join(state.reviewers) if state and state.reviewers else "nobody yet"
    warnings = []
    if lease_holder and lease_holder != reviewer:
        warnings.append(f"{lease_holder} is reviewing this sample right now.")
    if state and state.conflict:
        warnings.append("This sample has conflicting decisions: see the history below.")
    if disputed:
        warnings.append("The two reviewers disagree: an adjudicator decides.")
    if media_error:
        warnings.append(media_error)
    banner = render("banner.html", css="rv-banner rv-warn" if warnings else "rv-banner",
                    token=shown_token(sample.key, sample.sample_version), sample=sample,
                    total=total, status=consensus.status, who=who,
                    adjudicated_by=consensus.adjudicated_by, warnings=warnings,
                    prefetch=prefetch or [], gold_note=gold_note)

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
                notes.append((FIELD_LABELS[f].lower(), own[f]))
        mine_html = render("mine.html", action=last.action.replace("_", " & "), seq=last.seq,
                           reason=last.reason, notes=notes)
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
        strip=strip_html(sample, media), clip=clip_html(media), history=history_html(history),
        prefetch=prefetch or [])


def frame_alt(view_alt: str, index: int, count: int, tinted: bool) -> str:
    return (f"{view_alt}{' and tinted' if tinted else ''}, annotated frame {index + 1} "
            f"of {count}")
