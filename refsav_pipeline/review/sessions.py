"""Login sessions in the decisions database, so they survive a restart of the app.

Gradio keeps its login tokens in a dict (``app.tokens``: token -> user name) under a cookie
named with a random per-start id; both are lost on restart, logging everyone out and making
their next key fail. ``SessionTable`` is that dict backed by SQLite (only a SHA-256 of each
token is stored), and ``cookie_id`` is kept in the same file. Logging out revokes the user's
sessions (Gradio logs out every session of the user); a session also ends ``MAX_AGE_S`` after
login.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator, MutableMapping
from pathlib import Path

MAX_AGE_S = 7 * 86_400.0
HASHED = "sha256:"  # keys() yields hashed tokens; they are accepted back as keys

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    token_hash TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    created_ts REAL NOT NULL,
    revoked_ts REAL
);
CREATE TABLE IF NOT EXISTS session_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def _hash(token: str) -> str:
    if token.startswith(HASHED):
        return token[len(HASHED):]
    return hashlib.sha256(token.encode()).hexdigest()


class SessionTable(MutableMapping[str, str]):
    """token -> user, persisted; what Gradio's login, page and logout routes read and write."""

    def __init__(self, path: str | Path, max_age: float = MAX_AGE_S) -> None:
        self.path, self.max_age = Path(path), max_age
        self._local = threading.local()
        with self._conn() as conn:
            conn.executescript(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
        return conn

    def cookie_id(self) -> str:
        """The id in the session cookie's name, the same across restarts."""
        conn = self._conn()
        conn.execute("INSERT OR IGNORE INTO session_meta VALUES ('cookie_id', ?)",
                     (secrets.token_urlsafe(32),))
        return str(conn.execute(
            "SELECT value FROM session_meta WHERE key = 'cookie_id'").fetchone()[0])

    def __getitem__(self, token: str) -> str:
        row = self._conn().execute(
            "SELECT user FROM sessions WHERE token_hash = ? AND revoked_ts IS NULL "
            "AND created_ts > ?", (_hash(str(token)), time.time() - self.max_age)).fetchone()
        if row is None:
            raise KeyError(token)
        return str(row[0])

    def __setitem__(self, token: str, user: str) -> None:
        self._conn().execute("INSERT OR REPLACE INTO sessions VALUES (?, ?, ?, NULL)",
                             (_hash(token), user, time.time()))

    def __delitem__(self, token: str) -> None:
        cur = self._conn().execute(
            "UPDATE sessions SET revoked_ts = ? WHERE token_hash = ? AND revoked_ts IS NULL",
            (time.time(), _hash(str(token))))
        if cur.rowcount == 0:
            raise KeyError(token)

    def __iter__(self) -> Iterator[str]:
        rows = self._conn().execute(
            "SELECT token_hash FROM sessions WHERE revoked_ts IS NULL AND created_ts > ?",
            (time.time() - self.max_age,)).fetchall()
        return iter([HASHED + r[0] for r in rows])

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __contains__(self, token: object) -> bool:
        try:
            self[str(token)]
        except KeyError:
            return False
        return True

    def revoke_user(self, user: str) -> int:
        """End every session of ``user``; returns how many."""
        return self._conn().execute(
            "UPDATE sessions SET revoked_ts = ? WHERE user = ? AND revoked_ts IS NULL",
            (time.time(), user)).rowcount
