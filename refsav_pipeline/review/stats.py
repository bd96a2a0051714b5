"""Agreement between reviewers, their accuracy on gold samples and their throughput, from
the decision log alone.

Throughput counts active time only: a gap between two of a reviewer's decisions longer than
``IDLE_GAP_S`` is a break and counts nothing (the decision after it starts a new stretch and is
not counted either, since when its work began is unknown). A rate is reported only over at
least ``MIN_ACTIVE_S`` of active time, so a burst of keys is not a rate.
"""

from __future__ import annotations

import math
from collections import defaultdict
from itertools import pairwise
from pathlib import Path

from pydantic import BaseModel

from refsav_pipeline.review.consensus import disputed_keys
from refsav_pipeline.review.select import load_benchmark
from refsav_pipeline.review.store import ACCEPTING, Decision, DecisionStore, GoldMark, Progress

IDLE_GAP_S = 300.0
"""A gap longer than this between two of a reviewer's decisions is a break: it counts nothing."""
MIN_ACTIVE_S = 600.0
"""Less active time than this gives no per-hour figure (a few quick keys are not a rate)."""
WILSON_Z = 1.96  # 95 % interval


def wilson_interval(correct: int, n: int, z: float = WILSON_Z) -> tuple[float, float] | None:
    """Wilson score interval of a proportion (``None`` without observations): unlike the
    normal approximation it stays inside [0, 1] and is honest for small ``n``."""
    if n == 0:
        return None
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


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


def krippendorff_alpha(units: list[list[str]]) -> float | None:
    """Krippendorff's alpha for nominal labels; each unit lists the labels it got (any number
    of raters, missing ratings allowed: units with fewer than two labels do not count).
    ``None`` when undefined (no pairable labels, or only one label value in use)."""
    coincidence: dict[tuple[str, str], float] = defaultdict(float)
    for labels in units:
        m = len(labels)
        if m < 2:
            continue
        for i, a in enumerate(labels):
            for j, b in enumerate(labels):
                if i != j:
                    coincidence[(a, b)] += 1 / (m - 1)
    totals: dict[str, float] = defaultdict(float)
    for (a, _), v in coincidence.items():
        totals[a] += v
    n = sum(totals.values())
    if n <= 1:
        return None
    observed = sum(v for (a, b), v in coincidence.items() if a != b)
    expected = sum(totals[a] * totals[b] for a in totals for b in totals if a != b)
    if expected == 0:
        return None
    return 1 - (n - 1) * observed / expected


class Agreement(BaseModel):
    """Agreement on accept vs reject over the designated double-review samples only."""

    double_review_samples: int  # designated in the selection
    doubly_reviewed: int  # of those, decided by two or more people
    agreements: int  # first two reviewers agree
    observed: float | None
    max_raters: int  # most reviewers on one sample
    kappa: float | None  # Cohen's kappa, first two reviewers per sample
    alpha: float | None  # Krippendorff's alpha, every reviewer
    measure: str  # "kappa" when no sample has more than two raters, else "alpha"
    value: float | None  # the reported figure (kappa or alpha)


class ReviewerStats(BaseModel):
    reviewer: str
    decisions: int
    accepted: int
    rejected: int
    edited: int
    skipped: int
    conflicts: int
    active_hours: float  # gaps of at most IDLE_GAP_S between decisions
    per_hour: float | None  # decisions ending an active gap, per active hour (None: too little)
    gold_checks: int = 0  # answers to gold samples (latest per sample)
    gold_correct: int = 0  # same verdict (accept vs reject) as the gold answer
    gold_accuracy: float | None = None
    gold_low: float | None = None  # 95 % Wilson interval of the accuracy
    gold_high: float | None = None


class ReviewStats(BaseModel):
    progress: Progress
    agreement: Agreement
    reviewers: list[ReviewerStats]


