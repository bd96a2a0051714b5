"""The review decisions: an append-only SQLite log, current state derived from it.

Why this shape: people's work must survive crashes, two reviewers on one sample, and pipeline
re-runs. So the log is never rewritten (triggers refuse UPDATE/DELETE), every write is a
``BEGIN IMMEDIATE`` transaction in WAL mode with ``synchronous=FULL``, a decision made on an
outdated view is stored anyway and flagged as a conflict, and decisions carry the sample
version (a hash of the captions they judged) so a re-run with new captions makes them stale
instead of silently applying them to different text. ``samples`` and ``leases`` are the only
mutable tables: a mirror of ``benchmark.parquet`` for SQL, and the soft locks of the queue.
An adjudicator's decision (``adjudicates``) settles a double-review sample whose two reviewers
disagreed; what counts as settled is derived in ``consensus``, never stored. Once a version is
adjudicated, only adjudicators may decide it again: a reviewer's decision is refused
(``Settled``) inside the same transaction, so it can never be stored and then ignored.
Gold checks: an adjudicator marks a sample gold from their own decision (``gold_marks``,
append-only too: an unmark is a new entry); a reviewer's decision on a gold sample served as a
check is stored with ``gold_check`` set and never counts for the sample (state, queue,
consensus, export), only for that reviewer's accuracy.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from refsav_pipeline.records import SampleKey
from refsav_pipeline.review.limits import MAX_CHARS
from refsav_pipeline.review.paths import decisions_path
from refsav_pipeline.review.select import BenchmarkSample, load_benchmark

Action = Literal["accept", "reject", "edit_accept", "skip"]
ACTIONS: tuple[str, ...] = ("accept", "reject", "edit_accept", "skip")
ACCEPTING = ("accept", "edit_accept")
Status = Literal["pending", "accepted", "rejected"]
LEASE_SECONDS = 600.0
SCHEMA_VERSION = "1"

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS decisions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    video_id TEXT NOT NULL,
    masklet_type TEXT NOT NULL,
    masklet_id INTEGER NOT NULL,
    sample_version TEXT NOT NULL,
    reviewer TEXT NOT NULL,
    decided_at TEXT NOT NULL,
    decided_ts REAL NOT NULL,
    action TEXT NOT NULL CHECK (action IN ({", ".join(repr(a) for a in ACTIONS)})),
    reason TEXT,
    edited_object_caption TEXT,
    edited_scene_caption TEXT,
    edited_video_caption TEXT,
    short_expression TEXT,
    base_seq INTEGER,
    conflict INTEGER NOT NULL DEFAULT 0,
    conflicts_with INTEGER,
    note TEXT,
    adjudicates INTEGER NOT NULL DEFAULT 0,
    gold_check INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS decisions_by_sample
    ON decisions (video_id, masklet_type, masklet_id, sample_version, seq);
CREATE TRIGGER IF NOT EXISTS decisions_no_update BEFORE UPDATE ON decisions
BEGIN SELECT RAISE(ABORT, 'decisions are append-only: UPDATE refused'); END;
CREATE TRIGGER IF NOT EXISTS decisions_no_delete BEFORE DELETE ON decisions
BEGIN SELECT RAISE(ABORT, 'decisions are append-only: DELETE refused'); END;
CREATE TABLE IF NOT EXISTS samples (
    video_id TEXT NOT NULL,
    masklet_type TEXT NOT NULL,
    masklet_id INTEGER NOT NULL,
    sample_version TEXT NOT NULL,
    position INTEGER NOT NULL,
    needs INTEGER NOT NULL,
    PRIMARY KEY (video_id, masklet_type, masklet_id)
);
CREATE TABLE IF NOT EXISTS leases (
    video_id TEXT NOT NULL,
    masklet_type TEXT NOT NULL,
    masklet_id INTEGER NOT NULL,
    reviewer TEXT NOT NULL,
    expires_ts REAL NOT NULL,
    PRIMARY KEY (video_id, masklet_type, masklet_id)
);
CREATE TABLE IF NOT EXISTS gold_marks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    video_id TEXT NOT NULL,
    masklet_type TEXT NOT NULL,
    masklet_id INTEGER NOT NULL,
    sample_version TEXT NOT NULL,
    decision_seq INTEGER,
    marked_by TEXT NOT NULL,
    marked_at TEXT NOT NULL,
    active INTEGER NOT NULL
);
CREATE TRIGGER IF NOT EXISTS gold_no_update BEFORE UPDATE ON gold_marks
BEGIN SELECT RAISE(ABORT, 'gold marks are append-only: UPDATE refused'); END;
CREATE TRIGGER IF NOT EXISTS gold_no_delete BEFORE DELETE ON gold_marks
BEGIN SELECT RAISE(ABORT, 'gold marks are append-only: DELETE refused'); END;
CREATE VIEW IF NOT EXISTS gold_current AS
    SELECT g.* FROM gold_marks g JOIN samples s USING (video_id, masklet_type, masklet_id)
    WHERE g.active = 1 AND g.sample_version = s.sample_version
    AND g.seq = (SELECT MAX(h.seq) FROM gold_marks h WHERE h.video_id = g.video_id
                 AND h.masklet_type = g.masklet_type AND h.masklet_id = g.masklet_id);
"""

