"""Durable request cache, partitioned by work: a finished model call is never paid twice, and a
process holds only the answers of the work it is doing.

A masklet's calls are only ever reused by the same masklet, so answers are kept in
*partitions*, one per video (any name works; keys are content hashes, so a partition only
decides what is loaded together, never what a key means). On shared storage::

    <cache>/parts/<partition>/<writer>.jsonl    one append-only file per writer and opening
    <cache>/*.jsonl, <out>/cache.sqlite         the flat layout of older runs (read-only)

A caption actor ``acquire``s the videos of the masklets it receives (reading their few files)
and ``release``s them when those masklets are done, which drops their answers from memory. So
an actor's memory and start-up follow the work in flight, not the size of the cache. Inside a
partition a lookup is a dict access and a write is one ``write(2)`` of one line on the
caller's thread: no thread hop and no database per request. Which partition a call uses is a
context variable (``working_on``); without one, calls use the ``DEFAULT_PART`` partition, held
until ``close`` (single calls, tests).

Node-local staging: the shared folder is on NFS/Lustre on a cluster, where one small
synchronous write per answer is slow and fsync slower. So a writer appends to its file in a
node-local folder (``local_dir/<namespace>/parts/<partition>/``, namespace = a hash of the
shared folder's resolved path, so two runs on one node never mix) and *promotes* it: a
background thread copies the file's not-yet-promoted whole lines to the shared file of the same
name, one append and one fsync per file every ``promote_interval_s``, and as soon as a released
partition's file is complete (then deletes the local copy). ``put`` never touches the shared
filesystem.

A live writer holds an exclusive ``flock`` on each of its local files. A file whose lock can be
taken belongs to a dead writer (kill -9 of an actor or of the whole run): ``promote_orphans``
promotes and deletes it. It runs when a cache opens (an actor restarted on the same node) and,
at the start of every run and resume, once on every node of the cluster
(``refsav_pipeline.pipeline.cache_staging``), before the actors start. Loading a partition
also reads this node's local files of it, so answers not promoted yet are found too.

Durability: an answer is in the kernel when ``put`` returns, so kill -9 of the process (or of
its Ray actor, or of the driver) loses nothing it has put: its node promotes it on resume.
Local files are fsynced in the background at most ``sync_interval_s`` apart. A node that is
lost (machine crash, power loss, a pod whose emptyDir goes with it) takes its unpromoted
answers with it, at most ``promote_interval_s`` of them per writer: those calls are made again
on resume and the rows stay the same.

The local root is ``ClientConfig.cache_local_dir``: by default ``<temp dir>/refsav-cache`` of
each node ($TMPDIR if set); on Slurm or Kubernetes point it at node-local scratch (a local
disk, an emptyDir). With ``""`` a writer appends straight to its shared files (single
machine, tests). A promotion that fails (shared storage away) is retried at the next interval;
the answers stay on local disk meanwhile.

A torn last line and a line with a NUL byte (a hole left by a crash on NFS) are skipped on
load, so a reader never takes part of a line for an answer.

Caches of older runs (flat files in ``<cache>/``, a ``cache.sqlite`` next to it) hold no video
ids, so they cannot be partitioned: they are read whole, once per process, as before (they come
from runs of at most a few hundred videos). New answers always go to partitions.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import socket
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel

log = logging.getLogger(__name__)

CACHE_SCHEMA = 1
PARTS_DIR = "parts"
DEFAULT_PART = "_"  # the partition of calls made outside any ``working_on``
SHARD_SUFFIX = ".jsonl"
NEW_SUFFIX = ".new"  # a local file before its writer holds the lock (never promoted)
MARK_SUFFIX = ".promoted"  # next to a local file: how much of it the shared file holds
LEGACY_SQLITE = "cache.sqlite"
DEFAULT_LOCAL_DIR = "refsav-cache"  # under tempfile.gettempdir() of each node
COPY_CHUNK = 8 << 20
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")

_current_part: ContextVar[str] = ContextVar("refsav_cache_part", default=DEFAULT_PART)


_KEY_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
"""One encoder for every key (``json.dumps`` with options builds a new one per call). The
stdlib's, not orjson: orjson writes some floats differently (``1e-05`` vs ``0.00001``), and
the key bytes must stay those of every cache written so far."""


def cache_key(parts: dict[str, Any]) -> str:
    """sha256 over canonical JSON of everything that determines an answer."""
    blob = _KEY_JSON.encode({"schema": CACHE_SCHEMA, **parts})
    return hashlib.sha256(blob.encode()).hexdigest()


def part_dir(part: str) -> str:
    """The folder name of a partition: the name itself when it is a plain file name (SA-V's
    video ids are), else a hash of it."""
    if _SAFE_NAME.fullmatch(part):
        return part
    return "h-" + hashlib.sha256(part.encode()).hexdigest()[:32]


@contextlib.contextmanager
def working_on(part: str) -> Iterator[None]:
    """Calls made inside (in this thread, or this asyncio task and the tasks it starts) use
    partition ``part`` of every ``RequestCache``."""
    token = _current_part.set(part)
    try:
        yield
    finally:
        _current_part.reset(token)


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
    """Add ``key -> record JSON`` lines of one file (first answer wins); returns torn lines."""
    torn = 0
    with open(path, "rb") as fh:
        for raw in fh:
            key, sep, rec = raw.decode("utf-8", errors="replace").partition("\t")
            if not sep or not rec.endswith("\n") or b"\0" in raw:  # \0: a hole after a crash
                torn += 1
                continue
            into.setdefault(key, rec)
    return torn


def _read_folder(folder: Path, into: dict[str, str]) -> tuple[int, int]:
    """Read every file of one folder (none if it does not exist); returns (files, torn)."""
    try:
        with os.scandir(folder) as entries:
            names = sorted(e.name for e in entries if e.name.endswith(SHARD_SUFFIX))
    except FileNotFoundError:
        return 0, 0
    torn = 0
    for name in names:
        try:
            torn += _read_shard(folder / name, into)
        except FileNotFoundError:  # a local file its writer closed meanwhile: promoted
            continue
    return len(names), torn


def _read_sqlite(path: Path, into: dict[str, str]) -> None:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        for key, rec in conn.execute("SELECT key, record FROM calls"):
            into.setdefault(key, rec)
    finally:
        conn.close()


def _read_legacy(shared: Path, into: dict[str, str]) -> tuple[int, int]:
    """The flat layout of older runs: ``<cache>/*.jsonl`` and ``<out>/cache.sqlite``."""
    legacy = shared.parent / LEGACY_SQLITE
    if legacy.is_file():
        _read_sqlite(legacy, into)
    return _read_folder(shared, into)


@dataclass
class CacheScan:
    """Every answer of a cache folder (for tests, benchmarks and inspection; never a run)."""

    answers: dict[str, str]
    files: int
    torn_lines: int

    def __contains__(self, key: str) -> bool:
        return key in self.answers

    def __len__(self) -> int:
        return len(self.answers)

    def get(self, key: str) -> dict[str, Any] | None:
        rec = self.answers.get(key)
        return None if rec is None else json.loads(rec)


def scan_cache(shared: str | Path) -> CacheScan:
    """Read all of a shared cache folder, both layouts (memory grows with it: not for runs)."""
    shared = Path(shared)
    answers: dict[str, str] = {}
    files, torn = _read_legacy(shared, answers)
    try:
        with os.scandir(shared / PARTS_DIR) as entries:
            parts = sorted(e.name for e in entries if e.is_dir())
    except FileNotFoundError:
        parts = []
    for name in parts:
        f, t = _read_folder(shared / PARTS_DIR / name, answers)
        files, torn = files + f, torn + t
    return CacheScan(answers, files, torn)


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
    """Copy the whole lines of a local file that its shared counterpart lacks; returns bytes.

    The caller owns the local file (holds its flock), hence the shared file of the same name
    and the mark file: nobody else writes them. The mark (a small local file next to the
    local one) holds the offset up to which the shared file is known durable: it is written
    only after the shared file's fsync. A promotion writes at explicit offsets from the mark,
    so one killed at any point (a torn last line, or on NFS unflushed pages of the shared
    file) is simply redone over the same bytes by the next one; at worst bytes are written
    again. The offset is not derived from the shared file's size because after a crash that
    size can cover a hole of zeros. The mark itself needs no fsync: an older mark only means
    rewriting.
    """
    local_end = _line_end_before(local_fd, os.fstat(local_fd).st_size)  # whole lines only
    done = _read_mark(mark_fd)
    if local_end <= done:
        return 0
    shared.parent.mkdir(parents=True, exist_ok=True)
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
    """Delete a local file, then its mark (a mark left alone is deleted by a promoter)."""
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
    busy: int = 0  # files of live writers, left alone


def _promote_orphans_in(folder: Path, shared: Path, report: OrphanReport) -> None:
    """``promote_orphans`` for one local folder, whose files belong in ``shared``."""
    with os.scandir(folder) as entries:
        names = sorted(e.name for e in entries if e.is_file())
    for name in names:
        path = folder / name
        if name.endswith(MARK_SUFFIX):  # promoted with its file; alone, it is left over
            if not (folder / name.removesuffix(MARK_SUFFIX)).exists():
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
            _unlink_staged(path)  # while locked: a writer never reopens a file by name
        finally:
            os.close(fd)


def promote_orphans(shared: str | Path, local_dir: str | None) -> OrphanReport:
    """Promote, then delete, every local file of ``shared``'s namespace on this node whose
    writer is dead (its flock can be taken). Live writers' files are left alone. The cost
    follows this node's local files (work in flight and left by crashes), not the cache."""
    report = OrphanReport(node=socket.gethostname())
    ns = local_namespace(shared, local_dir)
    if ns is None or not ns.is_dir():
        return report
    shared = Path(shared)
    shared.mkdir(parents=True, exist_ok=True)
    for folder, _dirs, _files in os.walk(ns, topdown=False):  # children before parents
        here = Path(folder)
        with contextlib.suppress(FileNotFoundError):  # a writer removed it meanwhile
            _promote_orphans_in(here, shared / here.relative_to(ns), report)
        _remove_if_empty(here)
    return report


def _create_locked(folder: Path, name: str) -> int:
    """A new local file ``folder/name``, flocked before it gets the name a promoter looks at,
    so a live writer's file is never taken for a dead one's."""
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


def _remove_if_empty(folder: Path, up_to: Path | None = None) -> None:
    """Remove ``folder`` if empty, then its empty parents up to and including ``up_to``."""
    while True:
        try:
            folder.rmdir()
        except OSError:  # not empty: another writer of this run is here (or it is gone)
            return
        if up_to is None or folder == up_to:
            return
        folder = folder.parent


# -- the cache -------------------------------------------------------------------------------


@dataclass(eq=False)
class _Part:
    """One partition as this process holds it: its answers, and this writer's file of it."""

    name: str
    index: dict[str, str]
    holders: int = 0
    pinned: bool = False  # used without ``acquire``: held until close
    fd: int | None = None
    shard: Path | None = None  # this writer's shared file of the partition
    local: Path | None = None  # and its node-local copy (with staging)
    mark: int | None = None
    dirty: bool = False
    retired: bool = False  # released: promote, close, forget
    files_read: int = 0


class RequestCache:
    """Key -> JSON record, by partition. ``get`` and ``put`` are cheap enough to call on an
    event loop; ``acquire`` reads files (call it off the loop, e.g. ``asyncio.to_thread``).

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
        self.files_read = 0
        self.parts_loaded = 0
        self._writer = f"{socket.gethostname().split('.')[0] or 'host'}-{os.getpid()}-" \
                       f"{uuid.uuid4().hex[:8]}"
        self._seq = 0
        if self.local is not None:  # e.g. this actor's previous life on this node
            promote_orphans(self.path, local_dir)
        self._legacy: dict[str, str] = {}
        files, self.torn_lines = _read_legacy(self.path, self._legacy)
        self.files_read += files
        self._parts: dict[str, _Part] = {}
        self._retiring: list[_Part] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()  # a partition was released: finish it soon
        self._dirty = threading.Event()
        self._closed = threading.Event()
        self._sync_interval_s = sync_interval_s
        self._promote_interval_s = promote_interval_s
        self._background: threading.Thread | None = None

    # -- partitions ---------------------------------------------------------------------

    def _load(self, name: str) -> _Part:
        """Read a partition: its shared files, and this node's local files of it."""
        index: dict[str, str] = {}
        d = part_dir(name)
        files, torn = _read_folder(self.path / PARTS_DIR / d, index)
        if self.local is not None:
            f, t = _read_folder(self.local / PARTS_DIR / d, index)
            files, torn = files + f, torn + t
        self.files_read += files
        self.torn_lines += torn
        self.parts_loaded += 1
        return _Part(name, index, files_read=files)

    def acquire(self, *parts: str) -> None:
        """Hold these partitions (loading those not held yet) until ``release``."""
        for name in parts:
            with self._lock:
                p = self._parts.get(name)
                if p is not None:
                    p.holders += 1
                    continue
            fresh = self._load(name)  # outside the lock: ``put`` never waits for a read
            with self._lock:
                p = self._parts.get(name)
                if p is None:
                    fresh.holders = 1
                    self._parts[name] = fresh
                else:  # loaded meanwhile by another caller
                    p.holders += 1
                    for k, v in fresh.index.items():
                        p.index.setdefault(k, v)

    def release(self, *parts: str) -> None:
        """Stop holding these partitions; one nobody holds is dropped from memory, and this
        writer's file of it is finished (promoted, closed) by the background thread."""
        with self._lock:
            for name in parts:
                p = self._parts.get(name)
                if p is None or p.pinned:
                    continue
                p.holders -= 1
                if p.holders > 0:
                    continue
                del self._parts[name]
                if p.fd is not None:
                    p.retired = True
                    self._retiring.append(p)
                    self._wake.set()

    @property
    def held(self) -> list[str]:
        """The partitions in memory now."""
        with self._lock:
            return list(self._parts)

    def _part(self) -> _Part:
        """The calling context's partition (see ``working_on``), loaded if nobody holds it."""
        name = _current_part.get()
        p = self._parts.get(name)
        if p is None:
            fresh = self._load(name)
            fresh.pinned = True
            with self._lock:
                p = self._parts.setdefault(name, fresh)
        return p

    # -- answers ------------------------------------------------------------------------

    def get(self, key: str) -> dict[str, Any] | None:
        rec = self._part().index.get(key)
        if rec is None and self._legacy:
            rec = self._legacy.get(key)
        if rec is None:
            self.misses += 1
            return None
        self.hits += 1
        return orjson.loads(rec)

    def put(self, key: str, record: dict[str, Any]) -> None:
        """Record an answer (one line, one ``write(2)``); the first answer for a key wins."""
        p = self._part()
        if key in p.index or key in self._legacy:
            return
        rec = orjson.dumps(record, option=orjson.OPT_SORT_KEYS).decode() + "\n"
        line = f"{key}\t{rec}".encode()
        with self._lock:
            if self._closed.is_set():
                raise RuntimeError(f"request cache {self.path} is closed")
            if p.retired:  # released by another thread meanwhile: its file is being finished
                p = self._parts.get(p.name) or \
                    self._parts.setdefault(p.name, _Part(p.name, {}, pinned=True))
            if p.fd is None:
                self._open_file(p)
            os.write(p.fd, line)  # type: ignore[arg-type]
            p.index[key] = rec
            p.dirty = True
            self.writes += 1
        self._dirty.set()

    def _open_file(self, p: _Part) -> None:
        """This writer's file of ``p`` (a new name at each opening: a file once promoted
        and deleted locally is never written again)."""
        self._seq += 1
        name = f"{self._writer}-{self._seq}{SHARD_SUFFIX}"
        d = part_dir(p.name)
        p.shard = self.path / PARTS_DIR / d / name
        if self.local is None:
            p.shard.parent.mkdir(parents=True, exist_ok=True)
            p.fd = os.open(p.shard, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        else:
            p.local = self.local / PARTS_DIR / d / name
            p.fd = _create_locked(p.local.parent, name)
        if self._background is None:
            self._background = threading.Thread(target=self._background_loop,
                                                name="cache-sync", daemon=True)
            self._background.start()

    # -- background: fsync, promotion, finishing released partitions ---------------------

    def _open_parts(self) -> list[_Part]:
        with self._lock:
            return [p for p in (*self._parts.values(), *self._retiring) if p.fd is not None]

    def _background_loop(self) -> None:
        next_promotion = time.monotonic() + self._promote_interval_s
        while not self._closed.is_set():
            self._wake.wait(min(self._sync_interval_s, self._promote_interval_s))
            self._wake.clear()
            if self._closed.is_set():
                return
            if self._dirty.is_set():
                self.sync()
            if self.local is not None and time.monotonic() >= next_promotion:
                next_promotion = time.monotonic() + self._promote_interval_s
                try:
                    self.promote()
                except OSError as e:  # shared storage hiccup: the next interval tries again
                    log.warning("promoting request-cache answers of %s failed (%s); will try "
                                "again", self.path, e)
            self._finish_retired()

    def _finish_retired(self) -> None:
        with self._lock:
            done, self._retiring = self._retiring, []
        for p in done:
            try:
                self._finish(p)
            except OSError as e:
                log.warning("promoting %s failed (%s); will try again", p.shard, e)
                with self._lock:
                    self._retiring.append(p)

    def _finish(self, p: _Part) -> None:
        """fsync and close this writer's file of ``p`` (with staging: promote it, then delete
        the local copy). Raises OSError, leaving it open, if the promotion fails."""
        fd = p.fd
        if fd is None:
            return
        os.fsync(fd)
        if p.local is not None:
            self._promote(p)
            _unlink_staged(p.local)
        if p.mark is not None:
            os.close(p.mark)
            p.mark = None
        os.close(fd)
        p.fd = None
        if p.local is not None and self.local is not None:
            _remove_if_empty(p.local.parent, up_to=self.local)

    def sync(self) -> None:
        """fsync this writer's files (outside the lock: ``put`` never waits for the disk)."""
        self._dirty.clear()
        for p in self._open_parts():
            if p.dirty:
                p.dirty = False
                with contextlib.suppress(OSError):  # closed meanwhile by a finish
                    os.fsync(p.fd)  # type: ignore[arg-type]

    def _promote(self, p: _Part) -> int:
        if p.fd is None or p.shard is None or p.local is None:
            return 0
        if p.mark is None:
            p.mark = _open_mark(p.local)
        return promote(p.fd, p.shard, p.mark)

    def promote(self) -> int:
        """Copy this writer's unpromoted answers to its shared files now; returns bytes.
        Called by the background thread and ``close`` (and tests), never concurrently."""
        return sum(self._promote(p) for p in self._open_parts())

    # -- the calling context's partition, for tests and messages -------------------------

    @property
    def shard(self) -> Path | None:
        """This writer's shared file of the calling context's partition (made on its first
        ``put``; with staging, it fills at each promotion)."""
        p = self._parts.get(_current_part.get())
        return None if p is None else p.shard

    @property
    def local_shard(self) -> Path | None:
        """This writer's node-local file of the calling context's partition (with staging,
        from its first ``put`` until the partition is finished)."""
        p = self._parts.get(_current_part.get())
        return None if p is None else p.local

    @property
    def writes_to(self) -> Path:
        """The folder ``put`` writes in (for error messages: a full local disk says so)."""
        return self.local or self.path

    def __bool__(self) -> bool:  # a cache is a cache, however few answers it holds now
        return True

    def __len__(self) -> int:
        """Answers this cache has for the calling context's partition (and older runs')."""
        index = self._part().index
        return len(index) + sum(1 for k in self._legacy if k not in index)

    def __contains__(self, key: str) -> bool:
        return key in self._part().index or key in self._legacy

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "writes": self.writes}

    def close(self) -> None:
        """Finish every file of this writer (fsync; with staging, promote and delete the local
        copy); held answers stay readable. A file whose promotion fails stays on local disk
        for the next run's promoter."""
        with self._lock:
            if self._closed.is_set():
                return
            self._closed.set()
        self._wake.set()
        if self._background is not None:
            self._background.join()  # it may be in an fsync of a file closed below
        for p in self._open_parts():
            try:
                self._finish(p)
            except OSError as e:
                log.warning("promoting %s failed (%s); the next run promotes %s",
                            p.shard, e, p.local)
        with self._lock:
            self._retiring = []
