"""The report's quality section, as data: what the answer checks and the referring-uniqueness
step did in a run (docs/quality.md).

Counts of failed answers per check kind and call (healed by a retry or not), rejected rows by
kind, examples of rejected answers, and the distribution of each object's highest similarity
to another object of its video. Computed from the rows alone (``check_failures``,
``rejected_answer``, ``max_similarity``, ``first_video_caption``), so the numbers of a run are
the same whoever renders them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel

EXAMPLE_CHARS = 240
EXAMPLES_PER_KIND = 2


class QualityExample(BaseModel):
    kind: str
    video_id: str
    masklet_id: int
    answer: str  # the rejected answer, shortened
    error: str


class QualitySummary(BaseModel):
    failed_answers: dict[str, dict[str, int]]  # call -> check kind -> answers
    rejected_by_kind: dict[str, int]
    healed_rows: int  # ok rows that had at least one answer fail a check first
    recaptioned: int  # rows given a contrastive video caption
    recaptioned_ok: int  # … of which ended ok (distinct)
    examples: list[QualityExample]
    similarity_ok: list[float]  # max_similarity of ok rows
    similarity_rejected: list[float]  # … of rows rejected as ambiguous


def quality_summary(rows: Iterable[Mapping[str, Any]]) -> QualitySummary:
    """The quality numbers of a run's rows (dicts with the ``records.ROW_SCHEMA`` columns)."""
    failed: dict[str, Counter[str]] = {}
    rejected: Counter[str] = Counter()
    examples: list[QualityExample] = []
    shown: Counter[str] = Counter()
    healed = recaptioned = recaptioned_ok = 0
    sim_ok: list[float] = []
    sim_rejected: list[float] = []
    for r in rows:
        entries = list(r.get("check_failures") or [])
        for entry in entries:
            call, _, kind = entry.partition(":")
            failed.setdefault(call, Counter())[kind] += 1
        status = r["status"]
        if status == "ok" and entries:
            healed += 1
        if r.get("first_video_caption") is not None:
            recaptioned += 1
            recaptioned_ok += status == "ok"
        sim = r.get("max_similarity")
        if status == "rejected":
            kind = r.get("error_kind") or "-"
            rejected[kind] += 1
            if sim is not None and kind == "ambiguous":
                sim_rejected.append(float(sim))
            if shown[kind] < EXAMPLES_PER_KIND:
                shown[kind] += 1
                answer = r.get("rejected_answer")
                examples.append(QualityExample(
                    kind=kind, video_id=r["video_id"], masklet_id=r["masklet_id"],
                    answer="(null)" if answer is None else _short(answer),
                    error=_short(r.get("error") or "")))
        elif status == "ok" and sim is not None:
            sim_ok.append(float(sim))
    return QualitySummary(
        failed_answers={c: dict(k.most_common()) for c, k in sorted(failed.items())},
        rejected_by_kind=dict(rejected.most_common()), healed_rows=healed,
        recaptioned=recaptioned, recaptioned_ok=recaptioned_ok,
        examples=sorted(examples, key=lambda e: e.kind), similarity_ok=sim_ok,
        similarity_rejected=sim_rejected)


def _short(text: str) -> str:
    return text if len(text) <= EXAMPLE_CHARS else text[:EXAMPLE_CHARS] + "…"


def plot_similarity(q: QualitySummary, threshold: float, path: Path) -> Path | None:
    """Histogram of each object's highest similarity to another object of its video, ok and
    ambiguous rows stacked, with the near-duplicate threshold; None without data."""
    if not q.similarity_ok and not q.similarity_rejected:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 2.8))
    bins = [i / 20 for i in range(21)]
    ax.hist([q.similarity_ok, q.similarity_rejected], bins=bins, stacked=True,
            color=["#2e7d32", "#f9a825"], label=["ok", "rejected: ambiguous"])
    ax.axvline(threshold, color="#c62828", linestyle="--", label=f"threshold {threshold:g}")
    ax.set_xlabel("highest similarity to another object of the video (word-bigram Jaccard)")
    ax.set_ylabel("objects")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