_KEY_MATCH = ("d.video_id = s.video_id AND d.masklet_type = s.masklet_type "
              "AND d.masklet_id = s.masklet_id AND d.sample_version = s.sample_version "
              "AND d.action != 'skip' AND d.gold_check = 0")

# every sample with its real decisions on the current version, in order: one pass, one query
_STATE_SQL = f"""
SELECT s.video_id, s.masklet_type, s.masklet_id, s.sample_version, s.position, s.needs,
       d.action, d.seq, d.reviewer, d.conflict, d.adjudicates
FROM samples s LEFT JOIN decisions d ON {_KEY_MATCH}
"""

# columns added after the first release: (name, definition) for ALTER TABLE on old files
_ADDED_COLUMNS = (("note", "TEXT"), ("adjudicates", "INTEGER NOT NULL DEFAULT 0"),
                  ("gold_check", "INTEGER NOT NULL DEFAULT 0"))


class Settled(Exception):
    """A reviewer's decision on a version an adjudicator has settled: not recorded."""

    def __init__(self, adjudication: Decision) -> None:
        super().__init__(f"{adjudication.reviewer} adjudicated this sample "
                         f"(#{adjudication.seq})")
        self.adjudication = adjudication


class NotGold(ValueError):
    """A gold mark that cannot be made (no own decision to take the answer from)."""


class NewDecision(BaseModel):
    """What the app submits: the view it was made on (version, latest seq seen) plus the verdict.

    ``edited_*`` is ``None`` where the reviewer left the pipeline's text as it was.
    """

    model_config = ConfigDict(extra="forbid")

    video_id: str
    masklet_type: str
    masklet_id: int
    sample_version: str
    reviewer: str = Field(pattern=r"^[^,\s][^,\n]{0,63}$")  # no commas: listed comma-joined
    action: Action
    reason: str | None = Field(None, max_length=MAX_CHARS["reason"])
    edited_object_caption: str | None = Field(None, max_length=MAX_CHARS["object_caption"])
    edited_scene_caption: str | None = Field(None, max_length=MAX_CHARS["scene_caption"])
    edited_video_caption: str | None = Field(None, max_length=MAX_CHARS["video_caption"])
    short_expression: str | None = Field(None, max_length=MAX_CHARS["short_expression"])
    base_seq: int | None = None
    note: str | None = Field(None, max_length=MAX_CHARS["note"])
    adjudicates: bool = False  # an adjudicator settling a disagreement
    gold_check: bool = False  # a reviewer answering a gold sample: counts for accuracy only

    @property
    def key(self) -> SampleKey:
        return (self.video_id, self.masklet_type, self.masklet_id)


class Decision(NewDecision):
    seq: int
    decided_at: str
    decided_ts: float
    conflict: bool
    conflicts_with: int | None = None


