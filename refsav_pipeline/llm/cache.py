"""Durable request cache: a finished model call is never paid twice, across resumes and workers.

SQLite in WAL mode with a busy timeout, one short autocommit statement per operation, and
``INSERT OR IGNORE``: several processes (Ray workers) can share one file; if two race on the
same key the first answer wins and both callers still get a valid answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

CACHE_SCHEMA = 1


def cache_key(parts: dict[str, Any]) -> str:
    """sha256 over canonical JSON of everything that determines an answer."""
    blob = json.dumps({"schema": CACHE_SCHEMA, **parts}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


class RequestCache:
    """Key → JSON record. Thread-safe; blocking calls have ``a…`` twins run off the event loop."""

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 60.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.misses = 0
        self.writes = 0
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, timeout=busy_timeout_s, isolation_level=None,
                                     check_same_thread=False)
        self._init(busy_timeout_s)

    def _init(self, busy_timeout_s: float) -> None:
        # Switching to WAL needs a moment of exclusive access; another process creating the
        # file at the same instant can make it fail once even with a busy timeout.
        deadline = time.monotonic() + busy_timeout_s
        while True:
            try:
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=NORMAL")
                self._conn.execute(
                    "CREATE TABLE IF NOT EXISTS calls (key TEXT PRIMARY KEY, model TEXT, "
                    "prompt TEXT, record TEXT NOT NULL, created REAL NOT NULL)")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._conn.execute("SELECT record FROM calls WHERE key = ?", (key,)).fetchone()
            if row is None:
                self.misses += 1
                return None
            self.hits += 1
        return json.loads(row[0])

    def put(self, key: str, record: dict[str, Any], *, model: str = "", prompt: str = "") -> None:
        blob = json.dumps(record, sort_keys=True, ensure_ascii=False)
        with self._lock:
            self._conn.execute(
                "INSERT OR IGNORE INTO calls (key, model, prompt, record, created) "
                "VALUES (?, ?, ?, ?, ?)", (key, model, prompt, blob, time.time()))
            self.writes += 1

    async def aget(self, key: str) -> dict[str, Any] | None:
        return await asyncio.to_thread(self.get, key)

    async def aput(self, key: str, record: dict[str, Any], *, model: str = "",
                   prompt: str = "") -> None:
        await asyncio.to_thread(self.put, key, record, model=model, prompt=prompt)

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0])

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "writes": self.writes}

    def close(self) -> None:
        with self._lock:
            self._conn.close()
