"""What the review page's buttons do: navigation and decisions, calling the store.

A decision names what the reviewer saw: the page sends the key and version it displayed, and an
action whose key is not the one this session has open (the page had not yet shown the next
sample when the key was pressed), or whose version is no longer current, is refused with a
notice and records nothing. One session's actions run one at a time, and each computes the
samples' states once, however many things on the page it feeds.

Queue navigation: a reviewer in their queue holds one lease, on the sample on screen. Next
drops it and leases the next sample of the queue (never the same one again); Previous goes
back in the page's history and leases that sample if it still waits for this reviewer. Gold
samples (known answers, marked by an adjudicator) are mixed into queues at ``gold_rate``; the
page shows one as if nobody had decided it, and the answer is stored as a gold check.
"""

from __future__ import annotations

import random
import threading
from collections import defaultdict
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from refsav_pipeline.errors import RecordError
from refsav_pipeline.records import SampleKey
from refsav_pipeline.review.consensus import (
    CAPTION_FIELDS,
    consensus,
    counts,
    current_decisions,
    disputed_keys,
)
from refsav_pipeline.review.limits import first_too_long
from refsav_pipeline.review.media import MediaCache, SampleMedia
from refsav_pipeline.review.paths import media_dir
from refsav_pipeline.review.select import BenchmarkSample, load_benchmark
from refsav_pipeline.review.store import (
    LEASE_SECONDS,
    Decision,
    DecisionStore,
    NewDecision,
    NotGold,
    SampleState,
    Settled,
)
from refsav_pipeline.review.users import role_of
from refsav_pipeline.review.view import (
    SampleView,
    parse_token,
    progress_html,
    sample_view,
)

REJECT_REASONS = (
    "wrong object / not identifying",
    "wrong attribute (colour, shape, part)",
    "wrong motion or action",
    "ambiguous: fits several objects",
    "hallucinated content",
    "bad mask or unusable video",
    "other",
)

QUEUE = "pending (my queue)"
ADJUDICATION = "adjudication (my queue)"
FILTERS = (QUEUE, "accepted", "rejected", "conflicts", "disputed", "all")
REVIEWER_FILTER = "decided by: "
NoticeKind = Literal["ok", "warn", "error"]


class Form(BaseModel):
    """The editable part of the page when a decision button is pressed."""

    object_caption: str = ""
    scene_caption: str = ""
    video_caption: str = ""
    short: str = ""
    note: str = ""
    reason: str | None = None


class Session(BaseModel):
    """One open page: where it is, and exactly what it was last sent."""

    flt: str = QUEUE
    history: list[SampleKey] = Field(default_factory=list)
    pos: int = 0
    key: SampleKey | None = None
    version: str | None = None
    base_seq: int | None = None
    texts: dict[str, str] = Field(default_factory=dict)
    adjudicating: bool = False
    view: SampleView | None = None
    tint: bool = False
    render: int = 0
    seen_seq: int | None = None  # log position up to which others' decisions were reported
    checks: list[SampleKey] = Field(default_factory=list)  # gold samples served as checks


class Screen(BaseModel):
    """Everything an answer shows: the sample (``None``: nothing to show) and its frame."""

    view: SampleView | None
    empty_message: str = ""
    progress: str
    filters: list[str]
    flt: str
    notice: tuple[NoticeKind, str] | None
    render: int
    gold_button: str | None = None  # the gold button's label (adjudicators only)


class Refusal(BaseModel):
    """An action that changed nothing: only the notice beside the buttons is updated."""

    kind: NoticeKind
    message: str
    render: int


