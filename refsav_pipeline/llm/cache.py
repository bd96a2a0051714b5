"""Durable request cache: a finished model call is never paid twice, across resumes and workers.

A folder of append-only shard files, one per writing process (each caption actor writes its
own; nobody ever locks or rewrites a shared file). Opening the cache lists the folder once and
loads every shard into an in-memory index, so a lookup is a dict access and a write is one
``write(2)`` of one line on the caller's thread: no thread hop and no database per request.

Durability: an answer is in the kernel when ``put`` returns, so kill -9 of the process (or of
its Ray actor) loses nothing it has put. Shards are fsynced in the background at most
``sync_interval_s`` apart, so a machine crash or power loss can lose the last interval's
answers; those calls are made again on resume (the rows stay the same). A torn last line is
skipped on load.

A legacy ``cache.sqlite`` next to the folder (runs made before shards) is read once, read-only.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import threading
import uuid
from pathlib import Path
from typing import Any

CACHE_SCHEMA = 1
SHARD_SUFFIX = ".jsonl"
LEGACY_SQLITE = "cache.sqlite"


def cache_key(parts: dict[str, Any]) -> str:
    """sha256 over canonical JSON of everything that determines an answer."""
    blob = json.dumps({"schema": CACHE_SCHEMA, **parts}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def _read_shard(path: Path, into: dict[str, str]) -> int:
    """Add ``key -> record JSON`` lines of one shard (first answer wins); returns torn lines."""
    torn = 0
    with open(path, "rb") as fh:
        for raw in fh:
            key, sep, rec = raw.decode("utf-8", errors="replace").partition("\t")
            if not sep or not rec.endswith("\n"):
                torn += 1
                continue
            into.setdefault(key, rec)
    return torn


def _read_sqlite(path: Path, into: dict[str, str]) -> None:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        for key, rec in conn.execute("SELECT key, record FROM calls"):
            into.setdefault(key, rec)
    finally:
        conn.close()


class RequestCache:
    """Key -> JSON record. ``get`` and ``put`` are cheap enough to call on an event loop."""

    def __init__(self, path: str | Path, *, sync_interval_s: float = 1.0) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.misses = 0
        self.writes = 0
        self.torn_lines = 0
        self._index: dict[str, str] = {}
        legacy = self.path.parent / LEGACY_SQLITE
        if legacy.is_file():
            _read_sqlite(legacy, self._index)
        with os.scandir(self.path) as entries:  # the folder is listed once
            shards = sorted(e.path for e in entries if e.name.endswith(SHARD_SUFFIX))
        for shard in shards:
            self.torn_lines += _read_shard(Path(shard), self._index)
        self.shards_loaded = len(shards)
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._shard: Path | None = None
        self._dirty = threading.Event()
        self._closed = threading.Event()
        self._sync_interval_s = sync_interval_s
        self._syncer: threading.Thread | None = None

    @property
    def shard(self) -> Path | None:
        """This writer's own shard file (made on the first ``put``)."""
        return self._shard

    def get(self, key: str) -> dict[str, Any] | None:
        rec = self._index.get(key)
        if rec is None:
            self.misses += 1
            return None
        self.hits += 1
        return json.loads(rec)

    def put(self, key: str, record: dict[str, Any]) -> None:
        """Record an answer (one line, one ``write(2)``); the first answer for a key wins."""
        if key in self._index:
            return
        rec = json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n"
        line = f"{key}\t{rec}".encode()
        with self._lock:
            if self._closed.is_set():
                raise RuntimeError(f"request cache {self.path} is closed")
            if self._fd is None:
                self._open_shard()
            os.write(self._fd, line)  # type: ignore[arg-type]
            self._index[key] = rec
            self.writes += 1
        self._dirty.set()

    def _open_shard(self) -> None:
        host = socket.gethostname().split(".")[0] or "host"
        self._shard = self.path / f"{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}{SHARD_SUFFIX}"
        self._fd = os.open(self._shard, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._syncer = threading.Thread(target=self._sync_loop, name="cache-fsync", daemon=True)
        self._syncer.start()

    def _sync_loop(self) -> None:
        while not self._closed.wait(self._sync_interval_s):
            if self._dirty.is_set():
                self.sync()

    def sync(self) -> None:
        """fsync this writer's shard (outside the lock: ``put`` never waits for the disk)."""
        self._dirty.clear()
        fd = self._fd
        if fd is not None:
            os.fsync(fd)

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "writes": self.writes}

    def close(self) -> None:
        """fsync and close this writer's shard; the index stays readable."""
        with self._lock:
            if self._closed.is_set():
                return
            self._closed.set()
        if self._syncer is not None:
            self._syncer.join()  # it may be in an fsync of the fd closed below
        with self._lock:
            if self._fd is not None:
                os.fsync(self._fd)
                os.close(self._fd)
                self._fd = None