class GoldMark(BaseModel):
    """A current gold sample: its known answer is the marker's decision ``answer``."""

    video_id: str
    masklet_type: str
    masklet_id: int
    sample_version: str
    marked_by: str
    marked_at: str
    answer: Decision

    @property
    def key(self) -> SampleKey:
        return (self.video_id, self.masklet_type, self.masklet_id)


@dataclass(slots=True)
class SampleState:
    """A sample's state derived from the log (skips do not count as reviews). A plain
    dataclass: every action derives all of them from our own table, so no validation."""

    video_id: str
    masklet_type: str
    masklet_id: int
    sample_version: str
    position: int
    needs: int  # reviewers wanted: 2 for double-review samples
    status: Status
    latest_seq: int | None
    reviewers: list[str]
    conflict: bool

    @property
    def key(self) -> SampleKey:
        return (self.video_id, self.masklet_type, self.masklet_id)

    @property
    def double_review(self) -> bool:
        return self.needs > 1


class Progress(BaseModel):
    total: int
    done: int  # samples with at least one accept/reject on the current version
    accepted: int  # as the export: disputed samples are neither accepted nor rejected
    rejected: int
    disputed: int = 0  # double-review samples waiting for an adjudicator
    mine: int  # samples this reviewer decided
    my_queue: int  # samples still waiting for this reviewer
    reviews_needed: int  # sum over samples of reviewers wanted
    reviews_done: int
    conflicts: int


_DECISION_COLS = ("seq", "video_id", "masklet_type", "masklet_id", "sample_version", "reviewer",
                  "decided_at", "decided_ts", "action", "reason", "edited_object_caption",
                  "edited_scene_caption", "edited_video_caption", "short_expression",
                  "base_seq", "conflict", "conflicts_with", "note", "adjudicates",
                  "gold_check")


