"""What the decision log means for one sample: the text that will be exported, or a dispute.

One place for the rule, used by the export, the adjudication queue and the view of a revisit:
- an adjudicator's latest decision settles a sample outright;
- a double-review sample whose reviewers disagree (accept vs reject, or accepted texts that
  differ) is ``disputed`` until adjudicated, and is not exported;
- otherwise the status follows the latest accept/reject, and each text is the latest edit of it
  among accepting decisions (a second reviewer's plain accept keeps the first one's fix).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel

from refsav_pipeline.records import SampleKey
from refsav_pipeline.review.select import BenchmarkSample
from refsav_pipeline.review.store import ACCEPTING, Decision

CAPTION_FIELDS = ("object_caption", "scene_caption", "video_caption")
ConsensusStatus = Literal["pending", "accepted", "rejected", "disputed"]


class Consensus(BaseModel):
    status: ConsensusStatus
    texts: dict[str, str]  # the exported texts (pipeline text where nobody edited)
    short_expressions: list[str]
    reviewers: list[str]
    decision_seqs: list[int]
    adjudicated_by: str | None = None


def texts_of(sample: BenchmarkSample, decision: Decision | None) -> dict[str, str]:
    """The pipeline's texts with ``decision``'s edits applied."""
    texts = {f: getattr(sample, f) for f in CAPTION_FIELDS}
    if decision is not None:
        for f in CAPTION_FIELDS:
            edit = getattr(decision, f"edited_{f}")
            if edit is not None and edit.strip():
                texts[f] = edit.strip()
    return texts


def current_decisions(sample: BenchmarkSample, decisions: Iterable[Decision]) -> list[Decision]:
    """The accept/reject decisions on the sample's current version, in log order (gold
    checks, answers to a known sample, never count for the sample itself)."""
    return [d for d in decisions if d.key == sample.key and d.action != "skip"
            and not d.gold_check and d.sample_version == sample.sample_version]


def per_reviewer(ds: list[Decision]) -> dict[str, Decision]:
    """Each reviewer's latest own (not adjudicating) decision, in order of first decision."""
    latest: dict[str, Decision] = {}
    for d in ds:
        if not d.adjudicates:
            latest[d.reviewer] = d  # re-assigning keeps the key's first position
    return latest


def disagree(sample: BenchmarkSample, a: Decision, b: Decision) -> bool:
    """Accept vs reject, or both accepted with different final texts."""
    if (a.action in ACCEPTING) != (b.action in ACCEPTING):
        return True
    return a.action in ACCEPTING and texts_of(sample, a) != texts_of(sample, b)


def is_disputed(sample: BenchmarkSample, ds: list[Decision]) -> bool:
    """A double-review sample whose first two reviewers disagree, not yet adjudicated."""
    if not sample.double_review or any(d.adjudicates for d in ds):
        return False
    firsts = list(per_reviewer(ds).values())[:2]
    return len(firsts) == 2 and disagree(sample, *firsts)


def disputed_keys(samples: Iterable[BenchmarkSample], decisions: Iterable[Decision]
                  ) -> set[SampleKey]:
    """The samples whose consensus is ``disputed`` (only double-review samples can be)."""
    by_key: dict[SampleKey, list[Decision]] = defaultdict(list)
    for d in decisions:
        by_key[d.key].append(d)
    return {s.key for s in samples if s.double_review and s.key in by_key
            and consensus(s, by_key[s.key]).status == "disputed"}


def consensus(sample: BenchmarkSample, decisions: Iterable[Decision]) -> Consensus:
    ds = current_decisions(sample, decisions)
    shorts = list(dict.fromkeys(d.short_expression.strip() for d in ds
                                if d.short_expression and d.short_expression.strip()))
    base = dict(short_expressions=shorts, reviewers=sorted({d.reviewer for d in ds}),
                decision_seqs=[d.seq for d in ds])
    if not ds:
        return Consensus(status="pending", texts=texts_of(sample, None), **base)
    adjudications = [d for d in ds if d.adjudicates]
    if adjudications:
        final = adjudications[-1]
        status = "accepted" if final.action in ACCEPTING else "rejected"
        return Consensus(status=status, texts=texts_of(sample, final),
                         adjudicated_by=final.reviewer, **base)
    if is_disputed(sample, ds):
        return Consensus(status="disputed", texts=texts_of(sample, None), **base)
    texts = texts_of(sample, None)
    for d in ds:
        if d.action in ACCEPTING:
            for f in CAPTION_FIELDS:
                edit = getattr(d, f"edited_{f}")
                if edit is not None and edit.strip():
                    texts[f] = edit.strip()
    status = "accepted" if ds[-1].action in ACCEPTING else "rejected"
    return Consensus(status=status, texts=texts, **base)


def counts(sample: BenchmarkSample, decisions: Iterable[Decision], d: Decision) -> bool | None:
    """Whether decision ``d`` is what the log now exports for the sample: its verdict, and
    each text it edited (``None``: the sample is disputed, an adjudicator decides)."""
    c = consensus(sample, decisions)
    if c.status == "disputed":
        return None
    if d.action not in ACCEPTING:
        return c.status == "rejected"
    own = texts_of(sample, d)
    return c.status == "accepted" and all(
        c.texts[f] == own[f] for f in CAPTION_FIELDS if getattr(d, f"edited_{f}") is not None)
