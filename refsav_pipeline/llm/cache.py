"""Durable request cache: a finished model call is never paid twice, across resumes and workers.

A folder of append-only shard files, one per writing process (each caption actor writes its
own; nobody ever rewrites another writer's file). Opening the cache lists the folder once and
loads every shard into an in-memory index, so a lookup is a dict access and a write is one
``write(2)`` of one line on the caller's thread: no thread hop and no database per request.

Node-local staging: the folder (``<out>/cache/``) is on shared storage (NFS, Lustre) on a
cluster, where one small synchronous write per answer is slow and fsync slower. So a writer
appends to its shard in a node-local folder (``local_dir/<namespace>/``, namespace = a hash of
the shared folder's resolved path, so two runs on one node never mix) and *promotes* it: a
background thread copies the shard's not-yet-promoted whole lines to the shared shard of the
same name, one large append and one fsync every ``promote_interval_s``, and ``close`` does a
last promotion and deletes the local shard. ``put`` never touches the shared filesystem.

A live writer holds an exclusive ``flock`` on its local shard. A shard whose lock can be taken
belongs to a dead writer (kill -9 of an actor or of the whole run): ``promote_orphans``
promotes and deletes it. It runs when a cache opens (an actor restarted on the same node) and,
at the start of every run and resume, once on every node of the cluster
(``refsav_pipeline.pipeline.cache_staging``), before the actors load the shared folder.

Durability: an answer is in the kernel when ``put`` returns, so kill -9 of the process (or of
its Ray actor, or of the driver) loses nothing it has put: its node promotes it on resume.
Local shards are fsynced in the background at most ``sync_interval_s`` apart. A node that is
lost (machine crash, power loss, a pod whose emptyDir goes with it) takes its unpromoted
answers with it, at most ``promote_interval_s`` of them per writer: those calls are made again
on resume and the rows stay the same.

The local root is ``ClientConfig.cache_local_dir``: by default ``<temp dir>/refsav-cache`` of
each node ($TMPDIR if set); on Slurm or Kubernetes point it at node-local scratch (a local
disk, an emptyDir). With ``""`` a writer appends straight to its shared shard, as before
staging (single machine, tests). A promotion that fails (shared storage away) is retried at the
next interval; the answers stay on local disk meanwhile.

A torn last line and a line with a NUL byte (a hole left by a crash on NFS) are skipped on
load, so a reader never takes part of a line for an answer.

A legacy ``cache.sqlite`` next to the folder (runs made before shards) is read once, read-only.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import socket
import sqlite3
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from pydantic import BaseModel

log = logging.getLogger(__name__)

CACHE_SCHEMA = 1
SHARD_SUFFIX = ".jsonl"
NEW_SUFFIX = ".new"  # a local shard before its writer holds the lock (never promoted)
MARK_SUFFIX = ".promoted"  # next to a local shard: how much of it the shared shard holds
LEGACY_SQLITE = "cache.sqlite"
DEFAULT_LOCAL_DIR = "refsav-cache"  # under tempfile.gettempdir() of each node
COPY_CHUNK = 8 << 20


def cache_key(parts: dict[str, Any]) -> str:
    """sha256 over canonical JSON of everything that determines an answer."""
    blob = json.dumps({"schema": CACHE_SCHEMA, **parts}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def local_namespace(shared: str | Path, local_dir: str | None) -> Path | None:
    """This node's staging folder for the shared cache folder ``shared``, or None (no staging).

    ``local_dir``: None is ``<tempfile.gettempdir()>/refsav-cache`` *of this node* ($TMPDIR
    counts); "" is no staging; otherwise a path, ``$VAR`` and ``~`` expanded on this node.
    """
    if local_dir == "":
        return None
    base = Path(tempfile.gettempdir()) / DEFAULT_LOCAL_DIR if local_dir is None else \
        Path(os.path.expanduser(os.path.expandvars(local_dir)))
    digest = hashlib.sha256(str(Path(shared).resolve()).encode()).hexdigest()[:16]
    return base / digest


def _read_shard(path: Path, into: dict[str, str]) -> int:
    """Add ``key -> record JSON`` lines of one shard (first answer wins); returns torn lines."""
    torn = 0
    with open(path, "rb") as fh:
        for raw in fh:
            key, sep, rec = raw.decode("utf-8", errors="replace").partition("\t")
            if not sep or not rec.endswith("\n") or b"\0" in raw:  # \0: a hole after a crash
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


# -- promotion -------------------------------------------------------------------------------


def _line_end_before(fd: int, pos: int) -> int:
    """The offset just after the last newline in ``fd``'s first ``pos`` bytes (0 if none)."""
    while pos > 0:
        start = max(0, pos - 65536)
        cut = os.pread(fd, pos - start, start).rfind(b"\n")
        if cut >= 0:
            return start + cut + 1
        pos = start
    return 0


