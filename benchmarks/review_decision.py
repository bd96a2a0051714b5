"""Server-side time per review decision at 2,000 benchmark samples: the previous handler's
store calls vs ``ReviewActions.decide`` (one states read per action).

Why: five reviewers press a key every few seconds; the server must answer each decision well
under the time a person takes to look. The previous handler read every sample's state through
a query with five correlated sub-selects per sample, and did so three times per click
(progress, filter choices, the opened sample), with a new connection per query. Now one
commit holds the decision and the next lease, and each action re-reads only the samples
decided since the previous one. This builds a 2,000-sample selection with
1,500 samples already decided (10% double review), then times N decisions each way on its own
copy of the same database, with media already cached (as after the first visit).

    .venv/bin/python benchmarks/review_decision.py [--samples 2000 --decided 1500 --n 60] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from refsav_pipeline.review.actions import Form, ReviewActions
from refsav_pipeline.review.media import MediaCache, SampleMedia, object_dir
from refsav_pipeline.review.paths import decisions_path
from refsav_pipeline.review.select import BenchmarkSample, write_selection
from refsav_pipeline.review.store import DecisionStore, NewDecision
from refsav_pipeline.review.view import shown_token

REVIEWERS = ("alice", "bob", "carol", "dave", "erin")

# the previous release's state query: five correlated sub-selects per sample
_OLD_MATCH = ("d.video_id = s.video_id AND d.masklet_type = s.masklet_type "
              "AND d.masklet_id = s.masklet_id AND d.sample_version = s.sample_version "
              "AND d.action != 'skip'")
OLD_STATE_SQL = f"""
SELECT s.video_id, s.masklet_type, s.masklet_id, s.sample_version, s.position, s.needs,
       (SELECT d.action FROM decisions d WHERE {_OLD_MATCH} ORDER BY d.seq DESC LIMIT 1),
       (SELECT d.seq FROM decisions d WHERE {_OLD_MATCH} ORDER BY d.seq DESC LIMIT 1),
       (SELECT COUNT(DISTINCT d.reviewer) FROM decisions d WHERE {_OLD_MATCH}),
       (SELECT group_concat(DISTINCT d.reviewer) FROM decisions d WHERE {_OLD_MATCH}),
       (SELECT MAX(d.conflict) FROM decisions d WHERE {_OLD_MATCH})
FROM samples s
"""


def build(root: Path, n: int, decided: int) -> tuple[Path, list[BenchmarkSample]]:
    out = root / "run"
    samples = [BenchmarkSample(
        video_id=f"bench{i // 4:05d}", masklet_type="manual", masklet_id=i % 4,
        masklet_index=i % 4, video_path=f"v/bench{i // 4:05d}.mp4",
        anno_path=f"v/bench{i // 4:05d}_manual.json", height=480, width=848,
        video_frame_count=481, size_bucket="medium", position=i, stratum="manual/medium",
        max_area_frame=0, max_area=1000, sampled_frames=list(range(0, 64, 8)), bbox=None,
        object_caption=f"object {i}", scene_caption=f"scene {i}", video_caption=f"video {i}",
        config_fingerprint="bench", pipeline_version="bench", sample_version=f"v{i:05d}",
        double_review=i % 10 == 0) for i in range(n)]
    write_selection(out, samples, seed=0, count=n)
    for s in samples:  # media as cached after a first visit
        d = object_dir(out, s.key)
        d.mkdir(parents=True)
        frames = [str(d / f"outline_{k:05d}.jpg") for k in range(0, 96, 4)]
        (d / "media.json").write_text(SampleMedia(
            frames=list(range(0, 96, 4)), overlays=frames, tinted=frames,
            sampled=[(str(d / f"sampled_{k:05d}.jpg"), f"{k}") for k in range(8)],
            max_area=str(d / "max_area.jpg"), max_area_frame=0).model_dump_json())
    DecisionStore.for_run(out)
    rows = []
    t = 1.7e9
    for s in samples[:decided]:
        for r in REVIEWERS[: 2 if s.double_review else 1]:
            t += 1
            rows.append((s.video_id, s.masklet_type, s.masklet_id, s.sample_version, r,
                         "2024-01-01T00:00:00", t, "accept" if s.position % 7 else "reject",
                         None if s.position % 7 else "other"))
    conn = sqlite3.connect(decisions_path(out))
    with conn:
        conn.executemany(
            "INSERT INTO decisions (video_id, masklet_type, masklet_id, sample_version, "
            "reviewer, decided_at, decided_ts, action, reason) VALUES (?,?,?,?,?,?,?,?,?)",
            rows)
    conn.close()
    return out, samples


class PerCallStore(DecisionStore):
    """The previous store's connection handling: a new connection for every operation."""

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=30000")
            yield conn
        finally:
            conn.close()


