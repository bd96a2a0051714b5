"""The decision store: durable, append-only, concurrent, conflicts flagged; stats and export."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path

import pytest
from factories import write_fake_run
from typer.testing import CliRunner

from refsav_pipeline.cli import app
from refsav_pipeline.review.export import export_validated, load_validated
from refsav_pipeline.review.select import BenchmarkSample, load_benchmark, select_and_write
from refsav_pipeline.review.stats import agreement, cohen_kappa, throughput
from refsav_pipeline.review.store import DecisionStore, NewDecision
from refsav_pipeline.review.users import add_user, make_auth, read_users

PER_WRITER = 120


def decision(s: BenchmarkSample, reviewer: str, action: str, **kw) -> NewDecision:
    return NewDecision(video_id=s.video_id, masklet_type=s.masklet_type,
                       masklet_id=s.masklet_id, sample_version=s.sample_version,
                       reviewer=reviewer, action=action, **kw)


@pytest.fixture()
def run(synth_root: Path, tmp_path: Path) -> tuple[Path, list[BenchmarkSample]]:
    out = tmp_path / "run"
    write_fake_run(synth_root, out)
    samples = select_and_write(out, count=50, seed=0, double_review=0.0)
    assert len(samples) >= 6
    return out, samples


def _writer(db: str, samples: list[dict], reviewer: str) -> None:
    store = DecisionStore(db)
    for i in range(PER_WRITER):
        s = samples[i % len(samples)]
        store.record(NewDecision(**s, reviewer=reviewer, action="accept",
                                 short_expression=f"{reviewer} {i}"))


def test_two_processes_lose_nothing(tmp_path: Path) -> None:
    db = tmp_path / "review" / "decisions.sqlite"
    DecisionStore(db)
    samples = [dict(video_id=f"v{i}", masklet_type="manual", masklet_id=i, sample_version="x")
               for i in range(7)]
    # spawn, not fork: this process holds an open connection, and SQLite's per-file lock and
    # shared-memory state must never be inherited by a child that opens the file again
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(db), samples, name))
             for name in ("alice", "bob")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(600)  # 240 fsynced commits: slow on a busy shared disk, never stuck
        assert p.exitcode == 0, f"writer exit code {p.exitcode} (None: still running)"
    log = DecisionStore(db).decisions()
    assert len(log) == 2 * PER_WRITER
    for name in ("alice", "bob"):
        assert sorted(int(d.short_expression.split()[1]) for d in log
                      if d.reviewer == name) == list(range(PER_WRITER))
    assert [d.seq for d in log] == sorted({d.seq for d in log})


def test_log_is_append_only_and_durable(run) -> None:
    out, samples = run
    store = DecisionStore.for_run(out)
    store.record(decision(samples[0], "alice", "accept"))
    conn = sqlite3.connect(store.path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("UPDATE decisions SET action = 'reject'")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("DELETE FROM decisions")
    finally:
        conn.close()
    with store._connect() as c:
        assert c.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert c.execute("PRAGMA busy_timeout").fetchone()[0] >= 10_000
    assert [d.action for d in store.decisions()] == ["accept"]


def test_outdated_view_is_stored_and_flagged(run) -> None:
    out, samples = run
    store = DecisionStore.for_run(out)
    s = samples[0]
    base = store.latest_seq(s.key)  # alice and bob open the sample at the same time
    a = store.record(decision(s, "alice", "accept", base_seq=base))
    b = store.record(decision(s, "bob", "reject", reason="wrong motion", base_seq=base))
    assert not a.conflict
    assert b.conflict and b.conflicts_with == a.seq
    c = store.record(decision(s, "carol", "accept", base_seq=store.latest_seq(s.key)))
    assert not c.conflict
    assert [d.reviewer for d in store.decisions(s.key)] == ["alice", "bob", "carol"]
    state = store.state(s.key)
    assert state.status == "accepted" and state.conflict and state.reviewers == [
        "alice", "bob", "carol"]
    stale = store.record(decision(samples[1], "alice", "accept").model_copy(
        update={"sample_version": "old-captions"}))
    assert stale.conflict and stale.conflicts_with is None
    assert store.state(samples[1].key).status == "pending"  # stale decisions do not count


def test_queue_leases_and_double_review(run) -> None:
    out, samples = run
    store = DecisionStore.for_run(out)
    store.sync_samples([samples[0].model_copy(update={"double_review": True}), *samples[1:]])
    t = 1000.0
    a0 = store.claim_next("alice", ttl=60, now=t)
    assert a0 == samples[0].key
    assert store.claim_next("alice", ttl=60, now=t + 1) == a0  # a reload resumes it
    b0 = store.claim_next("bob", ttl=60, now=t + 1)
    assert b0 == samples[1].key  # alice holds the first
    assert store.claim_next("carol", ttl=60, now=t + 100) == a0  # leases expire
    store.record(decision(samples[0], "alice", "accept"), now=t + 101)
    # double review: wanted by one more person, never by alice again
    assert store.claim_next("alice", ttl=60, now=t + 102) != a0
    assert store.claim_next("bob", ttl=60, now=t + 300) == a0
    store.record(decision(samples[0], "bob", "accept"), now=t + 301)
    assert store.claim_next("dave", ttl=60, now=t + 400) != a0
    p = store.progress("alice")
    assert (p.total, p.done, p.mine, p.reviews_done) == (len(samples), 1, 1, 2)


def test_kappa_hand_computed(tmp_path: Path) -> None:
    # 10 pairs: both accept 4, both reject 3, alice accept/bob reject 2, the reverse 1.
    # p_o = 0.7; p_e = 0.6*0.5 + 0.4*0.5 = 0.5; kappa = (0.7 - 0.5) / 0.5 = 0.4
    pairs = [("a", "a")] * 4 + [("r", "r")] * 3 + [("a", "r")] * 2 + [("r", "a")]
    assert cohen_kappa(pairs) == pytest.approx(0.4)
    assert cohen_kappa([("a", "a")] * 3) is None
    store = DecisionStore(tmp_path / "d.sqlite")
    labels = {"a": "accept", "r": "reject"}
    current = {}
    for i, (x, y) in enumerate(pairs):
        current[(f"v{i}", "manual", 0)] = "v1"
        for who, lab in (("alice", x), ("bob", y)):  # alice is always the first rater
            store.record(NewDecision(video_id=f"v{i}", masklet_type="manual", masklet_id=0,
                                     sample_version="v1", reviewer=who, action=labels[lab]))
    # noise that must not count: a skip, a stale version, a single-reviewer sample
    store.record(NewDecision(video_id="v0", masklet_type="manual", masklet_id=0,
                             sample_version="v1", reviewer="carol", action="skip"))
    store.record(NewDecision(video_id="v1", masklet_type="manual", masklet_id=0,
                             sample_version="old", reviewer="carol", action="reject"))
    current[("v99", "manual", 0)] = "v1"
    store.record(NewDecision(video_id="v99", masklet_type="manual", masklet_id=0,
                             sample_version="v1", reviewer="alice", action="accept"))
    result = agreement(store.decisions(), current, double=set(current))
    assert result.doubly_reviewed == 10 and result.agreements == 7
    assert result.kappa == pytest.approx(0.4)


def test_throughput_over_active_time(run) -> None:
    """Gaps over the idle threshold count nothing; a burst of keys is not a rate."""
    out, samples = run
    store = DecisionStore.for_run(out)
    for s, t in zip(samples, (0.0, 60.0, 120.0, 2000.0, 2000.5, 2001.0), strict=False):
        store.record(decision(s, "alice", "accept"), now=t)
    (alice,) = throughput(store.decisions())
    # gaps 60, 60, (1880: a break, and the decision after it starts anew), 0.5, 0.5 = 121 s
    assert alice.decisions == 6 and alice.active_hours == pytest.approx(121 / 3600, abs=1e-4)
    assert alice.per_hour is None  # 121 s of work is under the 10 min a rate needs
    # 15 more minutes at one decision a minute: now a rate, over active time only
    for i, s in enumerate(samples[6:] * 3):
        store.record(decision(s, "alice", "skip"), now=2001.0 + 60 * (i + 1))
    n = len(samples[6:] * 3)
    (alice,) = throughput(store.decisions())
    active = 121 + 60 * n
    assert alice.active_hours == pytest.approx(active / 3600, abs=1e-4)
    assert alice.per_hour == pytest.approx((4 + n) / (active / 3600), abs=0.01)
    assert alice.per_hour < 70  # not thousands per hour for a burst of keys


def test_export_validated_and_stats_cli(run) -> None:
    out, samples = run
    store = DecisionStore.for_run(out)
    s0, s1, s2, s3 = samples[:4]
    store.record(decision(s0, "alice", "edit_accept", edited_video_caption="Fixed text.",
                          short_expression="the cyan box"))
    store.record(decision(s0, "bob", "accept", base_seq=store.latest_seq(s0.key)))
    store.record(decision(s1, "alice", "reject", reason="other",
                          short_expression="the small red ellipse"))
    store.record(decision(s2, "alice", "reject", reason="other"))
    store.record(decision(s3, "alice", "skip"))
    runner = CliRunner()
    result = runner.invoke(app, ["review", "export", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = {(r.video_id, r.masklet_type, r.masklet_id): r for r in load_validated(out)}
    assert set(rows) == {s0.key, s1.key}
    r0, r1 = rows[s0.key], rows[s1.key]
    assert r0.long_accepted and r0.edited and r0.video_caption == "Fixed text."
    assert r0.object_caption == s0.object_caption and r0.reviewers == ["alice", "bob"]
    assert r0.short_expressions == ["the cyan box"]
    assert not r1.long_accepted and r1.short_expressions == ["the small red ellipse"]
    assert r1.video_caption is None and r1.object_caption is None and not r1.edited
    assert export_validated(out)[1] == load_validated(out)
    stats = runner.invoke(app, ["review", "stats", "--out", str(out), "--json"])
    assert stats.exit_code == 0, stats.output
    assert '"doubly_reviewed": 0' in stats.output and '"reviewer": "alice"' in stats.output
    text = runner.invoke(app, ["review", "stats", "--out", str(out)])
    assert "kappa n/a on 0 of 0 double-review samples" in text.output
    assert load_benchmark(out)[0].key == s0.key


def test_users_file_and_add_user_cli(tmp_path: Path) -> None:
    users = tmp_path / "users.txt"
    assert add_user(users, "alice", "s3cret", iterations=1000) is False
    runner = CliRunner()
    result = runner.invoke(app, ["review", "add-user", "--users", str(users), "bob",
                                 "--password-stdin"], input="hunter2\n")
    assert result.exit_code == 0, result.output
    stored = read_users(users)
    assert set(stored) == {"alice", "bob"} and "hunter2" not in users.read_text()
    assert users.stat().st_mode & 0o077 == 0
    check = make_auth(users)
    assert check("alice", "s3cret") and check("bob", "hunter2")
    assert not check("alice", "hunter2") and not check("mallory", "s3cret")
    bad = runner.invoke(app, ["review", "add-user", "--users", str(users), "bad:name",
                              "--password-stdin"], input="x\n")
    assert bad.exit_code == 2