class DecisionStore:
    """One SQLite file; one connection per thread and process, kept open (Gradio handlers
    run in threads). Closing the last connection checkpoints the WAL, so a connection per
    operation would pay a checkpoint on every read."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._connect() as conn:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise RuntimeError(f"{self.path}: cannot use WAL mode (got {mode}); "
                                   "put the review folder on a local disk")
            # executescript commits first, so the transaction is part of the script
            conn.executescript(f"BEGIN IMMEDIATE;\n{_SCHEMA}\nINSERT OR IGNORE INTO meta "
                               f"VALUES ('schema_version', '{SCHEMA_VERSION}');\nCOMMIT;")
            have = {r[1] for r in conn.execute("PRAGMA table_info(decisions)")}
            for name, definition in _ADDED_COLUMNS:
                if name not in have:  # a file from before the column existed stays readable
                    conn.execute(f"ALTER TABLE decisions ADD COLUMN {name} {definition}")

    @classmethod
    def for_run(cls, out_dir: str | Path) -> DecisionStore:
        """The run's store, its ``samples`` mirror synced to the current selection."""
        store = cls(decisions_path(out_dir))
        try:
            samples = load_benchmark(out_dir)
        except FileNotFoundError:
            return store
        store.sync_samples(samples)
        return store

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = getattr(self._local, "conn", None)
        if conn is None or self._local.pid != os.getpid():  # never share one across a fork
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn, self._local.pid = conn, os.getpid()
        yield conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction taking the lock up front, so read-then-write never deadlocks."""
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    # -- samples -------------------------------------------------------------------------

    def sync_samples(self, samples: Sequence[BenchmarkSample]) -> None:
        """Mirror the current selection (the decisions are untouched)."""
        with self._write() as conn:
            conn.execute("DELETE FROM samples")
            conn.executemany(
                "INSERT INTO samples VALUES (?, ?, ?, ?, ?, ?)",
                [(s.video_id, s.masklet_type, s.masklet_id, s.sample_version, s.position,
                  2 if s.double_review else 1) for s in samples])

    def states(self) -> list[SampleState]:
        """Every sample's state, in review order (one query: call it once per action)."""
        with self._connect() as conn:
            rows = conn.execute(_STATE_SQL + " ORDER BY s.position, d.seq").fetchall()
        return _states(rows)

    def state(self, key: SampleKey) -> SampleState | None:
        with self._connect() as conn:
            rows = conn.execute(
                _STATE_SQL + " WHERE s.video_id = ? AND s.masklet_type = ? AND s.masklet_id = ?"
                " ORDER BY d.seq", key).fetchall()
        states = _states(rows)
        return states[0] if states else None

    def changed_since(self, seq: int) -> tuple[list[SampleKey], int]:
        """Samples with decisions after log position ``seq``, and the latest position (writes
        are serialized, so positions become visible in order)."""
        with self._connect() as conn:
            latest = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM decisions").fetchone()[0]
            rows = conn.execute(
                "SELECT DISTINCT video_id, masklet_type, masklet_id FROM decisions "
                "WHERE seq > ? AND seq <= ?", (seq, latest)).fetchall()
        return [(str(r[0]), str(r[1]), int(r[2])) for r in rows], int(latest)

    # -- decisions -----------------------------------------------------------------------

    def record(self, new: NewDecision, now: float | None = None) -> Decision:
        """Append a decision. A view older than the latest decision, or than the sample's
        current version, is still recorded, with ``conflict`` set and the decision it missed.
        A reviewer's decision on an adjudicated version raises ``Settled`` (nothing stored)."""
        now = time.time() if now is None else now
        with self._write() as conn:
            return self._append(conn, new, now)

    def record_and_claim(self, new: NewDecision, *, after: int, ttl: float = LEASE_SECONDS,
                         now: float | None = None) -> tuple[Decision, SampleKey | None]:
        """``record`` then ``claim_next`` for the same reviewer in one transaction (one
        durable commit per click instead of two)."""
        now = time.time() if now is None else now
        with self._write() as conn:
            return (self._append(conn, new, now),
                    self._claim(conn, new.reviewer, after, ttl, now))

    @staticmethod
    def _append(conn: sqlite3.Connection, new: NewDecision, now: float) -> Decision:
        if new.action != "skip" and not new.adjudicates and not new.gold_check:
            row = conn.execute(
                f"SELECT {', '.join(_DECISION_COLS)} FROM decisions WHERE video_id = ? "
                "AND masklet_type = ? AND masklet_id = ? AND sample_version = ? "
                "AND adjudicates = 1 ORDER BY seq DESC LIMIT 1",
                (*new.key, new.sample_version)).fetchone()
            if row is not None:
                raise Settled(Decision.model_validate(dict(zip(_DECISION_COLS, row,
                                                               strict=True))))
        latest = conn.execute(
            "SELECT MAX(seq) FROM decisions WHERE video_id = ? AND masklet_type = ? "
            "AND masklet_id = ? AND action != 'skip' AND gold_check = 0", new.key).fetchone()[0]
        current = conn.execute(
            "SELECT sample_version FROM samples WHERE video_id = ? AND masklet_type = ? "
            "AND masklet_id = ?", new.key).fetchone()
        conflict = new.action != "skip" and not new.gold_check and (
            latest != new.base_seq
            or (current is not None and current[0] != new.sample_version))
        conflicts_with = latest if conflict and latest != new.base_seq else None
        decided_at = datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds")
        cur = conn.execute(
            "INSERT INTO decisions (video_id, masklet_type, masklet_id, sample_version, "
            "reviewer, decided_at, decided_ts, action, reason, edited_object_caption, "
            "edited_scene_caption, edited_video_caption, short_expression, base_seq, "
            "conflict, conflicts_with, note, adjudicates, gold_check) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (new.video_id, new.masklet_type, new.masklet_id, new.sample_version,
             new.reviewer, decided_at, now, new.action, new.reason,
             new.edited_object_caption, new.edited_scene_caption,
             new.edited_video_caption, new.short_expression, new.base_seq,
             int(conflict), conflicts_with, new.note, int(new.adjudicates),
             int(new.gold_check)))
        conn.execute("DELETE FROM leases WHERE video_id = ? AND masklet_type = ? "
                     "AND masklet_id = ? AND reviewer = ?", (*new.key, new.reviewer))
        seq = int(cur.lastrowid or 0)
        return Decision(**new.model_dump(), seq=seq, decided_at=decided_at, decided_ts=now,
                        conflict=conflict, conflicts_with=conflicts_with)

    def decisions(self, key: SampleKey | None = None, double_only: bool = False
                  ) -> list[Decision]:
        """The log in order (of one sample if ``key``; of double-review samples only if
        ``double_only``)."""
        sql = f"SELECT {', '.join(_DECISION_COLS)} FROM decisions"
        args: tuple = ()
        if key is not None:
            sql += " WHERE video_id = ? AND masklet_type = ? AND masklet_id = ?"
            args = key
        elif double_only:
            sql += (" WHERE (video_id, masklet_type, masklet_id) IN (SELECT video_id, "
                    "masklet_type, masklet_id FROM samples WHERE needs > 1)")
        with self._connect() as conn:
            rows = conn.execute(sql + " ORDER BY seq", args).fetchall()
        return [Decision.model_validate(dict(zip(_DECISION_COLS, r, strict=True)))
                for r in rows]

    def latest_seq(self, key: SampleKey) -> int | None:
        """The ``base_seq`` of a view opened now."""
        with self._connect() as conn:
            return conn.execute(
                "SELECT MAX(seq) FROM decisions WHERE video_id = ? AND masklet_type = ? "
                "AND masklet_id = ? AND action != 'skip' AND gold_check = 0",
                key).fetchone()[0]

    # -- queue ---------------------------------------------------------------------------

    def claim_next(self, reviewer: str, *, after: int = -1, ttl: float = LEASE_SECONDS,
                   now: float | None = None, leaving: SampleKey | None = None
                   ) -> SampleKey | None:
        """Lease the next sample that still needs a review, that this reviewer has not
        decided, and that nobody else holds; one already held by this reviewer comes first
        (a page reload resumes it). Positions after ``after`` come before the wrap to the
        start, and samples this reviewer skipped come back only when nothing else is left.
        ``leaving``: the sample the reviewer moves away from (Next): its lease is dropped
        and it is never the answer, so Next always moves on."""
        now = time.time() if now is None else now
        with self._write() as conn:
            if leaving is not None:
                conn.execute("DELETE FROM leases WHERE reviewer = ? AND video_id = ? AND "
                             "masklet_type = ? AND masklet_id = ?", (reviewer, *leaving))
            return self._claim(conn, reviewer, after, ttl, now, leaving or ("", "", -1))

    def lease(self, reviewer: str, key: SampleKey, *, ttl: float = LEASE_SECONDS,
              now: float | None = None) -> bool:
        """Hold ``key`` for ``reviewer`` (going back to it) unless someone else holds it;
        the reviewer's other leases are dropped: one sample on screen, one lease."""
        now = time.time() if now is None else now
        with self._write() as conn:
            held = conn.execute(
                "SELECT 1 FROM leases WHERE video_id = ? AND masklet_type = ? AND "
                "masklet_id = ? AND reviewer != ? AND expires_ts > ?",
                (*key, reviewer, now)).fetchone()
            if held:
                return False
            conn.execute("DELETE FROM leases WHERE reviewer = ?", (reviewer,))
            conn.execute("INSERT OR REPLACE INTO leases VALUES (?, ?, ?, ?, ?)",
                         (*key, reviewer, now + ttl))
            return True

    def peek_next(self, reviewer: str, current: SampleKey, *, after: int = -1,
                  now: float | None = None) -> SampleKey | None:
        """What ``claim_next`` would hand out once ``current`` is decided, without leasing
        anything (to preload its images)."""
        now = time.time() if now is None else now
        with self._connect() as conn:
            return self._pick(conn, reviewer, after, now, current)

    @classmethod
    def _claim(cls, conn: sqlite3.Connection, reviewer: str, after: int, ttl: float,
               now: float, skip: SampleKey = ("", "", -1)) -> SampleKey | None:
        key = cls._pick(conn, reviewer, after, now, skip)
        if key is not None:
            conn.execute("INSERT OR REPLACE INTO leases VALUES (?, ?, ?, ?, ?)",
                         (*key, reviewer, now + ttl))
        return key

    @staticmethod
    def _pick(conn: sqlite3.Connection, reviewer: str, after: int, now: float,
              skip: SampleKey = ("", "", -1)) -> SampleKey | None:
        """The sample ``_claim`` leases (never ``skip``)."""
        not_skip = ("NOT (s.video_id = ? AND s.masklet_type = ? AND s.masklet_id = ?)")
        mine = conn.execute(
            "SELECT l.video_id, l.masklet_type, l.masklet_id FROM leases l JOIN samples s "
            f"USING (video_id, masklet_type, masklet_id) WHERE l.reviewer = ? AND {not_skip} "
            "AND l.expires_ts > ? ORDER BY s.position <= ?, s.position LIMIT 1",
            (reviewer, *skip, now, after)).fetchone()
        key = tuple(mine) if mine else None
        if key is None:
            row = conn.execute(
                f"""SELECT s.video_id, s.masklet_type, s.masklet_id FROM samples s
                WHERE (SELECT COUNT(DISTINCT d.reviewer) FROM decisions d
                       WHERE {_KEY_MATCH}) < s.needs
                AND NOT EXISTS (SELECT 1 FROM decisions d WHERE {_KEY_MATCH}
                    AND d.reviewer = ?)
                AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.video_id = s.video_id
                    AND l.masklet_type = s.masklet_type AND l.masklet_id = s.masklet_id
                    AND l.reviewer != ? AND l.expires_ts > ?)
                AND {not_skip}
                ORDER BY EXISTS (SELECT 1 FROM decisions d WHERE d.video_id = s.video_id
                    AND d.masklet_type = s.masklet_type AND d.masklet_id = s.masklet_id
                    AND d.sample_version = s.sample_version AND d.reviewer = ?),
                  s.position <= ?, s.position LIMIT 1""",
                (reviewer, reviewer, now, *skip, reviewer, after)).fetchone()
            key = tuple(row) if row else None
        return None if key is None else (str(key[0]), str(key[1]), int(key[2]))

    def lease_holder(self, key: SampleKey, now: float | None = None) -> str | None:
        now = time.time() if now is None else now
        with self._connect() as conn:
            row = conn.execute(
                "SELECT reviewer FROM leases WHERE video_id = ? AND masklet_type = ? "
                "AND masklet_id = ? AND expires_ts > ?", (*key, now)).fetchone()
        return row[0] if row else None

    def release(self, reviewer: str) -> None:
        """Drop this reviewer's leases (on leaving the queue for a filtered view)."""
        with self._write() as conn:
            conn.execute("DELETE FROM leases WHERE reviewer = ?", (reviewer,))

    # -- gold checks ---------------------------------------------------------------------

    def mark_gold(self, key: SampleKey, version: str, by: str, active: bool = True,
                  now: float | None = None) -> GoldMark | None:
        """Mark ``key`` gold with ``by``'s latest own decision on ``version`` as the answer
        (``NotGold`` if they have none), or unmark it (``active`` false). Append-only."""
        now = time.time() if now is None else now
        at = datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds")
        with self._write() as conn:
            answer = conn.execute(
                "SELECT MAX(seq) FROM decisions WHERE video_id = ? AND masklet_type = ? AND "
                "masklet_id = ? AND sample_version = ? AND reviewer = ? AND action != 'skip' "
                "AND gold_check = 0", (*key, version, by)).fetchone()[0]
            if active and answer is None:
                raise NotGold(f"{by} has not decided {key[0]} {key[1]} {key[2]}: the gold "
                              "answer is the marker's own accept or reject")
            conn.execute("INSERT INTO gold_marks (video_id, masklet_type, masklet_id, "
                         "sample_version, decision_seq, marked_by, marked_at, active) "
                         "VALUES (?,?,?,?,?,?,?,?)",
                         (*key, version, answer if active else None, by, at, int(active)))
        return self.gold().get(key)

    def gold(self) -> dict[SampleKey, GoldMark]:
        """The current gold samples (latest mark active, on the current version)."""
        cols = ", ".join(f"d.{c}" for c in _DECISION_COLS)
        with self._connect() as conn:
            rows = conn.execute(
                f"SELECT g.marked_by, g.marked_at, {cols} FROM gold_current g "
                "JOIN decisions d ON d.seq = g.decision_seq").fetchall()
        out = {}
        for r in rows:
            answer = Decision.model_validate(dict(zip(_DECISION_COLS, r[2:], strict=True)))
            out[answer.key] = GoldMark(
                video_id=answer.video_id, masklet_type=answer.masklet_type,
                masklet_id=answer.masklet_id, sample_version=answer.sample_version,
                marked_by=r[0], marked_at=r[1], answer=answer)
        return out

    def pick_gold(self, reviewer: str) -> SampleKey | None:
        """A random current gold sample ``reviewer`` has never decided (as a check or not)
        and did not mark, to mix into their queue."""
        with self._connect() as conn:
            row = conn.execute(
                "SELECT g.video_id, g.masklet_type, g.masklet_id FROM gold_current g "
                "WHERE g.marked_by != ? AND NOT EXISTS (SELECT 1 FROM decisions d WHERE "
                "d.video_id = g.video_id AND d.masklet_type = g.masklet_type AND "
                "d.masklet_id = g.masklet_id AND d.sample_version = g.sample_version AND "
                "d.reviewer = ? AND d.action != 'skip') ORDER BY RANDOM() LIMIT 1",
                (reviewer, reviewer)).fetchone()
        return None if row is None else (str(row[0]), str(row[1]), int(row[2]))

    def progress(self, reviewer: str, states: list[SampleState] | None = None,
                 disputed: Collection[SampleKey] = ()) -> Progress:
        """Counts over ``states`` (read now if not given: pass the action's own snapshot).
        ``disputed``: the samples ``consensus`` finds disputed (the store's fold does not
        compare texts); they count as disputed, not as their latest accept or reject, as in
        the export. Samples this reviewer skipped are still in their queue: they come back
        last."""
        states = self.states() if states is None else states
        c = dict.fromkeys(("done", "accepted", "rejected", "disputed", "mine", "my_queue",
                           "needed", "reviews", "conflicts"), 0)
        for s in states:  # one pass: this runs on every click
            n = len(s.reviewers)
            mine = reviewer in s.reviewers
            open_ = s.key in disputed
            c["done"] += s.status != "pending"
            c["disputed"] += open_
            c["accepted"] += s.status == "accepted" and not open_
            c["rejected"] += s.status == "rejected" and not open_
            c["mine"] += mine
            c["my_queue"] += n < s.needs and not mine
            c["needed"] += s.needs
            c["reviews"] += min(n, s.needs)
            c["conflicts"] += s.conflict
        return Progress(total=len(states), done=c["done"], accepted=c["accepted"],
                        rejected=c["rejected"], disputed=c["disputed"], mine=c["mine"],
                        my_queue=c["my_queue"],
                        reviews_needed=c["needed"], reviews_done=c["reviews"],
                        conflicts=c["conflicts"])