def _read_mark(fd: int) -> int:
    text = os.pread(fd, 32, 0).strip()
    return int(text) if text.isdigit() else 0


def promote(local_fd: int, shared: Path, mark_fd: int) -> int:
    """Copy the whole lines of a local shard that its shared counterpart lacks; returns bytes.

    The caller owns the local shard (holds its flock), hence the shared shard of the same name
    and the mark file: nobody else writes them. The mark (a small local file next to the
    shard) holds the offset up to which the shared shard is known durable: it is written only
    after the shared shard's fsync. A promotion writes at explicit offsets from the mark, so
    one killed at any point (a torn last line, or on NFS unflushed pages of the shared file)
    is simply redone over the same bytes by the next one; at worst bytes are written again.
    The offset is not derived from the shared file's size because after a crash that size can
    cover a hole of zeros. The mark itself needs no fsync: an older mark only means rewriting.
    """
    local_end = _line_end_before(local_fd, os.fstat(local_fd).st_size)  # whole lines only
    done = _read_mark(mark_fd)
    if local_end <= done:
        return 0
    fd = os.open(shared, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        if os.fstat(fd).st_size < done:  # not what the mark says (deleted, restored): redo all
            done = 0
        pos = done
        while pos < local_end:
            chunk = os.pread(local_fd, min(COPY_CHUNK, local_end - pos), pos)
            view = memoryview(chunk)
            while view:
                n = os.pwrite(fd, view, pos)
                view, pos = view[n:], pos + n
        os.fsync(fd)
    finally:
        os.close(fd)
    os.pwrite(mark_fd, f"{local_end:020d}\n".encode(), 0)
    return local_end - done


def _open_mark(shard: Path) -> int:
    return os.open(shard.with_name(shard.name + MARK_SUFFIX), os.O_RDWR | os.O_CREAT, 0o644)


def _unlink_staged(shard: Path) -> None:
    """Delete a local shard, then its mark (a mark left alone is deleted by a promoter)."""
    for path in (shard, shard.with_name(shard.name + MARK_SUFFIX)):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


class OrphanReport(BaseModel):
    """What ``promote_orphans`` did on one node."""

    node: str
    shards: int = 0
    bytes: int = 0
    busy: int = 0  # shards of live writers, left alone


def promote_orphans(shared: str | Path, local_dir: str | None) -> OrphanReport:
    """Promote, then delete, every local shard of ``shared``'s namespace on this node whose
    writer is dead (its flock can be taken). Live writers' shards are left alone."""
    report = OrphanReport(node=socket.gethostname())
    ns = local_namespace(shared, local_dir)
    if ns is None or not ns.is_dir():
        return report
    shared = Path(shared)
    shared.mkdir(parents=True, exist_ok=True)
    with os.scandir(ns) as entries:
        names = sorted(e.name for e in entries if e.is_file())
    for name in names:
        path = ns / name
        if name.endswith(MARK_SUFFIX):  # promoted with its shard; alone, it is left over
            if not (ns / name.removesuffix(MARK_SUFFIX)).exists():
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            continue
        if not name.endswith((SHARD_SUFFIX, NEW_SUFFIX)):
            continue  # not ours
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:  # its writer closed it meanwhile
            continue
        try:
            if not _try_lock(fd):
                report.busy += 1
                continue
            if os.fstat(fd).st_nlink == 0:  # deleted by its writer's close before we locked
                continue
            if name.endswith(SHARD_SUFFIX):
                mark = _open_mark(path)
                try:
                    report.bytes += promote(fd, shared / name, mark)
                finally:
                    os.close(mark)
                report.shards += 1
            _unlink_staged(path)  # while locked: a writer never reopens a shard by name
        finally:
            os.close(fd)
    _remove_if_empty(ns)
    return report


def _create_locked(folder: Path, name: str) -> int:
    """A new local shard ``folder/name``, flocked before it gets the name a promoter looks at,
    so a live writer's shard is never taken for a dead one's."""
    fresh = folder / (name + NEW_SUFFIX)
    while True:  # FileNotFoundError: the folder or file went in an instant we held no lock
        folder.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(fresh, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o644)
        except FileNotFoundError:  # another writer's close removed the empty folder
            continue
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            os.rename(fresh, folder / name)
            return fd
        except FileNotFoundError:  # a promoter took it for a dead writer's and deleted it
            os.close(fd)


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not empty: another writer of this run is here
        folder.rmdir()


# -- the cache -------------------------------------------------------------------------------


class RequestCache:
    """Key -> JSON record. ``get`` and ``put`` are cheap enough to call on an event loop.

    ``path`` is the shared folder; ``local_dir`` the node-local staging root as in
    ``ClientConfig.cache_local_dir`` (None: under the temp dir; "": no staging).
    """

    def __init__(self, path: str | Path, *, local_dir: str | None = None,
                 sync_interval_s: float = 1.0, promote_interval_s: float = 30.0) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.local = local_namespace(self.path, local_dir)
        self.hits = 0
        self.misses = 0
        self.writes = 0
        self.torn_lines = 0
        self._index: dict[str, str] = {}
        if self.local is not None:  # e.g. this actor's previous life on this node
            promote_orphans(self.path, local_dir)
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
        self._mark: int | None = None  # with staging: the mark file of this writer's shard
        self._shard: Path | None = None
        self._dirty = threading.Event()
        self._closed = threading.Event()
        self._sync_interval_s = sync_interval_s
        self._promote_interval_s = promote_interval_s
        self._background: threading.Thread | None = None

    @property
    def shard(self) -> Path | None:
        """This writer's own shard in the shared folder (made on the first ``put``; with
        staging, it fills at each promotion)."""
        return self._shard

    @property
    def writes_to(self) -> Path:
        """The folder ``put`` writes in (for error messages: a full local disk says so)."""
        return self.local or self.path

    @property
    def local_shard(self) -> Path | None:
        """This writer's node-local shard (with staging, from the first ``put`` to ``close``)."""
        if self._shard is None or self.local is None:
            return None
        return self.local / self._shard.name

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
        name = f"{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}{SHARD_SUFFIX}"
        self._shard = self.path / name
        if self.local is None:
            self._fd = os.open(self._shard, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        else:
            self._fd = _create_locked(self.local, name)
        self._background = threading.Thread(target=self._background_loop, name="cache-sync",
                                            daemon=True)
        self._background.start()

    def _background_loop(self) -> None:
        next_promotion = time.monotonic() + self._promote_interval_s
        while not self._closed.wait(min(self._sync_interval_s, self._promote_interval_s)):
            if self._dirty.is_set():
                self.sync()
            if self.local is not None and time.monotonic() >= next_promotion:
                next_promotion = time.monotonic() + self._promote_interval_s
                try:
                    self.promote()
                except OSError as e:  # shared storage hiccup: the next interval tries again
                    log.warning("promoting %s failed (%s); will try again", self._shard, e)

    def sync(self) -> None:
        """fsync this writer's shard (outside the lock: ``put`` never waits for the disk)."""
        self._dirty.clear()
        fd = self._fd
        if fd is not None:
            os.fsync(fd)

    def promote(self) -> int:
        """Copy this writer's unpromoted answers to its shared shard now; returns bytes.
        Called by the background thread and ``close`` (and tests), never concurrently."""
        fd, shard, local = self._fd, self._shard, self.local_shard
        if fd is None or shard is None or local is None:
            return 0
        if self._mark is None:
            self._mark = _open_mark(local)
        return promote(fd, shard, self._mark)

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "writes": self.writes}

    def close(self) -> None:
        """fsync and close this writer's shard (with staging: promote it, then delete the
        local copy); the index stays readable. If the promotion fails, the local shard stays
        for the next run's promoter."""
        with self._lock:
            if self._closed.is_set():
                return
            self._closed.set()
        if self._background is not None:
            self._background.join()  # it may be in an fsync of the fd closed below
        with self._lock:
            if self._fd is None:
                return
            os.fsync(self._fd)
            if self.local is not None:
                try:
                    self.promote()
                except OSError as e:
                    log.warning("promoting %s failed (%s); the next run promotes %s",
                                self._shard, e, self.local_shard)
                else:
                    _unlink_staged(self.local_shard)  # type: ignore[arg-type]
            if self._mark is not None:
                os.close(self._mark)
                self._mark = None
            os.close(self._fd)
            self._fd = None
            if self.local is not None:
                _remove_if_empty(self.local)