def old_way(out: Path, samples: list[BenchmarkSample], n: int) -> list[float]:
    """The previous handler's store calls per decision (queue filter, media cached)."""
    store = PerCallStore(decisions_path(out))
    media = MediaCache(out, sav_root=out)
    by_key = {s.key: s for s in samples}
    reviewer = "frank"
    key = store.claim_next(reviewer)
    times = []
    for _ in range(n):
        assert key is not None
        s = by_key[key]
        base = store.latest_seq(key)
        start = time.perf_counter()
        store.record(NewDecision(video_id=s.video_id, masklet_type=s.masklet_type,
                                 masklet_id=s.masklet_id, sample_version=s.sample_version,
                                 reviewer=reviewer, action="accept", base_seq=base))
        key = (store.claim_next(reviewer, after=s.position) or store.claim_next(reviewer))
        assert key is not None
        with store._connect() as conn:  # the old progress(): states() plus the skips
            conn.execute(OLD_STATE_SQL + " ORDER BY s.position").fetchall()
            conn.execute(
                "SELECT DISTINCT d.video_id, d.masklet_type, d.masklet_id FROM decisions d "
                "JOIN samples s USING (video_id, masklet_type, masklet_id) "
                "WHERE d.reviewer = ? AND d.action = 'skip' "
                "AND d.sample_version = s.sample_version", (reviewer,)).fetchall()
            conn.execute(OLD_STATE_SQL + " ORDER BY s.position").fetchall()  # filter choices
            conn.execute(OLD_STATE_SQL + " WHERE s.video_id = ? AND s.masklet_type = ? "
                         "AND s.masklet_id = ?", key).fetchone()  # state(key)
        store.latest_seq(key)
        store.decisions(key)
        nxt = by_key[key]
        media.get(nxt, [nxt])
        store.lease_holder(key)
        times.append(time.perf_counter() - start)
    return times


def new_way(out: Path, n: int) -> list[float]:
    actions = ReviewActions(out, None, sav_root=out)
    reviewer = "frank"
    screen = actions.open("bench", reviewer)
    times = []
    for _ in range(n):
        view = screen.view
        assert view is not None
        token = shown_token(view.key, view.version)
        start = time.perf_counter()
        screen = actions.decide("bench", reviewer, "accept", token, Form(**view.texts))
        times.append(time.perf_counter() - start)
        assert getattr(screen, "view", None) is not None, screen
    return times


def summary(times: list[float]) -> dict:
    ms = sorted(t * 1000 for t in times)
    return {"mean_ms": round(statistics.fmean(ms), 2), "median_ms": round(ms[len(ms) // 2], 2),
            "p90_ms": round(ms[int(len(ms) * 0.9)], 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--decided", type=int, default=1500)
    ap.add_argument("--n", type=int, default=60, help="decisions timed each way")
    ap.add_argument("--json", action="store_true", help="print JSON results only")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="review-bench-") as tmp:
        root = Path(tmp)
        out, samples = build(root, args.samples, args.decided)
        copy = root / "copy"
        shutil.copytree(out, copy)
        old = summary(old_way(copy, samples, args.n))
        new = summary(new_way(out, args.n))
    res = {"samples": args.samples, "decided": args.decided, "decisions_timed": args.n,
           "old": old, "new": new,
           "ratio_old_over_new_median": round(old["median_ms"] / new["median_ms"], 2)}
    if args.json:
        print(json.dumps(res))
        return
    print(f"{'':<10}{'mean ms':>10}{'median ms':>11}{'p90 ms':>9}")
    for name in ("old", "new"):
        r = res[name]
        print(f"{name:<10}{r['mean_ms']:>10.1f}{r['median_ms']:>11.1f}{r['p90_ms']:>9.1f}")
    print(f"({args.samples} samples, {args.decided} decided, {args.n} decisions each way)")
    print(f"RESULT per decision at {args.samples} samples: old {old['median_ms']:.1f} ms, "
          f"new {new['median_ms']:.1f} ms (median), old/new = "
          f"{res['ratio_old_over_new_median']:.1f}x; target < 30 ms")


if __name__ == "__main__":
    main()