def _states(rows: list[tuple]) -> list[SampleState]:
    """Fold the joined rows (a sample repeated once per decision, in seq order) into states."""
    out: list[SampleState] = []
    last: tuple | None = None
    action = seq = None
    names: set[str] = set()
    conflict = settled = False

    def flush() -> None:
        if last is None:
            return
        status: Status = ("pending" if action is None
                          else "accepted" if action in ACCEPTING else "rejected")
        out.append(SampleState(
            video_id=last[0], masklet_type=last[1], masklet_id=last[2],
            sample_version=last[3], position=last[4], needs=last[5], status=status,
            latest_seq=seq, reviewers=sorted(names), conflict=conflict))

    for r in rows:
        if last is None or r[:3] != last[:3]:
            flush()
            last, action, seq, names, conflict, settled = r, None, None, set(), False, False
        if r[7] is not None:
            if r[10] or not settled:  # after an adjudication only adjudications count
                action, seq = r[6], r[7]
                settled = settled or bool(r[10])
            names.add(r[8])
            conflict = conflict or bool(r[9])
    flush()
    return out


def count_decisions(out_dir: str | Path) -> int:
    """Decisions logged for a run (0 if the database does not exist); opens read-only."""
    path = decisions_path(out_dir)
    if not path.is_file():
        return 0
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM decisions").fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()
