"""Agreement between reviewers and their throughput, from the decision log alone."""

from __future__ import annotations

from collections import defaultdict
from itertools import pairwise
from pathlib import Path

from pydantic import BaseModel

from refsav_pipeline.review.select import load_benchmark
from refsav_pipeline.review.store import ACCEPTING, Decision, DecisionStore, Progress

IDLE_CAP_S = 300.0
"""A gap longer than this between two decisions is a break: it counts as this much work."""


def cohen_kappa(pairs: list[tuple[str, str]]) -> float | None:
    """Cohen's kappa of two raters' labels; ``None`` when undefined (no pairs, or both raters
    used one and the same label throughout, so chance agreement is 1)."""
    n = len(pairs)
    if n == 0:
        return None
    labels = sorted({a for a, _ in pairs} | {b for _, b in pairs})
    observed = sum(a == b for a, b in pairs) / n
    expected = sum((sum(a == lab for a, _ in pairs) / n) * (sum(b == lab for _, b in pairs) / n)
                   for lab in labels)
    if expected >= 1.0:
        return None
    return (observed - expected) / (1 - expected)


class Agreement(BaseModel):
    doubly_reviewed: int  # samples with accept/reject decisions from two or more people
    agreements: int
    observed: float | None
    kappa: float | None  # Cohen's kappa on accept vs reject, first two reviewers per sample


class ReviewerStats(BaseModel):
    reviewer: str
    decisions: int
    accepted: int
    rejected: int
    edited: int
    skipped: int
    conflicts: int
    active_hours: float
    per_hour: float | None  # decisions after the first, per active hour


class ReviewStats(BaseModel):
    progress: Progress
    agreement: Agreement
    reviewers: list[ReviewerStats]


def agreement(decisions: list[Decision], current: dict[tuple, str]) -> Agreement:
    """``current``: sample key -> current version; only decisions on it count."""
    latest: dict[tuple, dict[str, Decision]] = defaultdict(dict)
    first_seen: dict[tuple, dict[str, int]] = defaultdict(dict)
    for d in decisions:
        if d.action == "skip" or current.get(d.key) != d.sample_version:
            continue
        latest[d.key][d.reviewer] = d
        first_seen[d.key].setdefault(d.reviewer, d.seq)
    pairs = []
    for key, by_reviewer in latest.items():
        if len(by_reviewer) < 2:
            continue
        a, b = sorted(by_reviewer, key=lambda r: first_seen[key][r])[:2]
        pairs.append(tuple("accept" if by_reviewer[r].action in ACCEPTING else "reject"
                           for r in (a, b)))
    agree = sum(a == b for a, b in pairs)
    return Agreement(doubly_reviewed=len(pairs), agreements=agree,
                     observed=agree / len(pairs) if pairs else None,
                     kappa=cohen_kappa(pairs))


def throughput(decisions: list[Decision], idle_cap: float = IDLE_CAP_S) -> list[ReviewerStats]:
    by_reviewer: dict[str, list[Decision]] = defaultdict(list)
    for d in decisions:
        by_reviewer[d.reviewer].append(d)
    out = []
    for name in sorted(by_reviewer):
        ds = sorted(by_reviewer[name], key=lambda d: d.decided_ts)
        active = sum(min(b.decided_ts - a.decided_ts, idle_cap) for a, b in pairwise(ds))
        hours = active / 3600
        out.append(ReviewerStats(
            reviewer=name, decisions=len(ds),
            accepted=sum(d.action in ACCEPTING for d in ds),
            rejected=sum(d.action == "reject" for d in ds),
            edited=sum(d.action == "edit_accept" for d in ds),
            skipped=sum(d.action == "skip" for d in ds),
            conflicts=sum(d.conflict for d in ds),
            active_hours=round(hours, 4),
            per_hour=round((len(ds) - 1) / hours, 2) if hours > 0 else None))
    return out


def review_stats(out_dir: str | Path, reviewer: str = "") -> ReviewStats:
    store = DecisionStore.for_run(out_dir)
    samples = load_benchmark(out_dir)
    decisions = store.decisions()
    current = {s.key: s.sample_version for s in samples}
    return ReviewStats(progress=store.progress(reviewer), agreement=agreement(decisions, current),
                       reviewers=throughput(decisions))