class ReviewActions:
    """The review of one run's benchmark selection, behind the page."""

    def __init__(self, out_dir: str | Path, users_file: str | Path | None = None,
                 sav_root: str | Path | None = None, lease_seconds: float = LEASE_SECONDS,
                 gold_rate: float = 0.0, rng: random.Random | None = None) -> None:
        if not 0.0 <= gold_rate <= 1.0:
            raise ValueError(f"the gold rate is a fraction between 0 and 1, got {gold_rate}")
        self.gold_rate = gold_rate
        self.rng = rng or random.Random()
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
        media_dir(out_dir).mkdir(parents=True, exist_ok=True)
        self._states: dict[SampleKey, SampleState] | None = None
        self._disputed: set[SampleKey] = set()
        self._states_seq = 0
        self._states_lock = threading.Lock()
        self._sessions: dict[str, Session] = {}
        self._locks: dict[str, threading.Lock] = defaultdict(threading.Lock)
        self._guard = threading.Lock()

    # -- sessions ------------------------------------------------------------------------

    def lock(self, session_id: str) -> threading.Lock:
        with self._guard:
            return self._locks[session_id]

    def session(self, session_id: str) -> Session:
        with self._guard:
            return self._sessions.setdefault(session_id, Session())

    def forget(self, session_id: str) -> None:
        with self._guard:
            self._sessions.pop(session_id, None)
            self._locks.pop(session_id, None)

    def role(self, reviewer: str) -> str:
        return role_of(self.users_file, reviewer)

    def states(self) -> list[SampleState]:
        """Every sample's state, in review order: read whole once, then only the samples
        decided since (by anyone, in any process), so an action costs the same at 200 or
        2,000 samples."""
        with self._states_lock:
            changed, latest = self.store.changed_since(self._states_seq)
            if self._states is None:
                self._states = {st.key: st for st in self.store.states()}
                self._disputed = disputed_keys(self.samples,
                                               self.store.decisions(double_only=True))
            else:
                for key in changed:
                    st = self.store.state(key)
                    if st is not None and key in self._states:
                        self._states[key] = st
                    sample = self.by_key.get(key)
                    if sample is not None and sample.double_review:
                        self._disputed.discard(key)
                        self._disputed |= disputed_keys([sample], self.store.decisions(key))
            self._states_seq = latest
            return list(self._states.values())

    # -- queues and filters --------------------------------------------------------------

    def disputed_keys(self) -> list[SampleKey]:
        """Double-review samples whose reviewers disagree and no adjudicator has settled, in
        review order (as of the latest ``states``)."""
        self.states()
        return [s.key for s in self.samples if s.key in self._disputed]

    def _filtered(self, flt: str, reviewer: str, states: list[SampleState]) -> list[SampleKey]:
        """The filter's samples; gold samples only for adjudicators (their answers would
        be in plain view)."""
        keys = self._matching(flt, reviewer, states)
        if self.role(reviewer) == "adjudicator":
            return keys
        gold = self.store.gold()
        return [k for k in keys if k not in gold]

    def _matching(self, flt: str, reviewer: str, states: list[SampleState]
                  ) -> list[SampleKey]:
        if flt == "accepted":
            keep = [s for s in states if s.status == "accepted"]
        elif flt == "rejected":
            keep = [s for s in states if s.status == "rejected"]
        elif flt == "conflicts":
            keep = [s for s in states if s.conflict]
        elif flt == "disputed":
            return self.disputed_keys()
        elif flt == ADJUDICATION:
            by_key = {s.key: s for s in states}
            return [k for k in self.disputed_keys() if reviewer not in by_key[k].reviewers]
        elif flt.startswith(REVIEWER_FILTER):
            who = flt[len(REVIEWER_FILTER):]
            keep = [s for s in states if who in s.reviewers]
        else:
            keep = states
        return [s.key for s in keep]

    def _next_key(self, flt: str, reviewer: str, after: int,
                  leaving: SampleKey | None = None) -> SampleKey | None:
        """The next sample for this filter after review position ``after`` (wrapping);
        never ``leaving`` (the sample Next moves away from)."""
        if flt == QUEUE:
            return self.store.claim_next(reviewer, after=after, ttl=self.lease_seconds,
                                         leaving=leaving)
        keys = [k for k in self._filtered(flt, reviewer, self.states()) if k != leaving]
        later = [k for k in keys if self.by_key[k].position > after]
        return (later or keys or [None])[0]

    def filter_choices(self, role: str, states: list[SampleState]) -> list[str]:
        names = sorted({r for s in states for r in s.reviewers})
        queues = [QUEUE, ADJUDICATION] if role == "adjudicator" else [QUEUE]
        return [*queues, *FILTERS[1:], *(REVIEWER_FILTER + n for n in names)]

    # -- answers -------------------------------------------------------------------------

    def screen(self, sess: Session, reviewer: str, notice: tuple[NoticeKind, str] | None = None
               ) -> Screen:
        """Render ``sess.key`` for ``reviewer``; the states are read once, here."""
        role = self.role(reviewer)
        states = self.states()
        news = self._news(sess, reviewer)
        if news:
            kind = "warn" if notice is None or notice[0] == "ok" else notice[0]
            text = " ".join([notice[1]] if notice else []) + " ⚠ Meanwhile: " + " ".join(news)
            notice = (kind, text.strip())
        sess.render += 1
        progress = self.store.progress(reviewer, states, self._disputed)
        gold = self.store.gold() if role == "adjudicator" else {}
        key = sess.key
        base = dict(progress=progress_html(progress, reviewer, role),
                    filters=self.filter_choices(role, states), flt=sess.flt, notice=notice,
                    render=sess.render,
                    gold_button=None if role != "adjudicator" or key is None
                    else "Unmark gold" if key in gold else "Mark as gold")
        if key is None:
            sess.version, sess.view, sess.texts, sess.adjudicating = None, None, {}, False
            empty = ("Nothing here: your queue is empty, thank you!" if sess.flt == QUEUE
                     else f"Nothing here: no sample matches '{sess.flt}'.")
            return Screen(view=None, empty_message=empty, **base)
        s = self.by_key[key]
        check = key in sess.checks  # a gold check looks like a sample nobody has decided
        decisions = [] if check else self.store.decisions(key)
        state = None if check else next((x for x in states if x.key == key), None)
        try:
            media: SampleMedia | None = self.media.get(s, self.by_video[s.video_id])
            media_error = ""
        except (RecordError, OSError, RuntimeError, ValueError) as exc:
            media, media_error = None, f"media unavailable: {exc}"
        base_seq = max((d.seq for d in decisions if d.action != "skip"), default=None)
        mark = gold.get(key)
        gold_note = "" if mark is None else (
            f"★ Gold sample: known answer {_label(mark.answer)}"
            + (f" ({mark.answer.reason})" if mark.answer.reason else "")
            + f", from {mark.marked_by}'s decision #{mark.answer.seq}.")
        view = sample_view(s, len(self.samples), state, decisions, consensus(s, decisions),
                           reviewer, role, media, media_error,
                           None if check else self.store.lease_holder(key), base_seq,
                           self._prefetch(sess, reviewer, s), gold_note)
        sess.version, sess.base_seq, sess.texts = s.sample_version, base_seq, dict(view.texts)
        sess.adjudicating, sess.view = view.adjudicating, view
        return Screen(view=view, **base)

    def _prefetch(self, sess: Session, reviewer: str, current: BenchmarkSample) -> list[str]:
        """Images of the sample the page will most likely show next, for the browser to load
        while the reviewer looks at this one (rendered in the background if not yet)."""
        if sess.flt == QUEUE:
            key = self.store.peek_next(reviewer, current.key, after=current.position)
        elif sess.pos + 1 < len(sess.history):
            key = sess.history[sess.pos + 1]
        else:
            key = self._next_key(sess.flt, reviewer, current.position)
        if key is None or key == current.key or key not in self.by_key:
            return []
        nxt = self.by_key[key]
        media = self.media.cached(key)
        if media is None:
            self.media.render_later(nxt, self.by_video[nxt.video_id])
            return []
        start = (media.frames.index(nxt.max_area_frame)
                 if nxt.max_area_frame in media.frames else 0)
        return [*media.overlays[start:start + 1], media.max_area,
                *(path for path, _ in media.sampled)]

    def _news(self, sess: Session, reviewer: str) -> list[str]:
        """Decisions of others, since the page last heard, that made one of this reviewer's
        decisions not count (or disputed): said once, so nobody's work is overridden
        silently."""
        changed, latest = self.store.changed_since(sess.seen_seq or 0)
        if sess.seen_seq is None:  # a new page: from now on
            sess.seen_seq = latest
            return []
        since, sess.seen_seq = sess.seen_seq, latest
        out = []
        for key in changed:
            sample = self.by_key.get(key)
            if sample is None:
                continue
            ds = self.store.decisions(key)
            cur = current_decisions(sample, ds)
            mine = [d for d in cur if d.reviewer == reviewer]
            later = [d for d in cur if mine and d.seq > max(mine[-1].seq, since)
                     and d.reviewer != reviewer]
            if not later:
                continue
            verdict, other, own = counts(sample, ds, mine[-1]), later[-1], mine[-1]
            where = f"{key[0]} {key[1]} {key[2]}"
            if verdict is False:
                out.append(f"{other.reviewer}'s later {_label(other)} (#{other.seq}) on "
                           f"{where} replaced your {_label(own)} (#{own.seq}); theirs counts.")
            elif verdict is None:
                out.append(f"{other.reviewer} decided {where} differently from your "
                           f"{_label(own)} (#{own.seq}); an adjudicator decides.")
        return out

    def _outcome(self, sample: BenchmarkSample, decision: Decision, label: str
                 ) -> tuple[NoticeKind, str]:
        """The notice for a recorded decision, from what the log now exports, so it always
        says what the export and ``stats`` will say."""
        if decision.action == "skip" or decision.gold_check:  # a check says nothing more
            return "ok", f"Saved: {label}."
        ds = self.store.decisions(sample.key)
        verdict = counts(sample, ds, decision)
        other = next((d for d in ds if d.seq == decision.conflicts_with), None)
        if verdict is None:
            return "warn", (f"⚠ Saved: {label}, but the other reviewer decided differently: "
                            "this double-review sample now waits for an adjudicator.")
        if not verdict:
            return "warn", (f"⚠ Saved: {label}, but it does not decide the export; see the "
                            "history of this sample.")
        if decision.conflict and other is not None:
            return "warn", (f"⚠ Conflict: your {label} was recorded after {other.reviewer}'s "
                            f"'{other.action}' (#{other.seq}), made after you opened it. "
                            "Yours is the latest and counts; theirs stays in the history "
                            "(see the 'conflicts' filter).")
        if decision.conflict:
            return "warn", (f"⚠ Conflict: your {label} was recorded, but the sample changed "
                            "after you opened it (new captions).")
        return "ok", f"Saved: {label}."

    def open(self, session_id: str, reviewer: str, flt: str | None = None) -> Screen:
        with self.lock(session_id):
            sess = self.session(session_id)
            sess.flt = flt or sess.flt or QUEUE
            if sess.flt != QUEUE:
                self.store.release(reviewer)
            key = self._next_key(sess.flt, reviewer, -1)
            sess.history, sess.pos, sess.key = ([key] if key else []), 0, key
            return self.screen(sess, reviewer)

    def move(self, session_id: str, reviewer: str, step: int) -> Screen:
        """Next (``step`` > 0) or Previous, in every filter; a notice when there is nowhere
        to go, so a key never does nothing silently."""
        with self.lock(session_id):
            sess = self.session(session_id)
            before = sess.key
            self._step(sess, reviewer, step, stay=True)
            notice: tuple[NoticeKind, str] | None = None
            if sess.key == before:
                notice = ("warn", "No earlier sample in this tab's history." if step < 0
                          else "No other sample in your queue." if sess.flt == QUEUE
                          else f"No other sample in '{sess.flt}'.")
            elif sess.flt == QUEUE and sess.key is not None:
                self._hold(reviewer, sess.key)
            return self.screen(sess, reviewer, notice)

    def _hold(self, reviewer: str, key: SampleKey) -> None:
        """Lease a sample gone back to in the queue, if it still waits for this reviewer."""
        st = next((x for x in self.states() if x.key == key), None)
        if st is not None and reviewer not in st.reviewers and len(st.reviewers) < st.needs:
            self.store.lease(reviewer, key, ttl=self.lease_seconds)

    def _step(self, sess: Session, reviewer: str, step: int, fresh: bool = False,
              stay: bool = False) -> None:
        """Move in the page's history, or on to the filter's next sample (``fresh``: from
        its start); ``stay``: keep the current sample when there is no other."""
        if step < 0:
            sess.pos = max(sess.pos - 1, 0)
            key = sess.history[sess.pos] if sess.history else None
        elif not fresh and sess.pos + 1 < len(sess.history):
            sess.pos += 1
            key = sess.history[sess.pos]
        else:
            after = self.by_key[sess.key].position if sess.key and not fresh else -1
            nxt = self._next_key(sess.flt, reviewer, after, leaving=sess.key if stay else None)
            if nxt is not None or not stay:
                self._go(sess, nxt)
            return
        sess.key = (str(key[0]), str(key[1]), int(key[2])) if key else None

    @staticmethod
    def _go(sess: Session, key: SampleKey | None) -> None:
        """Open ``key`` as a new step after the current one in the page's history."""
        if key is not None:
            sess.history = [*sess.history[: sess.pos + 1], key]
            sess.pos = len(sess.history) - 1
        sess.key = key

    def decide(self, session_id: str, reviewer: str, action: str, shown: str | None,
               form: Form) -> Screen | Refusal:
        """Record ``action`` on the sample the page showed (``shown``), then open the next."""
        with self.lock(session_id):
            sess = self.session(session_id)

            def refuse(kind: NoticeKind, message: str) -> Refusal:
                sess.render += 1
                return Refusal(kind=kind, message=message, render=sess.render)

            seen = parse_token(shown)
            if sess.key is None or sess.version is None:
                return refuse("warn", "Not recorded: no sample is open.")
            check = sess.key in sess.checks
            if seen is None or seen != (sess.key, sess.version):
                what = (f"{seen[0][0]} {seen[0][1]} {seen[0][2]}" if seen else "nothing")
                return refuse("warn", f"Not recorded: the key was pressed on {what}, but the "
                              f"page had already moved on to {sess.key[0]} {sess.key[1]} "
                              f"{sess.key[2]}. Look at this sample and decide again.")
            sample = self.by_key[sess.key]
            if sample.sample_version != sess.version:
                return refuse("warn", "Not recorded: this sample changed (new captions) since "
                              "it was shown. Reload the page.")
            if action == "reject" and not form.reason:
                return refuse("error", "Choose a reject reason first (keys 1–7), then reject.")
            if form.reason is not None and form.reason not in REJECT_REASONS:
                return refuse("error", "Unknown reject reason: choose one of the list.")
            given = {f: getattr(form, f) for f in CAPTION_FIELDS}
            edits = {f: (v or "").strip() for f, v in given.items()
                     if (v or "").strip() != (sess.texts.get(f) or "").strip()}
            short, note = (form.short or "").strip() or None, (form.note or "").strip() or None
            too_long = first_too_long({**edits, "short_expression": short, "note": note})
            if too_long:
                return refuse("error", f"Not recorded: {too_long}")
            if action in ("accept", "edit_accept"):
                if any(not v for v in edits.values()):
                    return refuse("error", "A caption is empty: write it, or reject the "
                                  "sample.")
                # text typed and then plain-accepted is still an edit: never drop it
                action = "edit_accept" if edits else "accept"
            keep_edits = action in ("accept", "edit_accept", "reject")
            # edits are relative to what was shown; the log stores them against the pipeline
            # text, so a revisit that keeps the consensus text stores no spurious edit
            stored = {f: (t if t != getattr(sample, f) else None) for f, t in edits.items()}
            new = NewDecision(
                video_id=sess.key[0], masklet_type=sess.key[1], masklet_id=sess.key[2],
                sample_version=sess.version, reviewer=reviewer, action=action,
                reason=form.reason if action == "reject" else None,
                edited_object_caption=stored.get("object_caption") if keep_edits else None,
                edited_scene_caption=stored.get("scene_caption") if keep_edits else None,
                edited_video_caption=stored.get("video_caption") if keep_edits else None,
                short_expression=short, note=note, base_seq=sess.base_seq,
                adjudicates=action != "skip" and not check
                and self.role(reviewer) == "adjudicator"
                and (sess.adjudicating or self._settled(sample)), gold_check=check)
            # now and then the next sample of the queue is a gold sample (never announced)
            gold_next = sess.flt == QUEUE and self.rng.random() < self.gold_rate
            try:
                if sess.flt == QUEUE and not gold_next:  # decision and next lease: one commit
                    decision, claimed = self.store.record_and_claim(
                        new, after=sample.position, ttl=self.lease_seconds)
                else:
                    decision, claimed = self.store.record(new), None
                    if gold_next:
                        claimed = self.store.pick_gold(reviewer)
                        if claimed is not None:
                            sess.checks.append(claimed)
                        else:
                            claimed = self.store.claim_next(reviewer, after=sample.position,
                                                            ttl=self.lease_seconds)
            except Settled as exc:
                a = exc.adjudication
                return refuse("warn", f"Not recorded: {a.reviewer} adjudicated this sample "
                              f"({_label(a)}, #{a.seq}) and the adjudication stands. Your "
                              "text is still in the boxes; to change it, ask an adjudicator.")
            key = sess.key
            label = (f"{_label(decision)} #{decision.seq} on {key[0]} {key[1]} {key[2]}"
                     + (" (adjudication)" if decision.adjudicates else ""))
            notice = self._outcome(sample, decision, label)
            if sess.flt == QUEUE:
                self._go(sess, claimed)
            else:
                self._step(sess, reviewer, +1, fresh=sess.flt == ADJUDICATION)
            return self.screen(sess, reviewer, notice)

    def mark_gold(self, session_id: str, reviewer: str) -> Screen | Refusal:
        """An adjudicator marks the sample on screen gold, its known answer their own latest
        decision on it; on a gold sample the same button removes the mark."""
        with self.lock(session_id):
            sess = self.session(session_id)

            def refuse(kind: NoticeKind, message: str) -> Refusal:
                sess.render += 1
                return Refusal(kind=kind, message=message, render=sess.render)

            if self.role(reviewer) != "adjudicator":
                return refuse("error", "Only adjudicators mark gold samples.")
            if sess.key is None or sess.version is None:
                return refuse("warn", "No sample is open.")
            key, where = sess.key, f"{sess.key[0]} {sess.key[1]} {sess.key[2]}"
            if key in self.store.gold():
                self.store.mark_gold(key, sess.version, reviewer, active=False)
                return self.screen(sess, reviewer, ("ok", f"Gold mark removed from {where}."))
            try:
                mark = self.store.mark_gold(key, sess.version, reviewer)
            except NotGold:
                return refuse("warn", "Not marked: accept or reject this sample first; the "
                              "gold answer is your own decision.")
            answer = mark.answer if mark else None
            what = (_label(answer) + (f" ({answer.reason})" if answer.reason else "")
                    if answer else "?")
            return self.screen(sess, reviewer, ("ok", f"Marked {where} as gold: known answer "
                                                f"{what}."))

    def _settled(self, sample: BenchmarkSample) -> bool:
        """An adjudicator has decided the current version (then only adjudicators decide)."""
        return any(d.adjudicates for d in current_decisions(sample,
                                                            self.store.decisions(sample.key)))

    def frame(self, session_id: str, index: float, tint: bool) -> tuple[int, str | None, str]:
        """(index, image path, alt text) of annotated frame ``index`` of the open sample."""
        sess = self.session(session_id)
        sess.tint = bool(tint)
        view = sess.view
        if view is None or not view.frames:
            return 0, None, ""
        frames = view.tinted if sess.tint else view.frames
        i = min(max(int(index or 0), 0), len(frames) - 1)
        return i, frames[i], view.alt_prefix


def _label(d: Decision) -> str:
    return d.action.replace("_", " & ")