def agreement(decisions: list[Decision], current: dict[tuple, str],
              double: set[tuple]) -> Agreement:
    """``current``: sample key -> current version; ``double``: the designated double-review
    samples. Only their decisions on the current version count (skips and adjudications do
    not); each reviewer's latest decision is their label."""
    latest: dict[tuple, dict[str, str]] = defaultdict(dict)
    for d in decisions:
        if (d.action == "skip" or d.adjudicates or d.gold_check or d.key not in double
                or current.get(d.key) != d.sample_version):
            continue
        latest[d.key][d.reviewer] = "accept" if d.action in ACCEPTING else "reject"
    units = [list(by.values()) for by in latest.values() if len(by) >= 2]
    pairs = [(u[0], u[1]) for u in units]
    agree = sum(a == b for a, b in pairs)
    max_raters = max((len(u) for u in units), default=0)
    kappa, alpha = cohen_kappa(pairs), krippendorff_alpha(units)
    measure = "alpha" if max_raters > 2 else "kappa"
    return Agreement(double_review_samples=len(double), doubly_reviewed=len(pairs),
                     agreements=agree, observed=agree / len(pairs) if pairs else None,
                     max_raters=max_raters, kappa=kappa, alpha=alpha, measure=measure,
                     value=alpha if measure == "alpha" else kappa)


def active_time(ds: list[Decision], idle_gap: float = IDLE_GAP_S) -> tuple[float, int]:
    """(active seconds, decisions that end an active gap) of one reviewer's decisions."""
    gaps = [b.decided_ts - a.decided_ts for a, b in pairwise(sorted(ds, key=lambda d:
                                                                    d.decided_ts))]
    active = [g for g in gaps if g <= idle_gap]
    return sum(active), len(active)


def gold_accuracy(decisions: list[Decision], gold: dict[tuple, GoldMark]
                  ) -> dict[str, tuple[int, int]]:
    """reviewer -> (correct, checks): each reviewer's latest gold check per current gold
    sample, correct when its verdict (accept vs reject) is the gold answer's."""
    latest: dict[tuple[str, tuple], Decision] = {}
    for d in decisions:
        mark = gold.get(d.key)
        if (d.gold_check and d.action != "skip" and mark is not None
                and d.sample_version == mark.sample_version):
            latest[(d.reviewer, d.key)] = d
    out: dict[str, tuple[int, int]] = {}
    for (name, key), d in latest.items():
        right = (d.action in ACCEPTING) == (gold[key].answer.action in ACCEPTING)
        correct, n = out.get(name, (0, 0))
        out[name] = (correct + right, n + 1)
    return out


def throughput(decisions: list[Decision], idle_gap: float = IDLE_GAP_S,
               gold: dict[tuple, GoldMark] | None = None) -> list[ReviewerStats]:
    by_reviewer: dict[str, list[Decision]] = defaultdict(list)
    for d in decisions:
        by_reviewer[d.reviewer].append(d)
    accuracy = gold_accuracy(decisions, gold or {})
    out = []
    for name in sorted(by_reviewer):
        ds = by_reviewer[name]
        active, counted = active_time(ds, idle_gap)
        hours = active / 3600
        correct, checks = accuracy.get(name, (0, 0))
        interval = wilson_interval(correct, checks)
        out.append(ReviewerStats(
            reviewer=name, decisions=len(ds),
            accepted=sum(d.action in ACCEPTING for d in ds),
            rejected=sum(d.action == "reject" for d in ds),
            edited=sum(d.action == "edit_accept" for d in ds),
            skipped=sum(d.action == "skip" for d in ds),
            conflicts=sum(d.conflict for d in ds),
            active_hours=round(hours, 4),
            per_hour=round(counted / hours, 2) if active >= MIN_ACTIVE_S else None,
            gold_checks=checks, gold_correct=correct,
            gold_accuracy=correct / checks if checks else None,
            gold_low=interval[0] if interval else None,
            gold_high=interval[1] if interval else None))
    return out


def review_stats(out_dir: str | Path, reviewer: str = "") -> ReviewStats:
    store = DecisionStore.for_run(out_dir)
    samples = load_benchmark(out_dir)
    decisions = store.decisions()
    current = {s.key: s.sample_version for s in samples}
    double = {s.key for s in samples if s.double_review}
    disputed = disputed_keys(samples, decisions)
    return ReviewStats(progress=store.progress(reviewer, disputed=disputed),
                       agreement=agreement(decisions, current, double),
                       reviewers=throughput(decisions, gold=store.gold()))
