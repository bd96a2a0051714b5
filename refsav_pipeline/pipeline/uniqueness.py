"""Referring uniqueness: within one video, no two objects may share (nearly) one expression.

An expression that fits two objects of its video refers to neither, which defeats referring
segmentation. When every masklet of a video has its row, the video captions (the long
expression of the export's default) of its ``ok`` rows are compared pairwise:

- **similarity**: Jaccard similarity of the two captions' sets of word bigrams (lower-cased,
  punctuation dropped). 1.0 is the same text; the reference server's captions of two objects
  that differ only in colour score about 0.5; a caption re-worded in one word of sixty, ~0.9.
  Exact, not MinHash: a video has tens of objects, so all pairs cost microseconds.
- **near-duplicate**: similarity ≥ ``checks.similarity_threshold`` (0.7).

Each near-duplicate row is captioned again once, contrastively
(``captions.recaption_distinct``: the frames, its scene description and the descriptions it
was confused with). Then ``settle`` compares again: a re-captioned row still near-duplicate of
another ok row becomes ``rejected`` / ``ambiguous``; every ok row keeps its highest similarity
to another object of its video in ``max_similarity`` (the report's distribution).

Pure functions of the rows, in a fixed order, so the step is deterministic however the
masklets of a video were spread over the caption actors.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from refsav_pipeline.llm.config import AnswerChecksConfig
from refsav_pipeline.records import RefSavRow, SampleKey

AMBIGUOUS = "ambiguous"
_PUNCT = str.maketrans({c: " " for c in ".,;:!?\"()[]{}<>/\\|*#`~=+_—–-…“”‘’"})


def bigrams(text: str) -> frozenset[tuple[str, str]]:
    words = text.lower().translate(_PUNCT).split()
    if len(words) == 1:
        return frozenset({(words[0], "")})
    return frozenset(zip(words, words[1:], strict=False))


def similarity(a: str, b: str) -> float:
    """Jaccard similarity of the word-bigram sets of two texts (0: nothing shared, 1: same)."""
    x, y = bigrams(a), bigrams(b)
    if not x or not y:
        return 0.0
    return len(x & y) / len(x | y)


def _comparable(rows: Iterable[RefSavRow]) -> list[RefSavRow]:
    return sorted((r for r in rows if r.status == "ok" and r.video_caption),
                  key=lambda r: r.key)


def similarities(rows: Iterable[RefSavRow]) -> dict[SampleKey, list[tuple[float, RefSavRow]]]:
    """For each ok row of one video, every other ok row with their similarity, most similar
    first (ties in key order)."""
    ok = _comparable(rows)
    grams = [bigrams(r.video_caption or "") for r in ok]
    out: dict[SampleKey, list[tuple[float, RefSavRow]]] = {r.key: [] for r in ok}
    for i, a in enumerate(ok):
        for j in range(i + 1, len(ok)):
            union = len(grams[i] | grams[j])
            sim = len(grams[i] & grams[j]) / union if union else 0.0
            out[a.key].append((sim, ok[j]))
            out[ok[j].key].append((sim, a))
    for peers in out.values():
        peers.sort(key=lambda p: (-p[0], p[1].key))
    return out


def to_recaption(rows: Sequence[RefSavRow], may_recaption: set[SampleKey],
                 cfg: AnswerChecksConfig) -> list[tuple[RefSavRow, list[str]]]:
    """The rows of one video to caption again contrastively, each with the video captions of
    the (at most ``max_contrast_objects``) objects it is near-duplicate of. Only rows in
    ``may_recaption`` (captioned in this run, images at hand, not re-captioned yet)."""
    out = []
    for key, peers in similarities(rows).items():
        close = [p for s, p in peers if s >= cfg.similarity_threshold]
        if close and key in may_recaption:
            row = next(r for r in rows if r.key == key)
            if row.first_video_caption is None:
                out.append((row, [p.video_caption or "" for p in
                                  close[: cfg.max_contrast_objects]]))
    return out


def settle(rows: Sequence[RefSavRow], recaptioned: set[SampleKey],
           cfg: AnswerChecksConfig) -> list[RefSavRow]:
    """``rows`` of one video after the contrastive pass: ``max_similarity`` on every ok row,
    and rows in ``recaptioned`` still near-duplicate of another ok row ``rejected`` as
    ``ambiguous`` (same order as given)."""
    peers = similarities(rows)
    out = []
    for row in rows:
        close = peers.get(row.key)
        if not close:  # not ok, or the only ok object of its video
            out.append(row)
            continue
        best, other = close[0]
        update: dict[str, object] = {"max_similarity": round(best, 4)}
        if row.key in recaptioned and best >= cfg.similarity_threshold:
            update.update(
                status="rejected", error_kind=AMBIGUOUS, rejected_answer=row.video_caption,
                check_failures=[*row.check_failures, f"video:{AMBIGUOUS}"],
                error=f"video {row.video_id} masklet {row.masklet_id}: its video caption "
                      f"still matches {other.masklet_type} masklet {other.masklet_id}'s "
                      f"(similarity {best:.2f} ≥ {cfg.similarity_threshold})"
                      + (" after a contrastive re-caption" if row.first_video_caption else ""))
        out.append(row.model_copy(update=update))
    return out


def ambiguous_rounds(row: RefSavRow | None) -> int:
    """How often this object was already left ambiguous (a redone row's contrastive call is
    asked anew that many rounds on, since its earlier answers come from the cache)."""
    return 0 if row is None else row.check_failures.count(f"video:{AMBIGUOUS}")
